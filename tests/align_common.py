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


def assert_rows_match_full_pass(model, data) -> None:
    """``model(data, nodes)`` gives the full pass's keys and rows of ``nodes``, and its loss on pairs given as
    positions in ``nodes`` is the full pass's loss on the same entity pairs."""
    nodes = torch.tensor([3, 17, 150, 201, 399])
    full, part = model(data), model(data, nodes=nodes)
    assert set(part) == set(full)
    for key in full:
        torch.testing.assert_close(part[key], full[key][nodes])
    pairs, local = torch.tensor([[3, 201], [17, 399]]), torch.tensor([[0, 3], [1, 4]])
    torch.testing.assert_close(model.loss(part, local), model.loss(full, pairs))
