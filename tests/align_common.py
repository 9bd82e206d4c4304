"""Helpers shared by the aligner tests."""
from __future__ import annotations

import torch

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


def assert_rows_match_full_pass(model, data, **tolerance) -> None:
    """``model(data, nodes)`` gives the full pass's keys and rows of ``nodes`` (plus ``"rows"`` = ``nodes``
    where the model returns it), and its loss on pairs given as positions in ``nodes`` is the full pass's
    loss on the same entity pairs. ``tolerance``: ``rtol`` / ``atol`` of the comparisons (default: torch's)."""
    nodes = torch.tensor([3, 17, 150, 201, 399], device=data.device)
    full, part = model(data), model(data, nodes=nodes)
    assert set(part) - {"rows"} == set(full) and torch.equal(part.get("rows", nodes), nodes)
    for key in full:
        torch.testing.assert_close(part[key], full[key][nodes], **tolerance)
    pairs = torch.tensor([[3, 201], [17, 399]], device=data.device)
    local = torch.tensor([[0, 3], [1, 4]], device=data.device)
    torch.testing.assert_close(model.loss(part, local), model.loss(full, pairs), **tolerance)
