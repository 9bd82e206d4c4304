"""psqe: pseudo seeds for unsupervised multimodal entity alignment (PSQE, KDD 2026).

The compiled core lives in :mod:`psqe.ops`; :func:`psqe.matching.greedy_one_to_one`
builds one-to-one seeds between two embedding tables on top of it.
"""
from __future__ import annotations

from . import ops
from .matching import GreedyResult, greedy_one_to_one

__version__ = "0.1.0"
__all__ = ["ops", "greedy_one_to_one", "GreedyResult", "__version__"]
