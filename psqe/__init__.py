"""psqe: pseudo seeds for unsupervised multimodal entity alignment (PSQE, KDD 2026).

- :mod:`psqe.ops`: the compiled core (fused top-k, greedy one-to-one, MIC);
- :func:`load_dataset`: DBP15K / DWY15K / OpenEA folders -> :class:`psqe.data.KGPair`;
- :mod:`psqe.features`: text, image, surface and simulated-visual features;
- :func:`generate_seeds`: PSQE's three stages (:class:`PSQEConfig` holds every default).
"""
from __future__ import annotations

from . import ops
from .data import load_dataset
from .matching import GreedyResult, greedy_one_to_one
from .seeds.config import PSQEConfig
from .seeds.pipeline import SeedResult, baseline_seeds, generate_seeds

__version__ = "0.1.0"
__all__ = [
    "ops", "load_dataset", "greedy_one_to_one", "GreedyResult",
    "PSQEConfig", "SeedResult", "generate_seeds", "baseline_seeds", "__version__",
]
