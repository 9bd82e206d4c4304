"""The knowledge-graph model every stage reads.

A :class:`KnowledgeGraph` holds one graph's entities (global ids, as the
EVA/MCLEA layout numbers both graphs in one id space, plus a local view
``0..N-1``), its relation triples, optional attribute names, and per-modality
feature tables with a presence mask. A :class:`KGPair` holds two graphs and
the optional gold links. Derived structures (local triples, neighbour lists,
degrees, the union adjacency) are computed once, on demand.

>>> import torch
>>> from psqe.data import KnowledgeGraph, KGPair
>>> kg1 = KnowledgeGraph(ids=torch.tensor([0, 1, 2]), names=["a", "b", "c"],
...                      triples=torch.tensor([[0, 0, 1], [1, 0, 2]]))
>>> kg2 = KnowledgeGraph(ids=torch.tensor([3, 4]), names=["x", "y"],
...                      triples=torch.tensor([[3, 0, 4]]))
>>> pair = KGPair(kg1, kg2, links=torch.tensor([[0, 3], [1, 4]]))
>>> kg1.degrees().tolist(), kg1.to_local(torch.tensor([2, 0])).tolist()
([1, 2, 1], [2, 0])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch


@dataclass(eq=False)
class KnowledgeGraph:
    """One knowledge graph.

    Attributes:
        ids: int64 ``[N]`` global entity ids, unique; local index ``i`` is ``ids[i]``.
        names: ``N`` entity names or URIs (local order).
        triples: int64 ``[T, 3]`` ``(head, relation, tail)``; heads and tails are
            global entity ids, relations are the file's relation ids.
        relation_names: relation id -> name or URI (may be empty).
        attributes: per entity (local order) the list of its attribute names, or None.
        features: modality name -> float ``[N, d]`` table (rows of missing entities
            hold whatever the encoder's missing-value rule put there).
        present: modality name -> bool ``[N]``: which rows are real observations.
    """

    ids: torch.Tensor
    names: list[str]
    triples: torch.Tensor
    relation_names: dict[int, str] = field(default_factory=dict)
    attributes: list[list[str]] | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = torch.as_tensor(self.ids, dtype=torch.long)
        self.triples = torch.as_tensor(self.triples, dtype=torch.long).reshape(-1, 3)
        if self.ids.dim() != 1:
            raise ValueError(f"KnowledgeGraph: ids must be 1-D, got shape {tuple(self.ids.shape)}")
        if len(self.names) != self.ids.numel():
            raise ValueError(f"KnowledgeGraph: {len(self.names)} names for {self.ids.numel()} entities")
        if self.ids.unique().numel() != self.ids.numel():
            raise ValueError("KnowledgeGraph: entity ids must be unique")
        if self.attributes is not None and len(self.attributes) != self.num_entities:
            raise ValueError(f"KnowledgeGraph: {len(self.attributes)} attribute lists for {self.num_entities} entities")
        for name, table in self.features.items():
            self.set_feature(name, table, self.present.get(name))

    def reordered(self, order: torch.Tensor) -> "KnowledgeGraph":
        """The same graph with its entities in another local order: local ``i`` of the result is local
        ``order[i]`` here (``order`` a permutation of ``range(N)``). Triples hold global ids and stay.

        >>> import torch
        >>> kg = KnowledgeGraph(torch.tensor([10, 11, 12]), ["a", "b", "c"], torch.tensor([[10, 0, 12]]))
        >>> back = kg.reordered(torch.tensor([2, 0, 1]))
        >>> back.ids.tolist(), back.names, back.neighbours()[1].tolist()
        ([12, 10, 11], ['c', 'a', 'b'], [1, 0])
        """
        order = torch.as_tensor(order, dtype=torch.long).cpu()  # an index: from any device
        if order.shape != (self.num_entities,) or not torch.equal(torch.sort(order).values, torch.arange(self.num_entities)):
            raise ValueError(f"KnowledgeGraph.reordered: order must be a permutation of range({self.num_entities})")
        positions = order.tolist()
        return KnowledgeGraph(
            ids=self.ids[order], names=[self.names[i] for i in positions], triples=self.triples,
            relation_names=dict(self.relation_names),
            attributes=None if self.attributes is None else [self.attributes[i] for i in positions],
            features={m: t[order] for m, t in self.features.items()},
            present={m: v[order] for m, v in self.present.items()},
        )

    @property
    def num_entities(self) -> int:
        return int(self.ids.numel())

    @property
    def num_triples(self) -> int:
        return int(self.triples.shape[0])

    def set_feature(self, name: str, table: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Attach a ``[N, d]`` feature table (``present``: bool ``[N]``, default all true)."""
        if table.dim() != 2 or table.shape[0] != self.num_entities:
            raise ValueError(f"feature {name!r}: expected shape [{self.num_entities}, d], got {tuple(table.shape)}")
        if not table.dtype.is_floating_point:
            raise TypeError(f"feature {name!r}: expected a floating tensor, got {table.dtype}")
        bad = ~torch.isfinite(table).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"feature {name!r}: {int(bad.sum())} rows hold NaN/inf, the first for entity id {int(self.ids[bad.nonzero()[0, 0]])}")
        if present is None:
            present = torch.ones(self.num_entities, dtype=torch.bool)
        if present.dtype != torch.bool or tuple(present.shape) != (self.num_entities,):
            raise ValueError(f"feature {name!r}: presence mask must be bool [{self.num_entities}], got {present.dtype} {tuple(present.shape)}")
        self.features[name] = table
        self.present[name] = present

    @cached_property
    def _id_lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(self.ids)
        return self.ids[order], order

    def to_local(self, global_ids: torch.Tensor) -> torch.Tensor:
        """Local indices of global ids; raises naming the first id not in this graph."""
        sorted_ids, order = self._id_lookup
        global_ids = torch.as_tensor(global_ids, dtype=torch.long).contiguous()
        if global_ids.numel() == 0:  # also for a graph without entities
            return torch.zeros_like(global_ids)
        pos = torch.searchsorted(sorted_ids, global_ids).clamp(max=max(sorted_ids.numel() - 1, 0))
        found = sorted_ids.numel() > 0 and sorted_ids[pos] == global_ids
        if sorted_ids.numel() == 0 or not bool(found.all()):
            missing = global_ids[~found] if sorted_ids.numel() else global_ids
            raise KeyError(f"{missing.numel()} id(s) are not entities of this graph, e.g. {int(missing.reshape(-1)[0])}")
        return order[pos]

    def contains(self, global_ids: torch.Tensor) -> torch.Tensor:
        """Bool mask: which of ``global_ids`` are entities of this graph."""
        sorted_ids, _ = self._id_lookup
        global_ids = torch.as_tensor(global_ids, dtype=torch.long).contiguous()
        if sorted_ids.numel() == 0:
            return torch.zeros_like(torch.as_tensor(global_ids), dtype=torch.bool)
        pos = torch.searchsorted(sorted_ids, global_ids).clamp(max=sorted_ids.numel() - 1)
        return sorted_ids[pos] == global_ids

    @cached_property
    def local_triples(self) -> torch.Tensor:
        """``[T, 3]`` triples with heads and tails as local indices."""
        t = self.triples
        return torch.stack([self.to_local(t[:, 0]), t[:, 1], self.to_local(t[:, 2])], dim=1)

    @cached_property
    def _neighbours(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.local_triples
        src = torch.cat([t[:, 0], t[:, 2]])
        dst = torch.cat([t[:, 2], t[:, 0]])
        keep = src != dst
        key = torch.unique(src[keep] * max(self.num_entities, 1) + dst[keep])
        src, dst = key // max(self.num_entities, 1), key % max(self.num_entities, 1)
        indptr = torch.zeros(self.num_entities + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(src, minlength=self.num_entities), 0)
        return indptr, dst

    def neighbours(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Undirected neighbour lists in CSR form ``(indptr [N+1], indices)``, local, no self loops."""
        return self._neighbours

    def degrees(self) -> torch.Tensor:
        """Number of distinct neighbours per entity (local order)."""
        indptr, _ = self._neighbours
        return indptr[1:] - indptr[:-1]


@dataclass(eq=False)
class KGPair:
    """Two knowledge graphs and, when known, their gold links.

    Attributes:
        kg1, kg2: the graphs; their global ids must not overlap.
        links: int64 ``[L, 2]`` of global ids ``(kg1 entity, kg2 entity)``, or None.
        name: a label for logs and reports.
    """

    kg1: KnowledgeGraph
    kg2: KnowledgeGraph
    links: torch.Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if bool(torch.isin(self.kg1.ids, self.kg2.ids).any()):
            raise ValueError("KGPair: the two graphs share global entity ids")
        if self.links is not None:
            self.links = torch.as_tensor(self.links, dtype=torch.long)
            if self.links.dim() != 2 or self.links.shape[1] != 2:
                raise ValueError(f"KGPair: links must be [L, 2], got {tuple(self.links.shape)}")
            for side, kg in ((0, self.kg1), (1, self.kg2)):
                ok = kg.contains(self.links[:, side])
                if not bool(ok.all()):
                    row = int((~ok).nonzero()[0, 0])
                    raise ValueError(f"KGPair: link {row} ({self.links[row].tolist()}) names id {int(self.links[row, side])}, not an entity of kg{side + 1}")
            for side in (0, 1):
                if self.links[:, side].unique().numel() != self.links.shape[0]:
                    raise ValueError(f"KGPair: links are not one-to-one: an entity of kg{side + 1} appears in two links")

    @property
    def num_entities(self) -> int:
        """Entities of both graphs; the pair index is kg1's local order, then kg2's."""
        return self.kg1.num_entities + self.kg2.num_entities

    def links_local(self) -> torch.Tensor:
        """Gold links as ``[L, 2]`` local indices (kg1 local, kg2 local)."""
        if self.links is None:
            raise ValueError(f"KGPair {self.name!r} has no gold links")
        return torch.stack([self.kg1.to_local(self.links[:, 0]), self.kg2.to_local(self.links[:, 1])], dim=1)

    @cached_property
    def union_adjacency(self) -> torch.Tensor:
        """Sparse ``[N1+N2, N1+N2]`` union graph in pair index order: symmetric, with
        self loops, row-normalised (each row sums to 1)."""
        n1, n = self.kg1.num_entities, self.num_entities
        parts = []
        for kg, offset in ((self.kg1, 0), (self.kg2, n1)):
            indptr, idx = kg.neighbours()
            src = torch.repeat_interleave(torch.arange(kg.num_entities), indptr[1:] - indptr[:-1])
            parts.append(torch.stack([src + offset, idx + offset]))
        loops = torch.arange(n)
        edges = torch.cat(parts + [torch.stack([loops, loops])], dim=1)
        deg = torch.bincount(edges[0], minlength=n).float()
        values = 1.0 / deg[edges[0]]
        return torch.sparse_coo_tensor(edges, values, (n, n), check_invariants=False).coalesce()
