"""Greedy one-to-one seeds: EVA's unsupervised visual pivoting and its multimodal variant.

- Type I: greedy one-to-one on one modality's cosine similarity (EVA's UVP).
- Type II: the same on the fused multimodal vectors.

Seeds are ``[S, 2]`` local indices ``(kg1 entity, kg2 entity)`` in selection order.

>>> import torch
>>> from psqe.seeds.uvp import greedy_seeds
>>> x = torch.eye(4)
>>> greedy_seeds(x, x[[2, 0, 3, 1]], 4).tolist()
[[0, 1], [1, 3], [2, 0], [3, 2]]
"""
from __future__ import annotations

import torch
from torch.nn.functional import normalize

from ..matching import greedy_one_to_one
from .fusion import fuse


def greedy_seeds(x1: torch.Tensor, x2: torch.Tensor, n: int, k: int = 16) -> torch.Tensor:
    """``n`` greedy one-to-one pairs by cosine similarity of rows of ``x1`` and ``x2``."""
    if n < 0:
        raise ValueError(f"seed budget must be >= 0, got {n}")
    res = greedy_one_to_one(normalize(x1.float(), dim=1), normalize(x2.float(), dim=1), limit=n, k=k)
    return torch.stack([res.rows, res.cols], dim=1)


def type_one(tables1: dict[str, torch.Tensor], tables2: dict[str, torch.Tensor], n: int, modality: str = "visual") -> torch.Tensor:
    """Type I seeds: greedy on one modality (EVA's UVP uses the visual one)."""
    if modality not in tables1 or modality not in tables2:
        raise ValueError(f"Type I seeds need modality {modality!r} in both graphs; have {sorted(tables1)} and {sorted(tables2)}")
    return greedy_seeds(tables1[modality], tables2[modality], n)


def type_two(tables1: dict[str, torch.Tensor], tables2: dict[str, torch.Tensor], weights: dict[str, float], n: int) -> torch.Tensor:
    """Type II seeds: greedy on the fused multimodal vectors."""
    return greedy_seeds(fuse(tables1, weights), fuse(tables2, weights), n)
