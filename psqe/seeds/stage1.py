"""PSQE Stage I: multimodal fusion and cluster sampling.

K-means over the fused vectors of *both* graphs together; each cluster
``C_j`` gets ``m_j = floor(n * |C_j| / (|E1| + |E2|))`` seeds, chosen by greedy
one-to-one selection on the cosine of its kg1 and kg2 members. K-means
partitions the entities, so no entity can be taken by two clusters.

>>> import torch
>>> from psqe.seeds.stage1 import stage1
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(300, 8, generator=g)
>>> res = stage1(x, x + 0.01 * torch.randn(300, 8, generator=g), budget=60, n_clusters=3)
>>> res.seeds.shape[1], bool((res.seeds[:, 0] == res.seeds[:, 1]).float().mean() > 0.9)
(2, True)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .kmeans import kmeans
from .uvp import greedy_seeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage1Result:
    """Seeds ``[S, 2]`` (kg1 local, kg2 local), cluster labels per side and budgets per cluster."""

    seeds: torch.Tensor
    labels1: torch.Tensor
    labels2: torch.Tensor
    budgets: list[int]


def stage1(
    fused1: torch.Tensor,
    fused2: torch.Tensor,
    budget: int,
    n_clusters: int = 5,
    seed: int = 0,
    kmeans_backend: str = "torch",
    sim1: torch.Tensor | None = None,
    sim2: torch.Tensor | None = None,
) -> Stage1Result:
    """Stage I seeds.

    Args:
        fused1, fused2: fused vectors of kg1 and kg2 (clustered together).
        budget: ``n``, the total seed budget.
        n_clusters: ``K`` (paper: searched in 2..5; the script uses 5).
        sim1, sim2: optional other tables for the in-cluster similarity (the
            script's option: the raw ``[h_r, h_a]``); default the fused vectors.
    """
    n1, n2 = fused1.shape[0], fused2.shape[0]
    if n1 == 0 or n2 == 0:
        raise ValueError(f"stage1: both graphs need entities, got {n1} and {n2}")
    if fused1.shape[1] != fused2.shape[1]:
        raise ValueError(f"stage1: fused vectors differ in size between the graphs: {fused1.shape[1]} vs {fused2.shape[1]}")
    if not 0 <= budget <= min(n1, n2):
        raise ValueError(f"stage1: budget must be in [0, {min(n1, n2)}] (the smaller graph), got {budget}")
    labels = kmeans(torch.cat([fused1, fused2]), n_clusters, seed=seed, backend=kmeans_backend)
    labels1, labels2 = labels[:n1], labels[n1:]
    s1 = fused1 if sim1 is None else sim1
    s2 = fused2 if sim2 is None else sim2
    parts, budgets = [], []
    for j in range(n_clusters):
        rows = (labels1 == j).nonzero().squeeze(1)
        cols = (labels2 == j).nonzero().squeeze(1)
        m_j = (budget * (rows.numel() + cols.numel())) // (n1 + n2)
        m_j = min(m_j, rows.numel(), cols.numel())
        budgets.append(m_j)
        if m_j == 0:
            continue
        local = greedy_seeds(s1[rows], s2[cols], m_j)
        parts.append(torch.stack([rows[local[:, 0]], cols[local[:, 1]]], dim=1))
    seeds = torch.cat(parts) if parts else torch.empty(0, 2, dtype=torch.long)
    log.info("stage I: %d clusters, budgets %s, %d seeds", n_clusters, budgets, seeds.shape[0])
    return Stage1Result(seeds, labels1, labels2, budgets)
