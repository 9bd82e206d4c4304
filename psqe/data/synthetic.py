"""Synthetic multimodal KG pairs drawn from one latent world.

The generator is the workload of the tests, the demo and the scaling
benchmarks. One latent world is drawn, then observed twice:

- **Entities**: ``num_entities`` per graph; a fraction ``overlap`` of them is
  shared (these are the gold links), the rest exist in one graph only.
- **Structure**: every world entity has a community and a power-law weight
  (Pareto tail ``power``); edges pick their head by weight and their tail by
  weight inside the head's community (with probability ``p_in``) or anywhere.
  Relation types follow a Zipf law shifted per community. Each graph keeps
  every world edge between its entities with probability ``edge_keep`` and
  numbers the relations its own way.
- **Features** per graph and modality (``dims``): a latent vector (the
  community centre plus the entity's own direction, so clusters exist) plus
  observation noise whose scale falls with the entity's world degree,
  ``noise[m] / sqrt(1 + degree / mean_degree)``. ``"visual"`` is present for
  a fraction ``image_coverage`` of the entities (higher-degree entities more
  often); missing rows are drawn from ``N(mean, std)`` of the present rows,
  EVA's rule. ``"attribute"`` and ``"relation"`` are per-entity means (the
  paper's Eq. 3) of attribute-type / relation-type embeddings that each graph
  names slightly differently.

Global ids follow the EVA layout: kg1 holds ``0..n-1``, kg2 ``n..2n-1``; the
local order of each graph is a random permutation, so nothing leaks through
the order. Deterministic by ``seed``; vectorised (no Python loop over
entities or edges).

>>> from psqe.data.synthetic import make_pair
>>> pair = make_pair(500, seed=0)
>>> pair.kg1.num_entities, pair.kg2.num_entities, pair.links.shape[0]
(500, 500, 350)
>>> sorted(pair.kg1.features), pair.kg1.features["visual"].shape[1]
(['attribute', 'relation', 'visual'], 64)
>>> bool((make_pair(500, seed=0).kg2.triples == pair.kg2.triples).all())
True
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kg import KGPair, KnowledgeGraph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of :func:`make_pair` (every default is used by the demo).

    Attributes:
        overlap: fraction of each graph's entities that have a counterpart.
        avg_degree: mean number of world edges per world entity (counting both ends).
        power: Pareto exponent of the entity weights (degree tail ~ ``power + 1``).
        num_communities: communities of the world; ``None``: ``max(4, round(n ** 0.5 / 4))``.
        p_in: probability that an edge stays inside its head's community.
        num_relations: relation types of the world.
        num_attribute_types: attribute types of the world.
        attributes_per_entity: mean attribute count per entity (Poisson, at least 1).
        edge_keep: probability that a graph observes a world edge between its entities.
        dims: modality -> feature size.
        noise: modality -> noise scale at mean degree (relative to a unit signal).
        community_spread: weight of the community centre in each latent vector.
        image_coverage: fraction of entities with a real ``"visual"`` row.
        naming_noise: how differently the two graphs embed the same attribute / relation type.
        visual_offset: shared component added before a ReLU, so ``"visual"`` rows look like
            pooled CNN features (non-negative, unrelated images at a clearly positive cosine);
            0 keeps plain Gaussian rows.
    """

    overlap: float = 0.7
    avg_degree: float = 10.0
    power: float = 1.5
    num_communities: int | None = None
    p_in: float = 0.8
    num_relations: int = 60
    num_attribute_types: int = 50
    attributes_per_entity: float = 4.0
    edge_keep: float = 0.8
    dims: dict[str, int] = field(default_factory=lambda: {"visual": 64, "attribute": 32, "relation": 32})
    noise: dict[str, float] = field(default_factory=lambda: {"visual": 1.58, "attribute": 1.0, "relation": 1.0})
    community_spread: float = 0.6
    image_coverage: float = 0.75
    naming_noise: float = 0.3
    visual_offset: float = 2.0

    def __post_init__(self) -> None:
        for name in ("overlap", "p_in", "edge_keep", "image_coverage"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticConfig.{name} must be in [0, 1], got {value}")
        for name in ("avg_degree", "power", "attributes_per_entity"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SyntheticConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("num_relations", "num_attribute_types"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_communities is not None and self.num_communities < 1:
            raise ValueError(f"SyntheticConfig.num_communities must be >= 1, got {self.num_communities}")
        unknown = set(self.dims) - {"visual", "attribute", "relation"}
        if unknown:
            raise ValueError(f"SyntheticConfig.dims: unknown modalities {sorted(unknown)} (visual, attribute, relation)")
        for m, d in self.dims.items():
            if d < 1:
                raise ValueError(f"SyntheticConfig.dims[{m!r}] must be >= 1, got {d}")
            if m not in self.noise or self.noise[m] < 0:
                raise ValueError(f"SyntheticConfig.noise[{m!r}] must be given and >= 0")


def _unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _sample_within(weights: Tensor, groups: Tensor, heads: Tensor, g: torch.Generator) -> Tensor:
    """For each head, one entity of the head's group drawn proportionally to ``weights``."""
    order = torch.argsort(groups, stable=True)
    cum = torch.cumsum(weights[order].double(), 0)
    counts = torch.bincount(groups, minlength=int(groups.max()) + 1)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    grp = groups[heads]
    low = torch.where(starts[grp] > 0, cum[(starts[grp] - 1).clamp_min(0)], torch.zeros((), dtype=torch.float64))
    high = cum[ends[grp] - 1]
    target = low + torch.rand(heads.numel(), generator=g, dtype=torch.float64) * (high - low)
    pos = torch.searchsorted(cum, target, right=True)
    pos = torch.minimum(torch.maximum(pos, starts[grp]), ends[grp] - 1)
    return order[pos]


def _world_edges(n: int, cfg: SyntheticConfig, communities: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``(heads, tails, relation types)`` of the world graph, self loops dropped."""
    u = torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-12)
    weights = u.pow(-1.0 / cfg.power)  # Pareto(power) entity weights
    weights = (weights / weights.mean()).float()
    num_edges = max(1, int(round(cfg.avg_degree * n / 2)))
    heads = torch.multinomial(weights, num_edges, replacement=True, generator=g) if n > 1 else torch.zeros(num_edges, dtype=torch.long)
    inside = torch.rand(num_edges, generator=g) < cfg.p_in
    tails = torch.multinomial(weights, num_edges, replacement=True, generator=g) if n > 1 else heads.clone()
    tails[inside] = _sample_within(weights, communities, heads[inside], g)
    keep = heads != tails
    heads, tails = heads[keep], tails[keep]
    if heads.numel() == 0:  # a one-entity world has no edges
        return heads, tails, heads.clone()
    zipf = torch.multinomial(1.0 / torch.arange(1, cfg.num_relations + 1, dtype=torch.float), heads.numel(), replacement=True, generator=g)
    shift = torch.randint(0, cfg.num_relations, (int(communities.max()) + 1,), generator=g)
    rel = (zipf + shift[communities[heads]]) % cfg.num_relations
    return heads, tails, rel


def _type_means(owner: Tensor, types: Tensor, table: Tensor, n: int) -> Tensor:
    """Per-entity mean of ``table[types]`` grouped by ``owner`` (zeros where none)."""
    out = torch.zeros(n, table.shape[1])
    out.index_add_(0, owner, table[types])
    count = torch.bincount(owner, minlength=n).clamp_min(1).unsqueeze(1)
    return out / count


def _observe(latent: Tensor, degree_factor: Tensor, scale: float, g: torch.Generator) -> Tensor:
    noise = torch.randn(latent.shape, generator=g) / math.sqrt(latent.shape[1])
    return latent + noise * (scale * degree_factor).unsqueeze(1)


def make_pair(num_entities: int, seed: int = 0, config: SyntheticConfig | None = None, **overrides) -> KGPair:
    """A synthetic two-graph pair with ``num_entities`` entities per graph and gold links.

    ``overrides`` change single fields of :class:`SyntheticConfig`
    (``make_pair(1000, overlap=0.5)``). The pair's ``name`` records the size
    and seed. See the module docstring for the model.
    """
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**cfg.__dict__, **overrides})
    if int(num_entities) != num_entities or num_entities < 1:
        raise ValueError(f"make_pair: num_entities must be a positive integer, got {num_entities!r}")
    n = int(num_entities)
    g = torch.Generator().manual_seed(int(seed))
    shared = int(round(cfg.overlap * n))
    world = shared + 2 * (n - shared)
    k = cfg.num_communities or max(4, round(world ** 0.5 / 4))
    communities = torch.randint(0, k, (world,), generator=g)
    heads, tails, rel = _world_edges(world, cfg, communities, g)
    degree = torch.bincount(torch.cat([heads, tails]), minlength=world).float()
    degree_factor = (1.0 + degree / degree.mean().clamp_min(1e-6)).rsqrt()

    # World entity w is in kg1 when w < n, in kg2 when w < shared or w >= n.
    members = [torch.arange(n), torch.cat([torch.arange(shared), torch.arange(n, world)])]
    perms = [torch.randperm(n, generator=g), torch.randperm(n, generator=g)]
    members = [mem[p] for mem, p in zip(members, perms)]  # local index -> world entity

    # Attribute types per world entity: Zipf over types, shifted per community.
    n_attr = (torch.poisson(torch.full((world,), cfg.attributes_per_entity - 1), generator=g) + 1).long()
    attr_owner = torch.repeat_interleave(torch.arange(world), n_attr)
    zipf = torch.multinomial(1.0 / torch.arange(1, cfg.num_attribute_types + 1, dtype=torch.float), attr_owner.numel(),
                             replacement=True, generator=g)
    attr_shift = torch.randint(0, cfg.num_attribute_types, (k,), generator=g)
    attr_type = (zipf + attr_shift[communities[attr_owner]]) % cfg.num_attribute_types

    latent = {}
    if "visual" in cfg.dims:
        d = cfg.dims["visual"]
        centres = _unit_rows(torch.randn(k, d, generator=g))
        own = _unit_rows(torch.randn(world, d, generator=g))
        latent["visual"] = _unit_rows(cfg.community_spread * centres[communities] + own)
    type_tables = {m: torch.randn(count, cfg.dims[m], generator=g) for m, count in
                   (("attribute", cfg.num_attribute_types), ("relation", cfg.num_relations)) if m in cfg.dims}
    # Higher-degree entities have an image more often; the mean stays near image_coverage.
    rel_degree = (1 - degree_factor) / (1 - degree_factor).mean().clamp_min(1e-6)
    image_p = (cfg.image_coverage * (0.5 + 0.5 * rel_degree)).clamp(0, 1)

    graphs = []
    for side in range(2):
        mem = members[side]
        local_of = torch.full((world,), -1, dtype=torch.long)
        local_of[mem] = torch.arange(n)
        both = (local_of[heads] >= 0) & (local_of[tails] >= 0) & (torch.rand(heads.numel(), generator=g) < cfg.edge_keep)
        rel_names = torch.randperm(cfg.num_relations, generator=g)
        gids = torch.arange(n) + side * n
        triples = torch.stack([gids[local_of[heads[both]]], rel_names[rel[both]], gids[local_of[tails[both]]]], dim=1)
        factor = degree_factor[mem]
        features, present = {}, {}
        for m in cfg.dims:
            if m == "visual":
                x = _observe(latent["visual"][mem], factor, cfg.noise[m], g)
                if cfg.visual_offset > 0:  # pooled-CNN-like: non-negative, one large shared component
                    x = torch.relu(x + cfg.visual_offset / math.sqrt(x.shape[1]))
                has = torch.rand(n, generator=g) < image_p[mem]
                real = x[has] if bool(has.any()) else x
                x[~has] = real.mean(0) + real.std(0, unbiased=False) * torch.randn(int((~has).sum()), x.shape[1], generator=g)
                present[m] = has
            else:
                table = type_tables[m] + cfg.naming_noise * torch.randn(type_tables[m].shape, generator=g)
                if m == "attribute":
                    owner_local = local_of[attr_owner]
                    sel = owner_local >= 0
                    base = _type_means(owner_local[sel], attr_type[sel], table, n)
                else:
                    src = torch.cat([local_of[heads[both]], local_of[tails[both]]])
                    base = _type_means(src, torch.cat([rel[both], rel[both]]), table, n)
                x = _observe(_unit_rows(base), factor, cfg.noise[m], g)
                present[m] = base.abs().sum(1) > 0
            features[m] = x.float()
        names = [f"kg{side + 1}/e{i}" for i in range(n)]
        graphs.append(KnowledgeGraph(ids=gids, names=names, triples=triples,
                                     relation_names={i: f"kg{side + 1}/r{i}" for i in range(cfg.num_relations)},
                                     features=features, present=present))

    # Gold links: the shared world entities, ordered by their kg1 local index.
    local1 = torch.full((world,), -1, dtype=torch.long)
    local1[members[0]] = torch.arange(n)
    local2 = torch.full((world,), -1, dtype=torch.long)
    local2[members[1]] = torch.arange(n)
    w = torch.arange(shared)
    links = torch.stack([local1[w], local2[w] + n], dim=1)
    links = links[torch.argsort(links[:, 0])]
    log.debug("synthetic pair: %d entities per graph, %d links, %d/%d triples, %d communities",
              n, shared, graphs[0].num_triples, graphs[1].num_triples, k)
    return KGPair(graphs[0], graphs[1], links=links, name=f"synthetic-{n}-seed{seed}")
