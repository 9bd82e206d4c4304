"""Label-free signals of alignment quality: mutual nearest neighbours among the entities no pair uses.

Training on pseudo-seeds has no gold links to select a model with. What it
does have is the rest of the two graphs: an aligner that has learnt a good
joint space makes many entities that no seed touches each other's nearest
neighbour across the graphs, at high similarity. :func:`label_free_scores`
counts them (fused top-1 both ways, no ``n x m`` matrix); iterative
learning proposes the same pairs (:class:`psqe.align.MutualNeighbours`).

>>> import torch
>>> joint = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])  # kg1: 0, 1; kg2: 2, 3
>>> scores = label_free_scores(joint, n1=2)
>>> scores["mnn"], round(scores["mnn_rate"], 2), round(scores["mnn_cos"], 3)
(2, 1.0, 0.995)
>>> label_free_scores(joint, 2, torch.tensor([[0, 2]]))["mnn"]  # 0 and 2 are seeds: only 1-3 is free
1
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops

#: The keys of :func:`label_free_scores`.
LABEL_FREE_KEYS = ("mnn", "mnn_rate", "mnn_cos")


def free_entities(num_entities: int, n1: int, *pairs: Tensor | None, device=None) -> tuple[Tensor, Tensor]:
    """The kg1 and kg2 pair indices (kg2 offset by ``n1``) in none of ``pairs`` (``[S, 2]`` pair-index tables)."""
    used = torch.zeros(num_entities, dtype=torch.bool, device=device)
    for p in pairs:
        if p is not None and p.numel():
            used[p.flatten().to(used.device)] = True
    return (~used[:n1]).nonzero().flatten(), (~used[n1:]).nonzero().flatten() + n1


def mutual_nearest(joint: Tensor, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs of ``left`` x ``right`` rows of ``joint`` that are each other's nearest (cosine) neighbour.

    Returns their pair indices ``(l, r)`` and cosines; empty when either side is.
    """
    if not (left.numel() and right.numel()):
        empty = torch.zeros(0, dtype=torch.long, device=joint.device)
        return empty, empty, torch.zeros(0, device=joint.device)
    j = F.normalize(joint.float(), dim=1)
    sim, a, _, b = ops.topk_similarity_both(j[left], j[right], 1, one_score=False)  # best partner each way
    a, b, sim = a[:, 0], b[:, 0], sim[:, 0]
    mutual = b[a] == torch.arange(left.numel(), device=joint.device)
    return left[mutual], right[a[mutual]], sim[mutual]


@torch.no_grad()
def label_free_scores(joint: Tensor, n1: int, *used: Tensor | None, added: Tensor | None = None) -> dict[str, float]:
    """Mutual nearest neighbours among the entities in none of ``used`` (training, validation pairs).

    ``mnn``: how many; ``mnn_rate``: that over the free kg1 entities;
    ``mnn_cos``: their mean cosine (0 when there are none). Higher is better
    for each, all else equal. Which of them tracks test accuracy over a run
    is measured by ``bench/selection_study.py`` (bench/results/README.md,
    stops 19 and 20: ``mnn`` did, held-out seeds did not, ``mnn_cos`` ran against it
    on ja_en), so only ``mnn`` is a ``select_metric`` of :class:`psqe.align.TrainConfig`.

    ``added``: ``[A, 2]`` pairs that training itself added (iterative learning,
    PCMEA's pseudo-links; their entities stay free); with it, ``mnn_added``
    counts the mutual neighbours that are such pairs, a diagnostic of how
    much of ``mnn`` a model's own pairs make. Pairs added at the check's own
    epoch were chosen as mutual neighbours of (nearly) the same embedding,
    so they count almost by construction.

    >>> joint = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    >>> label_free_scores(joint, 2, added=torch.tensor([[1, 3], [0, 3]]))["mnn_added"]  # 1-3 is; 0-3 is no mnn pair
    1
    """
    left, right = free_entities(joint.shape[0], n1, *used, device=joint.device)
    l, r, cos = mutual_nearest(joint, left, right)
    count = int(cos.numel())
    out = {"mnn": count, "mnn_rate": count / max(left.numel(), 1), "mnn_cos": float(cos.mean()) if count else 0.0}
    if added is not None:
        out["mnn_added"] = count_among(l, r, added, joint.shape[0])
    return out


def count_among(left: Tensor, right: Tensor, pairs: Tensor, width: int) -> int:
    """How many of the pairs ``(left[i], right[i])`` are rows of ``pairs`` (``[A, 2]``; ids below ``width``).

    >>> count_among(torch.tensor([0, 1]), torch.tensor([3, 2]), torch.tensor([[1, 2], [0, 2]]), 4)
    1
    """
    pairs = pairs.to(left.device).long()
    return int(torch.isin(left * width + right, pairs[:, 0] * width + pairs[:, 1]).sum())


__all__ = ["LABEL_FREE_KEYS", "count_among", "free_entities", "label_free_scores", "mutual_nearest"]
