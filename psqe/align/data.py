"""What every aligner reads: :class:`AlignData`, built once from a :class:`~psqe.data.KGPair`.

The **pair index** numbers both graphs' entities in one range: kg1's local
order ``0..n1-1``, then kg2's local order ``n1..n1+n2-1`` (the order of
:attr:`KGPair.union_adjacency`). Every table, edge and training pair of
:mod:`psqe.align` lives in that index; :meth:`AlignData.pairs_from_global`
maps ``[S, 2]`` global-id pairs (seeds, gold links) into it and rejects bad
input with the offending row named.

Feature tables are taken as the feature builders left them: missing rows
already hold EVA's replacement (visual: a draw from ``N(mean, std)`` of the
present rows; text: zeros), so nothing is re-applied here; the presence masks
are carried along for models that want them. A modality is kept only when
*both* graphs have it (otherwise it is skipped with a log line).

Structure, two views of the union graph of both graphs' triples:

- ``edge_index``: ``[2, E]``, symmetric, one self loop per entity, no
  duplicates, sorted by destination (row 1); for PyTorch Geometric layers
  such as :class:`psqe.seeds.stage2_model.DiagGAT`.
- ``adj``: sparse ``[N, N]`` ``D^-1/2 (A + I) D^-1/2`` with ``A[i, j]`` the
  number of triples between ``i`` and ``j`` in either direction (self-triples
  dropped), exactly EVA's / MEAformer's ``get_adjr(norm=True)``; for GCNs.

>>> import torch
>>> from psqe.data import KGPair, KnowledgeGraph
>>> kg1 = KnowledgeGraph(torch.tensor([0, 1]), ["a", "b"], torch.tensor([[0, 0, 1]]),
...                      features={"visual": torch.ones(2, 3)})
>>> kg2 = KnowledgeGraph(torch.tensor([5, 6, 7]), ["x", "y", "z"], torch.tensor([[6, 0, 7]]),
...                      features={"visual": torch.ones(3, 3)})
>>> data = AlignData.from_pair(KGPair(kg1, kg2, links=torch.tensor([[0, 6], [1, 7]])))
>>> data.n1, data.n2, sorted(data.features), data.links.tolist()
(2, 3, ['visual'], [[0, 3], [1, 4]])
>>> data.pairs_from_global(torch.tensor([[1, 5]])).tolist()
[[1, 2]]
>>> data.pairs_from_global(torch.tensor([[0, 5], [0, 6]]))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: seeds rows 0 and 1 both use kg1 entity 0: pairs must be one-to-one
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..seeds.attention import Adjacency

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AlignData:
    """Feature tables, structure and gold links of a pair, in the pair index.

    Attributes:
        n1, n2: entity counts of kg1 and kg2 (``N = n1 + n2``).
        ids: int64 ``[N]`` global id of each pair-index row.
        features: modality -> float32 ``[N, d]`` table.
        present: modality -> bool ``[N]``: rows that are real observations.
        edge_index: int64 ``[2, E]`` union graph (see the module docstring).
        adj: sparse float32 ``[N, N]`` normalised adjacency (see the module docstring).
        links: int64 ``[L, 2]`` gold links in the pair index, or None.
        name: the pair's label.
    """

    n1: int
    n2: int
    ids: Tensor
    features: dict[str, Tensor]
    present: dict[str, Tensor]
    edge_index: Tensor
    adj: Tensor
    links: Tensor | None = None
    name: str = ""
    _sorted: tuple[Tensor, Tensor, Tensor, Tensor] | None = field(default=None, repr=False)
    _attention_graph: Adjacency | None = field(default=None, repr=False)

    @classmethod
    def from_pair(cls, pair, modalities: Sequence[str] | None = None, device: str | torch.device = "cpu") -> AlignData:
        """Build the aligner input of ``pair`` (a :class:`~psqe.data.KGPair`).

        Args:
            modalities: feature names to keep (default: every one both graphs have).
                Naming one that a graph lacks raises ``ValueError``.
            device: where the tensors go.
        """
        kg1, kg2 = pair.kg1, pair.kg2
        n1, n2 = kg1.num_entities, kg2.num_entities
        wanted = list(modalities) if modalities is not None else sorted(set(kg1.features) | set(kg2.features))
        features, present = {}, {}
        for m in wanted:
            lacking = [f"kg{i + 1}" for i, kg in enumerate((kg1, kg2)) if m not in kg.features]
            if lacking:
                if modalities is not None:
                    raise ValueError(f"AlignData: modality {m!r} is missing from {' and '.join(lacking)}")
                log.warning("AlignData: modality %r skipped: %s lacks it", m, " and ".join(lacking))
                continue
            d1, d2 = kg1.features[m].shape[1], kg2.features[m].shape[1]
            if d1 != d2:
                raise ValueError(f"AlignData: modality {m!r} has {d1} columns in kg1 but {d2} in kg2")
            features[m] = torch.cat([kg1.features[m], kg2.features[m]]).float().to(device)
            present[m] = torch.cat([kg1.present[m], kg2.present[m]]).to(device)
        adj = _normalised_adjacency(pair)
        edge_index = adj.indices().flip(0).contiguous()  # symmetric: flipped row-sorted = sorted by destination
        data = cls(n1=n1, n2=n2, ids=torch.cat([kg1.ids, kg2.ids]), features=features, present=present,
                   edge_index=edge_index, adj=adj, name=pair.name)
        if pair.links is not None:
            data.links = data.pairs_from_global(pair.links, what="gold links")
        log.info("AlignData %r: %d + %d entities, %d edges, modalities %s", pair.name, n1, n2, edge_index.shape[1],
                 {m: f.shape[1] for m, f in features.items()})
        return data.to(device)

    def attention_graph(self) -> Adjacency:
        """``edge_index`` prepared once for the graph attention's fused path
        (:class:`~psqe.seeds.attention.Adjacency`: the compiled layer kernels on
        CPU, torch sparse ops elsewhere); the same function as the edge list."""
        if self._attention_graph is None:
            n = self.num_entities
            self._attention_graph = Adjacency.build(self.edge_index, n, n)
        return self._attention_graph

    @property
    def num_entities(self) -> int:
        return self.n1 + self.n2

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def to(self, device: str | torch.device) -> AlignData:
        """A copy on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.ids.device == device:
            return self
        move = {m: t.to(device) for m, t in self.features.items()}
        return dataclasses.replace(self, ids=self.ids.to(device), features=move,
                                   present={m: t.to(device) for m, t in self.present.items()},
                                   edge_index=self.edge_index.to(device), adj=self.adj.to(device),
                                   links=None if self.links is None else self.links.to(device), _sorted=None,
                                   _attention_graph=None)

    def _lookup(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self._sorted is None:
            ids = self.ids.cpu()
            s1, o1 = torch.sort(ids[: self.n1])
            s2, o2 = torch.sort(ids[self.n1:])
            self._sorted = (s1, o1, s2, o2 + self.n1)
        return self._sorted

    def _find(self, values: Tensor, side: int) -> tuple[Tensor, Tensor]:
        """Pair indices of global ids on one side and a found-mask."""
        s1, o1, s2, o2 = self._lookup()
        sorted_ids, order = (s1, o1) if side == 0 else (s2, o2)
        if sorted_ids.numel() == 0:
            return torch.zeros_like(values), torch.zeros_like(values, dtype=torch.bool)
        pos = torch.searchsorted(sorted_ids, values.contiguous()).clamp(max=sorted_ids.numel() - 1)
        return order[pos], sorted_ids[pos] == values

    def pairs_from_global(self, pairs, what: str = "seeds", places=None) -> Tensor:
        """Map ``[S, 2]`` global-id pairs ``(kg1 entity, kg2 entity)`` to the pair index.

        Raises ``ValueError`` naming the first bad row: wrong shape or dtype,
        an id that is not an entity of its graph (with a hint when the columns
        look swapped), or an entity used by two rows (pairs must be one-to-one;
        an exact repeat counts). ``what`` names the input in messages, and ``places`` (where each row
        sits in its file, e.g. ``"line 3"``: :func:`psqe.seeds.io.read_seeds`'s ``with_lines``) the row.
        """
        p = torch.as_tensor(pairs)
        if p.dim() != 2 or p.shape[1] != 2:
            raise ValueError(f"{what}: expected an [S, 2] table of global entity ids, got shape {tuple(p.shape)}")
        if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
            raise ValueError(f"{what}: entity ids must be integers, got {p.dtype}")
        p = p.long().cpu()
        left, ok1 = self._find(p[:, 0], 0)
        right, ok2 = self._find(p[:, 1], 1)
        bad = ~(ok1 & ok2)
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            a, b = p[r].tolist()
            where = f"row {r}" if places is None else places[r]
            if bool(self._find(p[r:r + 1, 0], 1)[1]) and bool(self._find(p[r:r + 1, 1], 0)[1]):
                raise ValueError(f"{what} {where} ({a}, {b}): the columns look swapped; each row must be (kg1 id, kg2 id)")
            side, value = (1, a) if not bool(ok1[r]) else (2, b)
            raise ValueError(f"{what} {where} ({a}, {b}): id {value} is not an entity of kg{side}")
        out = torch.stack([left, right], dim=1)
        _check_one_to_one(out, p, what)
        return out.to(self.device)

    def to_global(self, pairs: Tensor) -> Tensor:
        """Pair-index pairs (any shape) back to global ids."""
        return self.ids[pairs.to(self.ids.device)]

    def check_pairs(self, pairs: Tensor, what: str = "pairs", one_to_one: bool = True) -> Tensor:
        """Validate pair-index pairs (left in kg1's range, right in kg2's); returns int64 ``[S, 2]``."""
        p = torch.as_tensor(pairs)
        if p.dim() != 2 or p.shape[1] != 2 or p.is_floating_point() or p.dtype == torch.bool:
            raise ValueError(f"{what}: expected an integer [S, 2] tensor of pair indices, got {tuple(p.shape)} {p.dtype}")
        p = p.long()
        bad = (p[:, 0] < 0) | (p[:, 0] >= self.n1) | (p[:, 1] < self.n1) | (p[:, 1] >= self.num_entities)
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise ValueError(f"{what} row {r} {p[r].tolist()}: pair indices must be (0..{self.n1 - 1}, "
                             f"{self.n1}..{self.num_entities - 1}); map global ids with pairs_from_global")
        if one_to_one:
            _check_one_to_one(p.cpu(), p.cpu(), what)
        return p.to(self.device)


def _check_one_to_one(index_pairs: Tensor, shown: Tensor, what: str) -> None:
    for side in (0, 1):
        col = index_pairs[:, side]
        order = torch.argsort(col, stable=True)
        same = (col[order][1:] == col[order][:-1]).nonzero()
        if same.numel():
            rows = order[same[:, 0]], order[same[:, 0] + 1]
            # report the duplicate whose second row comes first
            k = int(torch.argmin(rows[1]))
            r0, r1 = int(rows[0][k]), int(rows[1][k])
            raise ValueError(f"{what} rows {r0} and {r1} both use kg{side + 1} entity {int(shown[r1, side])}: "
                             "pairs must be one-to-one")


def _normalised_adjacency(pair) -> Tensor:
    """EVA's ``get_adjr(norm=True)`` over the pair index (see the module docstring)."""
    n1, n = pair.kg1.num_entities, pair.num_entities
    heads, tails = [], []
    for kg, offset in ((pair.kg1, 0), (pair.kg2, n1)):
        t = kg.local_triples
        keep = t[:, 0] != t[:, 2]
        heads.append(t[keep, 0] + offset)
        tails.append(t[keep, 2] + offset)
    h, t = torch.cat(heads), torch.cat(tails)
    loops = torch.arange(n)
    rows = torch.cat([h, t, loops])
    cols = torch.cat([t, h, loops])
    adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()), (n, n), check_invariants=True).coalesce()
    idx, val = adj.indices(), adj.values()
    d = torch.zeros(n).index_add_(0, idx[0], val).rsqrt()
    return torch.sparse_coo_tensor(idx, val * d[idx[0]] * d[idx[1]], (n, n), is_coalesced=True, check_invariants=False)


__all__ = ["AlignData"]
