"""Knowledge graphs, their loaders and synthetic pairs."""
from __future__ import annotations

from .kg import KGPair, KnowledgeGraph

__all__ = ["KGPair", "KnowledgeGraph"]
