"""MIC, multimodal information correction (paper §4.2.2).

Over a seed list ``(l_k, r_k)``, ``M = sim(l, r)`` on the *original* features
as the weighted sum of per-modality cosines; seed ``k`` is dropped when
``M[k, k]`` is not the maximum of row ``k`` (the script's check; the column
check is an option). Runs on the compiled, tiled :func:`psqe.ops.mic_keep`.

>>> import torch
>>> from psqe.seeds.mic import mic_filter
>>> t = {"visual": torch.eye(3)}
>>> seeds = torch.tensor([[0, 0], [1, 2], [2, 1]])
>>> mic_filter(seeds, t, t, {"visual": 1.0}).tolist()
[True, False, False]
"""
from __future__ import annotations

import torch

from .. import ops
from .fusion import weighted_pair_tables


def mic_filter(
    seeds: torch.Tensor,
    tables1: dict[str, torch.Tensor],
    tables2: dict[str, torch.Tensor],
    weights: dict[str, float],
    both_directions: bool = False,
) -> torch.Tensor:
    """Keep-mask (bool ``[S]``) of the seeds that pass MIC."""
    if seeds.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    left, right = weighted_pair_tables(
        {m: t[seeds[:, 0]] for m, t in tables1.items() if m in weights},
        {m: t[seeds[:, 1]] for m, t in tables2.items() if m in weights},
        weights,
    )
    return ops.mic_keep(left, right, both_directions)
