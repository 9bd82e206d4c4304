"""Knowledge graphs, their loaders and synthetic pairs."""
from __future__ import annotations

from .common import DatasetError, LoadedPair
from .kg import KGPair, KnowledgeGraph
from .layout import load_dataset

__all__ = ["DatasetError", "KGPair", "KnowledgeGraph", "LoadedPair", "load_dataset"]
