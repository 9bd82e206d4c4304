"""Helpers shared by the aligner tests."""
from __future__ import annotations

from psqe.align import embed, evaluate


def hits1(model, data, split) -> float:
    """Test H@1 of ``model`` on ``split`` (eval mode, no gradients)."""
    return evaluate(embed(model, data), split, data)["hits@1"]
