"""Knowledge graphs, their loaders and synthetic pairs."""
from __future__ import annotations

from .common import DatasetError, LoadedPair
from .kg import KGPair, KnowledgeGraph
from .layout import load_dataset
from . import synthetic  # noqa: E402  (psqe.data.synthetic.make_pair)

__all__ = ["DatasetError", "KGPair", "KnowledgeGraph", "LoadedPair", "load_dataset"]
