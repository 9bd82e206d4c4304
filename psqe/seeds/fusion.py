"""Multimodal fusion of per-modality feature tables.

Two ways of combining modalities appear in PSQE, and both are kept exact:

- :func:`fuse` concatenates L2-normalised modality tables scaled by their
  weights, ``x = [0.8 n(h_v), 0.1 n(h_a), 0.1 n(h_r)]`` (Stage I, global
  sampling, Type II). The *cosine* of two such vectors weighs modality ``m`` by
  ``w_m^2`` when all are present.
- :func:`weighted_pair_tables` gives ``left = [w_m n(h_m)]`` and
  ``right = [n(h_m)]`` so that ``<left, right> = sum_m w_m cos_m``: the
  weighted sum of per-modality cosines used by MIC and Stage III.

>>> import torch
>>> from psqe.seeds.fusion import fuse, active_weights
>>> w = active_weights({"visual": 0.8, "attribute": 0.1, "relation": 0.1}, {"visual", "relation"})
>>> {k: round(v, 4) for k, v in w.items()}
{'visual': 0.8889, 'relation': 0.1111}
>>> fuse({"visual": torch.ones(2, 3), "relation": torch.ones(2, 2)}, w).shape
torch.Size([2, 5])
"""
from __future__ import annotations

import logging

import torch
from torch.nn.functional import normalize

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS: dict[str, float] = {"visual": 0.8, "attribute": 0.1, "relation": 0.1}


def active_weights(weights: dict[str, float], available: set[str]) -> dict[str, float]:
    """Weights of the modalities that are available, renormalised to sum to 1.

    Raises ValueError when none of the weighted modalities is available.
    """
    for name, w in weights.items():
        if w < 0:
            raise ValueError(f"modality weight {name!r} must be >= 0, got {w}")
    kept = {m: w for m, w in weights.items() if m in available and w > 0}
    if not kept:
        raise ValueError(f"none of the weighted modalities {sorted(weights)} is available (have {sorted(available)})")
    total = sum(kept.values())
    if len(kept) < sum(1 for w in weights.values() if w > 0):
        missing = sorted(m for m, w in weights.items() if w > 0 and m not in kept)
        log.info("modalities %s are missing; weights renormalised over %s", missing, sorted(kept))
    return {m: w / total for m, w in kept.items()}


def fuse(tables: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``cat([w_m * normalize(tables[m])])`` over the weighted modalities, in weight order."""
    return torch.cat([w * normalize(tables[m].float(), dim=1) for m, w in weights.items()], dim=1)


def weighted_pair_tables(
    tables1: dict[str, torch.Tensor], tables2: dict[str, torch.Tensor], weights: dict[str, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables whose inner product is the weighted sum of per-modality cosines."""
    left = torch.cat([w * normalize(tables1[m].float(), dim=1) for m, w in weights.items()], dim=1)
    right = torch.cat([normalize(tables2[m].float(), dim=1) for m in weights], dim=1)
    return left, right
