"""Seed quality measures (PSQE-SPEC "Seed quality measures").

All functions take seeds and gold links as ``[S, 2]`` local indices
``(kg1 entity, kg2 entity)`` and return plain numbers.

- precision ``|S ∩ gold| / |S|``, recall ``|S ∩ gold| / |gold|``;
- the paper's graph coverage, Eq. 11,
  ``S_a / (2 G_n) + Edge / (2 G_Edge) + S_f / G_n``, with this definition
  (the paper gives none): over both graphs, a seed entity is *aggregated*
  when its degree is at least the median degree of its graph (the mean of the
  two middle values for an even count), *scattered*
  otherwise; ``G_n`` = all entities, ``Edge`` = triples touching a seed
  entity, ``G_Edge`` = all triples. Note the formula does not reach 1 when
  every entity is a seed (it gives ``1/2 + (S_a + 2 S_f) / (2 G_n)``);
- plain measures: entity coverage, incident-edge coverage, and the total
  variation distance between the seed entities' distribution over clusters
  (or degree buckets ``floor(log2(1 + degree))``) and all entities' own.

>>> import torch
>>> from psqe.seeds.metrics import precision_recall
>>> precision_recall(torch.tensor([[0, 0], [1, 2]]), torch.tensor([[0, 0], [1, 1], [2, 2]]))
(0.5, 0.3333333333333333)
"""
from __future__ import annotations

import torch


def precision_recall(seeds: torch.Tensor, gold: torch.Tensor) -> tuple[float, float]:
    """Precision and recall of ``seeds`` against the gold links."""
    if seeds.numel() == 0:
        return 0.0, 0.0
    base = int(max(seeds[:, 1].max(), gold[:, 1].max())) + 1
    hit = torch.isin(seeds[:, 0] * base + seeds[:, 1], gold[:, 0] * base + gold[:, 1])
    correct = int(hit.sum())
    return correct / seeds.shape[0], correct / max(gold.shape[0], 1)


def distribution(labels: torch.Tensor, chosen: torch.Tensor | None = None, k: int | None = None) -> torch.Tensor:
    """Fraction of the ``chosen`` entities (all when None) per label ``0..k-1`` (float64 ``[k]``)."""
    k = int(labels.max()) + 1 if k is None else k
    picked = labels if chosen is None else labels[chosen]
    return torch.bincount(picked, minlength=k).double() / max(picked.numel(), 1)


def total_variation(labels: torch.Tensor, chosen: torch.Tensor) -> float:
    """TV distance between the label distribution of ``chosen`` entities and of all."""
    if chosen.numel() == 0:
        return 1.0
    k = int(labels.max()) + 1
    return 0.5 * float((distribution(labels, None, k) - distribution(labels, chosen, k)).abs().sum())


def degree_buckets(degrees: torch.Tensor) -> torch.Tensor:
    """``floor(log2(1 + degree))``: bucket 0 = isolated, 1 = degree 1-2, ..."""
    return torch.floor(torch.log2(1.0 + degrees.double())).long()


def coverage(
    seeds: torch.Tensor,
    triples1: torch.Tensor,
    triples2: torch.Tensor,
    degrees1: torch.Tensor,
    degrees2: torch.Tensor,
) -> dict[str, float]:
    """Entity / edge coverage, the paper's Eq. 11 and the degree-bucket TV distance.

    ``triples`` are local ``[T, 3]`` (head, relation, tail); ``degrees`` local ``[N]``.
    """
    out: dict[str, float] = {}
    n1, n2 = degrees1.numel(), degrees2.numel()
    e1, e2 = seeds[:, 0].unique(), seeds[:, 1].unique()
    out["entity_coverage"] = (e1.numel() + e2.numel()) / max(n1 + n2, 1)
    touched = 0
    aggregated = scattered = 0
    for ents, triples, deg in ((e1, triples1, degrees1), (e2, triples2, degrees2)):
        touched += int((torch.isin(triples[:, 0], ents) | torch.isin(triples[:, 2], ents)).sum())
        median = float(deg.double().quantile(0.5)) if deg.numel() else 0.0
        dense = deg[ents].double() >= median
        aggregated += int(dense.sum())
        scattered += int((~dense).sum())
    edges = triples1.shape[0] + triples2.shape[0]
    out["edge_coverage"] = touched / max(edges, 1)
    g_n = max(n1 + n2, 1)
    out["graph_coverage_eq11"] = aggregated / (2 * g_n) + touched / (2 * max(edges, 1)) + scattered / g_n
    buckets = degree_buckets(torch.cat([degrees1, degrees2]))
    out["degree_tv"] = total_variation(buckets, torch.cat([e1, e2 + n1]))
    return out


def cluster_tv(seeds: torch.Tensor, labels1: torch.Tensor, labels2: torch.Tensor) -> float:
    """TV distance between the seed entities' cluster distribution and all entities'."""
    n1 = labels1.numel()
    chosen = torch.cat([seeds[:, 0].unique(), seeds[:, 1].unique() + n1])
    return total_variation(torch.cat([labels1, labels2]), chosen)


def seed_quality(
    seeds: torch.Tensor,
    gold: torch.Tensor | None,
    triples1: torch.Tensor,
    triples2: torch.Tensor,
    degrees1: torch.Tensor,
    degrees2: torch.Tensor,
    labels1: torch.Tensor | None = None,
    labels2: torch.Tensor | None = None,
) -> dict[str, float]:
    """All measures for one seed set (precision/recall only when gold is given)."""
    out: dict[str, float] = {"count": float(seeds.shape[0])}
    if gold is not None:
        out["precision"], out["recall"] = precision_recall(seeds, gold)
    out.update(coverage(seeds, triples1, triples2, degrees1, degrees2))
    if labels1 is not None and labels2 is not None:
        out["cluster_tv"] = cluster_tv(seeds, labels1, labels2)
    return out
