"""Helpers shared by the aligner tests."""
from __future__ import annotations

from psqe.align import embed, evaluate, fit


def hits1(model, data, split) -> float:
    """Test H@1 of ``model`` on ``split`` (eval mode, no gradients)."""
    return evaluate(embed(model, data), split, data)["hits@1"]


def fit_recording_nodes(model, data, pairs, config, rows: bool):
    """Train ``model`` with ``rows_per_batch = rows``; returns the ``nodes`` each forward pass got
    (``None``: every entity), training and evaluation passes alike."""
    model.rows_per_batch = rows
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get("nodes")), with_kwargs=True)
    fit(model, data, pairs, config, progress=False)
    return seen
