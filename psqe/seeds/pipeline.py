"""``generate_seeds``: PSQE's three stages end to end, plus the baselines.

Data flow: two :class:`~psqe.data.KnowledgeGraph` objects with features ->
Stage I (fusion, K-means, per-cluster greedy) -> Stage II (contrastive
tuning, global sampling, MIC) -> Stage III (neighbourhood expansion,
recheck) -> (with ``fixed_size``, the cut to ``budget`` seeds) -> seeds as global ids. Every stage works on local indices
``(kg1 entity, kg2 entity)``; only the result speaks global ids.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from ..data.kg import KGPair, KnowledgeGraph
from . import metrics
from .config import PSQEConfig
from .fixed_size import keep_budget, mic_margin, neighbour_agreement
from .fusion import active_weights, fuse, weighted_pair_tables
from .mic import mic_filter
from .stage1 import stage1
from .stage3 import expand
from .uvp import greedy_seeds, type_one, type_two

log = logging.getLogger(__name__)


@dataclass
class SeedResult:
    """What :func:`generate_seeds` returns.

    Attributes:
        seeds: int64 ``[S, 2]`` global ids ``(kg1 entity, kg2 entity)``: the output.
        stages: stage name -> seeds (global ids) after that stage.
        timings: stage name -> seconds.
        quality: stage name -> measures (when gold links were given), else empty.
        weights: the modality weights actually used (after renormalisation).
        clusters: Stage I's K-means labels ``(kg1 [N1], kg2 [N2])``, local order.
    """

    seeds: torch.Tensor
    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    clusters: tuple[torch.Tensor, torch.Tensor] | None = None


def modality_tables(kg1: KnowledgeGraph, kg2: KnowledgeGraph, weights: dict[str, float], device: str):
    """The weighted modalities both graphs have, as float tables on ``device``."""
    available = set(kg1.features) & set(kg2.features)
    w = active_weights(weights, available)
    t1, t2 = {}, {}
    for m in w:
        a, b = kg1.features[m], kg2.features[m]
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"modality {m!r}: feature sizes differ between the graphs ({a.shape[1]} vs {b.shape[1]})")
        t1[m], t2[m] = a.to(device).float(), b.to(device).float()
    return t1, t2, w


def _append_unused(base: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``base`` followed by the rows of ``extra`` whose two entities ``base`` does not use."""
    fresh = ~torch.isin(extra[:, 0], base[:, 0]) & ~torch.isin(extra[:, 1], base[:, 1])
    return torch.cat([base, extra[fresh]])


def _check(kg1: KnowledgeGraph, kg2: KnowledgeGraph, cfg: PSQEConfig) -> None:
    for i, kg in enumerate((kg1, kg2), 1):
        if kg.num_entities == 0:
            raise ValueError(f"generate_seeds: kg{i} has no entities")
    if cfg.budget > min(kg1.num_entities, kg2.num_entities):
        raise ValueError(
            f"generate_seeds: budget {cfg.budget} exceeds the smaller graph ({min(kg1.num_entities, kg2.num_entities)} entities)"
        )


def generate_seeds(
    kg1: KnowledgeGraph, kg2: KnowledgeGraph, config: PSQEConfig | None = None, links: torch.Tensor | None = None
) -> SeedResult:
    """PSQE seeds for two knowledge graphs with features attached.

    ``links`` (global ids ``[L, 2]``), when given, are used only to report
    seed quality per stage, never to choose seeds.
    """
    cfg = config or PSQEConfig()
    _check(kg1, kg2, cfg)
    if cfg.tie_order == "shuffled":
        (kg1, order1), (kg2, order2) = _tie_orders(kg1, kg2, cfg.seed)
        result = generate_seeds(kg1, kg2, cfg.replace(tie_order="file"), links)
        if result.clusters is not None:  # back to the caller's local order
            result.clusters = tuple(_unorder(labels, order) for labels, order in zip(result.clusters, (order1, order2)))
        return result
    pair = KGPair(kg1, kg2, links)
    torch.manual_seed(cfg.seed)
    t1, t2, w = modality_tables(kg1, kg2, cfg.weights, cfg.device)
    result = SeedResult(seeds=torch.empty(0, 2, dtype=torch.long), weights=w)
    stages: dict[str, torch.Tensor] = {}

    start = time.perf_counter()
    sim1 = sim2 = None
    if cfg.stage1_similarity == "raw_relation_attribute":
        raw = [m for m in ("relation", "attribute") if m in t1]
        if not raw:
            raise ValueError("stage1_similarity='raw_relation_attribute' needs relation or attribute features")
        sim1, sim2 = torch.cat([t1[m] for m in raw], 1), torch.cat([t2[m] for m in raw], 1)
    s1 = stage1(fuse(t1, w), fuse(t2, w), cfg.budget, cfg.n_clusters, cfg.seed, cfg.kmeans_backend, sim1, sim2)
    stages["stage1"] = current = s1.seeds.cpu()
    result.clusters = (s1.labels1.cpu(), s1.labels2.cpu())
    result.timings["stage1"] = time.perf_counter() - start
    if current.shape[0] == 0 and cfg.use_stage2:
        raise ValueError(f"generate_seeds: Stage I made no seeds, so Stage II has nothing to tune on: the cluster "
                         f"budgets floor(budget * |C_j| / (|E1| + |E2|)), capped by each side's members, are "
                         f"{s1.budgets} for budget {cfg.budget} and n_clusters {cfg.n_clusters}; raise the budget "
                         "or lower n_clusters")
    if cfg.use_stage3 and not cfg.use_stage2:
        log.warning("generate_seeds: use_stage3 needs Stage II's tuned tables; with use_stage2=False Stage III "
                    "does not run")

    if cfg.use_stage2:
        from .stage2_train import tune  # imports PyTorch Geometric: only when Stage II runs

        start = time.perf_counter()
        n1 = kg1.num_entities
        edge_index = pair.union_adjacency.indices().to(cfg.device)
        tuning = dataclasses.replace(cfg.tuning, device=cfg.device, seed=cfg.stage2_seed)
        pair_features = {m: torch.cat([t1[m], t2[m]]) for m in w}
        pair_seeds = torch.stack([current[:, 0], current[:, 1] + n1], dim=1).to(cfg.device)
        tuned = tune(pair_features, edge_index, pair_seeds, tuning)
        tuned1 = {m: h[:n1] for m, h in tuned.items()}
        tuned2 = {m: h[n1:] for m, h in tuned.items()}
        stages["stage2_tuned_global"] = glob = greedy_seeds(fuse(tuned1, w), fuse(tuned2, w), cfg.budget, cfg.candidates_k).cpu()
        current = _append_unused(current, glob)
        stages["stage2_before_mic"] = current
        if cfg.use_mic:
            current = current[mic_filter(current, t1, t2, w, cfg.mic_both_directions).cpu()]
        stages["stage2"] = current
        result.timings["stage2"] = time.perf_counter() - start

        if cfg.use_stage3:
            start = time.perf_counter()
            new = expand(current, kg1.neighbours(), kg2.neighbours(), _cpu(t1), _cpu(t2), _cpu(tuned1), _cpu(tuned2),
                         w, cfg.eta, cfg.stage3_schedule)
            current = torch.cat([current, new])
            stages["stage3_before_mic"] = current
            if cfg.use_mic:
                current = current[mic_filter(current, t1, t2, w, cfg.mic_both_directions).cpu()]
            stages["stage3"] = current
            result.timings["stage3"] = time.perf_counter() - start

    if cfg.fixed_size:
        current = _fixed_size(current, (t1, t2), w, result.clusters[0], cfg.budget, (kg1.neighbours(), kg2.neighbours()))
        stages["fixed_size"] = current
    result.stages = {name: _to_global(s, kg1, kg2) for name, s in stages.items()}
    result.seeds = _to_global(current, kg1, kg2)
    if links is not None:
        result.quality = {name: _quality(s, pair, result.clusters) for name, s in stages.items()}
    log.info("PSQE: %d seeds; timings %s", result.seeds.shape[0], {k: round(v, 2) for k, v in result.timings.items()})
    return result


def _fixed_size(seeds: torch.Tensor, tables: tuple[dict, dict], w: dict[str, float], labels1: torch.Tensor,
                budget: int, neighbours: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                ) -> torch.Tensor:
    """``seeds`` (local) cut to ``budget`` by :func:`~psqe.seeds.fixed_size.keep_budget`: support is the
    seeds' neighbour agreement, then their margin in MIC's matrix of the original ``tables``; clusters are
    Stage I's labels of the kg1 entities (:mod:`psqe.seeds.fixed_size`)."""
    if seeds.shape[0] <= budget:
        if seeds.shape[0] < budget:
            log.warning("fixed_size: PSQE made %d seeds, fewer than the budget %d; all are kept", seeds.shape[0], budget)
        return seeds
    left, right = weighted_pair_tables(*({m: t[m][idx.to(t[m].device)] for m in w}
                                         for t, idx in zip(tables, (seeds[:, 0], seeds[:, 1]))), w)
    agreement = neighbour_agreement(seeds, *neighbours)
    kept = keep_budget(agreement, labels1.cpu()[seeds[:, 0]], budget, mic_margin(left, right).cpu())
    log.info("fixed_size: kept %d of %d seeds (each Stage I cluster its share, the best supported first: "
             "%d of them with a seed pair among their neighbours)", budget, seeds.shape[0], int((agreement[kept] > 0).sum()))
    return seeds[kept]


def baseline_seeds(kg1: KnowledgeGraph, kg2: KnowledgeGraph, kind: str, config: PSQEConfig | None = None) -> torch.Tensor:
    """Type I (``kind="type1"``, EVA's UVP: greedy on the first weighted
    modality present, the visual one by default) or Type II (``"type2"``,
    greedy on the fused vectors) seeds, as global ids."""
    cfg = config or PSQEConfig()
    _check(kg1, kg2, cfg)
    if cfg.tie_order == "shuffled":
        (kg1, _), (kg2, _) = _tie_orders(kg1, kg2, cfg.seed)
    t1, t2, w = modality_tables(kg1, kg2, cfg.weights, cfg.device)
    if kind == "type1":
        seeds = type_one(t1, t2, cfg.budget, next(iter(w)))
    elif kind == "type2":
        seeds = type_two(t1, t2, w, cfg.budget)
    else:
        raise ValueError(f"baseline kind must be 'type1' or 'type2', got {kind!r}")
    return _to_global(seeds.cpu(), kg1, kg2)


def _tie_orders(kg1: KnowledgeGraph, kg2: KnowledgeGraph, seed: int):
    """Both graphs with their entities shuffled by permutations drawn from ``seed`` (``PSQEConfig.tie_order``),
    and the permutations: the greedy walks break exact ties by ``(i, j)``, and in the files' order that
    would favour the entities listed first (on DBP15K, the linked ones)."""
    g = torch.Generator().manual_seed(seed)
    order1, order2 = torch.randperm(kg1.num_entities, generator=g), torch.randperm(kg2.num_entities, generator=g)
    return (kg1.reordered(order1), order1), (kg2.reordered(order2), order2)


def _unorder(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Per-entity ``values`` of a reordered graph (``KnowledgeGraph.reordered(order)``), in the original order."""
    out = torch.empty_like(values)
    out[order.to(values.device)] = values
    return out


def _cpu(tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {m: t.cpu() for m, t in tables.items()}


def _to_global(seeds: torch.Tensor, kg1: KnowledgeGraph, kg2: KnowledgeGraph) -> torch.Tensor:
    return torch.stack([kg1.ids[seeds[:, 0]], kg2.ids[seeds[:, 1]]], dim=1) if seeds.numel() else seeds.reshape(0, 2)


def _quality(seeds: torch.Tensor, pair: KGPair, clusters: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
    labels1, labels2 = clusters if clusters is not None else (None, None)
    return metrics.seed_quality(
        seeds, pair.links_local() if pair.links is not None else None, pair.kg1.local_triples, pair.kg2.local_triples,
        pair.kg1.degrees(), pair.kg2.degrees(), labels1, labels2,
    )


def seed_quality(pair: KGPair, seeds: torch.Tensor, clusters: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """The quality measures of any seed set (global ids ``[S, 2]``) on ``pair``:
    precision/recall when the pair has gold links, coverage always, the cluster
    TV distance when ``clusters`` (e.g. ``SeedResult.clusters``) are given."""
    local = torch.stack([pair.kg1.to_local(seeds[:, 0]), pair.kg2.to_local(seeds[:, 1])], dim=1)
    return _quality(local, pair, clusters)
