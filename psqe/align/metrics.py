"""Alignment metrics (Hits@k, MRR with CSLS) and the two evaluation protocols.

**Ranking.** Query ``i`` (a row of ``left``) is scored against every
candidate (a row of ``right``) on L2-normalised embeddings by CSLS::

    csls(i, j) = 2 cos(i, j) - r_left(i) - r_right(j)

with ``r_left(i)`` the mean cosine of query ``i`` to its ``k`` nearest
candidates and ``r_right(j)`` that of candidate ``j`` to its ``k`` nearest
queries (``csls_k=0``: plain cosine). Both means come from the fused top-k
(:func:`psqe.ops.topk_similarity`); the ranks are then counted one block of
query rows at a time, so memory is ``O(block * m)``, never ``n x m``.
:func:`ranks` gives ``1 + #{candidates with a strictly higher score than the
true match}``, the best rank its ties allow. The metrics (:func:`rank_metrics`,
:func:`evaluate`) average over the orders of the ``t`` other candidates that
score exactly like the true match, as a random tie-break would in expectation:
with ``g`` strictly higher, the rank is uniform on ``g+1 .. g+1+t``, so
``hits@k`` counts ``clip((k - g) / (t + 1), 0, 1)`` and MRR the mean of
``1/rank`` over that range. So embeddings that collapse to one vector score
chance, not 1.0 (the EVA/MEAformer code's sort places ties arbitrarily). The
true score is read from the same block product as the others, so rounding
cannot rank a match below itself.
The EVA/MCLEA/MEAformer code ranks by the squared L2 distance of the
normalised vectors with CSLS applied to ``1 - distance = 2 cos - 1``: an
increasing affine map of the cosine, hence the same ranking as here.

**Protocols** (PSQE-SPEC.md, last section):

- :func:`legacy_split` — the community's: the gold links shuffled as
  ``np.random.seed(42); np.random.shuffle(links)`` (the EVA and MEAformer
  code, with no earlier draw from numpy's global generator, in the order of
  the ``ill_ent_ids`` file), ``train = links[:int(L * 0.3)]`` (4500 of 15000;
  replaced by the seeds in the unsupervised setting), ``test`` = the rest,
  candidates = the test pairs' right entities.
- :func:`clean_split` — test = every gold link neither of whose entities is
  used by a seed (nor by the training pairs given as ``exclude``: other seed
  sets compared on the same test, the community's 30% gold), every kg2
  (resp. kg1) entity a candidate; a validation split may be held out of the
  *seeds* for model selection (``val_ratio``; 0: none, train to the end).
  :func:`pairs_digest` names a test set, so results on different test sets
  are never compared by mistake.

MEAformer's code also evaluates the test set every epoch and keeps the best
weights. :mod:`psqe.reproduce` does not: every aligner's legacy number there
is its last epoch's, since choosing the epoch on the test set is what the
clean protocol rules out, so a MEAformer legacy number can sit slightly
below what that code would print. ``fit(..., val_pairs=split.test)`` with
``TrainConfig(eval_every=1, val_candidates="pairs")`` is that code's
procedure, for whoever wants it. A clean number with model selection uses
``val_pairs=split.val`` (candidates: all of kg2) and never sees the test set.
CSLS's candidate-side neighbourhood is taken over the queries that are
ranked (the test pairs' left entities, as the authors' code does).

>>> import torch
>>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
>>> rank_metrics(x, x)  # identical embeddings: every match ranked first
{'hits@1': 1.0, 'hits@10': 1.0, 'mrr': 1.0}
>>> s = legacy_split(torch.arange(30).view(15, 2))
>>> s.train.shape[0], s.test.shape[0], s.candidates
(4, 11, 'test')
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops

PROTOCOLS = ("legacy", "clean")


@torch.no_grad()
def ranks(left: Tensor, right: Tensor, csls_k: int = 3, truth: Tensor | None = None, block: int = 1024) -> Tensor:
    """Rank (1 = best) of each query's true candidate, ties in its favour (:func:`rank_counts`'s
    ``1 + higher``; the metrics average over ties instead: see the module docstring).

    >>> ranks(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 0, truth=torch.tensor([1])).tolist()
    [1]
    """
    return 1 + rank_counts(left, right, csls_k, truth, block)[0]


@torch.no_grad()
def rank_counts(left: Tensor, right: Tensor, csls_k: int = 3, truth: Tensor | None = None,
                block: int = 1024) -> tuple[Tensor, Tensor]:
    """For each query, how many candidates score strictly higher than its true one, and how many others
    score exactly the same (``(higher, tied)``); see the module docstring.

    Args:
        left: ``[n, d]`` queries; right: ``[m, d]`` candidates (any float dtype;
            float64 stays float64, others are computed in float32).
        csls_k: CSLS neighbourhood size (0: cosine), at most ``psqe.ops.MAX_TOPK``.
        truth: int64 ``[n]``: the candidate row matching each query; default
            ``arange(n)`` (then ``m`` must equal ``n``).
        block: query rows per tile.

    Returns:
        two int64 ``[n]`` tensors on ``left``'s device.
    """
    _check_table(left, "left")
    _check_table(right, "right")
    n, m = left.size(0), right.size(0)
    if left.size(1) != right.size(1) or left.device != right.device:
        raise ValueError(f"ranks: left {tuple(left.shape)} and right {tuple(right.shape)} need one width and one device")
    if truth is None:
        if n != m:
            raise ValueError(f"ranks: row i of left matches row i of right, so they need one row count; got {n} and {m}")
        truth = torch.arange(n, device=left.device)
    else:
        truth = torch.as_tensor(truth, device=left.device).long()
        if truth.shape != (n,) or bool((truth < 0).any()) or bool((truth >= m).any()):
            raise ValueError(f"ranks: truth must be [{n}] indices into the {m} candidates")
    if not 0 <= csls_k <= ops.MAX_TOPK or int(csls_k) != csls_k:
        raise ValueError(f"ranks: csls_k must be an integer in [0, {ops.MAX_TOPK}], got {csls_k}")
    if block < 1:
        raise ValueError(f"ranks: block must be >= 1, got {block}")
    dtype = torch.float64 if left.dtype == torch.float64 else torch.float32
    q, c = F.normalize(left.detach().to(dtype), dim=1), F.normalize(right.detach().to(dtype), dim=1)
    if csls_k:
        top_q, _, top_c, _ = ops.topk_similarity_both(q, c, int(csls_k), one_score=False)  # both neighbourhoods
        r_q, r_c = top_q.to(dtype).mean(1), top_c.to(dtype).mean(1)
    higher = torch.empty(n, dtype=torch.long, device=left.device)
    tied = torch.empty(n, dtype=torch.long, device=left.device)
    for s in range(0, n, block):
        score = q[s:s + block] @ c.t()
        if csls_k:  # in place: one block of scores in memory
            score.mul_(2).sub_(r_q[s:s + block, None]).sub_(r_c[None, :])
        true = score.gather(1, truth[s:s + block, None])
        higher[s:s + block] = torch.count_nonzero(score > true, dim=1)
        tied[s:s + block] = torch.count_nonzero(score == true, dim=1) - 1  # not the true candidate itself
    return higher, tied


def summarize(rank: Tensor, hits: Sequence[int] = (1, 10), tied: Tensor | None = None) -> dict[str, float]:
    """``{"hits@k": ..., "mrr": ...}`` of a rank vector (1 = best); with ``tied`` (other candidates scoring
    like the true one, :func:`rank_counts`), averaged over the orders of those ties.

    >>> summarize(torch.tensor([1, 1]), hits=(1,), tied=torch.tensor([0, 1]))  # the second: rank 1 or 2
    {'hits@1': 0.75, 'mrr': 0.875}
    """
    g = rank.double() - 1
    t = torch.zeros_like(g) if tied is None else tied.to(g)
    out = {f"hits@{k}": float(((k - g) / (t + 1)).clamp(0, 1).mean()) for k in hits}
    # mean of 1/r for r = g+1 .. g+1+t: a difference of harmonic numbers, H(n) = digamma(n + 1) + euler_gamma
    spread = (torch.special.digamma(g + t + 2) - torch.special.digamma(g + 1)) / (t + 1)
    out["mrr"] = float(torch.where(t == 0, 1.0 / (g + 1), spread).mean())
    return out


def rank_metrics(left: Tensor, right: Tensor, csls_k: int = 3, direction: str = "l2r", *, truth: Tensor | None = None,
                 hits: Sequence[int] = (1, 10), block: int = 1024) -> dict[str, float]:
    """Hits@k and MRR of an alignment: row ``i`` of ``left`` truly matches row ``i`` of ``right``.

    Every row of ``right`` is a candidate for every row of ``left``
    (``direction="l2r"``, the number the community reports);
    ``direction="r2l"`` ranks the rows of ``left`` for each row of ``right``.
    ``truth`` (l2r only) gives the matching row of ``right`` per query when
    ``right`` holds more candidates than ``left`` has rows. See the module
    docstring for CSLS (``csls_k``), ties (averaged over their orders) and memory.

    >>> import torch
    >>> left = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> right = torch.tensor([[0.0, 1.0], [1.0, 0.1], [1.0, 0.9]])
    >>> rank_metrics(left, right, csls_k=0)
    {'hits@1': 0.3333333333333333, 'hits@10': 1.0, 'mrr': 0.5555555555555555}
    """
    if direction not in ("l2r", "r2l"):
        raise ValueError(f"rank_metrics: direction must be 'l2r' or 'r2l', got {direction!r}")
    if direction == "r2l":
        if truth is not None:
            raise ValueError("rank_metrics: truth is only supported for direction='l2r'")
        left, right = right, left
    higher, tied = rank_counts(left, right, csls_k, truth, block)
    return summarize(1 + higher, hits, tied)


def _check_table(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float tensor, got {getattr(x, 'shape', type(x))}")
    if x.size(0) == 0 or x.size(1) == 0:
        raise ValueError(f"{name}: empty table {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: holds NaN or inf")


@dataclass(frozen=True)
class Split:
    """Training, validation and test pairs of one protocol, all ``[*, 2]`` in one id space.

    ``candidates``: ``"test"`` (legacy: the test pairs' right entities) or
    ``"all"`` (clean: every entity of the other graph).
    """

    protocol: str
    train: Tensor
    test: Tensor
    val: Tensor
    candidates: str

    def to_pair_index(self, data) -> Split:
        """The same split with global ids mapped by :meth:`AlignData.pairs_from_global`."""
        return replace(self, **{k: data.pairs_from_global(getattr(self, k), what=f"{self.protocol} split {k}")
                                if getattr(self, k).numel() else getattr(self, k).to(data.device)
                                for k in ("train", "test", "val")})


def _pairs(x, what: str) -> Tensor:
    p = torch.as_tensor(x)
    if p.dim() != 2 or p.shape[1] != 2 or p.is_floating_point() or p.dtype == torch.bool:
        raise ValueError(f"{what}: expected an integer [L, 2] table, got {tuple(p.shape)} {p.dtype}")
    if p.shape[0] == 0:
        raise ValueError(f"{what}: empty")
    return p.long().cpu()


def legacy_split(links, train_ratio: float = 0.3, seed: int = 42, seeds=None) -> Split:
    """The EVA/MCLEA/MEAformer split (module docstring); ``seeds`` replaces the training part.

    The permutation is ``np.random.RandomState(seed).permutation(L)``, the
    same one ``np.random.seed(seed); np.random.shuffle(links)`` applies.
    """
    links = _pairs(links, "legacy_split links")
    if not 0.0 <= train_ratio < 1.0:
        raise ValueError(f"legacy_split: train_ratio must be in [0, 1), got {train_ratio}")
    order = torch.from_numpy(np.random.RandomState(seed).permutation(links.shape[0]))
    shuffled = links[order]
    cut = int(links.shape[0] * train_ratio)  # the authors' int(len(ills) // 1 * rate)
    train = shuffled[:cut] if seeds is None else _pairs(seeds, "legacy_split seeds")
    return Split("legacy", train, shuffled[cut:], links.new_zeros(0, 2), "test")


def clean_split(links, seeds, val_ratio: float = 0.1, seed: int = 0, exclude=()) -> Split:
    """Test = gold links with neither entity used by ``seeds`` or ``exclude``; ``val_ratio`` of the seeds held out.

    ``exclude``: more ``[*, 2]`` pair tables (a tensor or array, or a list of them) whose entities are kept
    out of the test set too. Scoring several seed sets on one test set needs
    every one of them here: each seed set's own exclusion would hand the set
    with more (and easier) seeds a smaller, harder test. The validation
    pairs are a seeded random subset (``RandomState(seed)``); training keeps
    the remaining seeds in their given order. ``val_ratio=0``: no validation.

    >>> links = torch.tensor([[0, 10], [1, 11], [2, 12], [3, 13]])
    >>> clean_split(links, links[:1], val_ratio=0).test.tolist()
    [[1, 11], [2, 12], [3, 13]]
    >>> clean_split(links, links[:1], val_ratio=0, exclude=torch.tensor([[2, 13]])).test.tolist()
    [[1, 11]]
    """
    links, seeds = _pairs(links, "clean_split links"), _pairs(seeds, "clean_split seeds")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"clean_split: val_ratio must be in [0, 1), got {val_ratio}")
    others = [exclude] if isinstance(exclude, (Tensor, np.ndarray)) else list(exclude)
    used = torch.cat([seeds, *(_pairs(o, f"clean_split exclude[{i}]") for i, o in enumerate(others))])
    keep = ~torch.isin(links[:, 0], used[:, 0]) & ~torch.isin(links[:, 1], used[:, 1])
    if not bool(keep.any()):
        raise ValueError("clean_split: every gold link touches an entity of the seeds or of exclude; "
                         "nothing is left to test")
    num_val = int(round(seeds.shape[0] * val_ratio))
    held = torch.zeros(seeds.shape[0], dtype=torch.bool)
    held[torch.from_numpy(np.random.RandomState(seed).permutation(seeds.shape[0])[:num_val])] = True
    return Split("clean", seeds[~held], links[keep], seeds[held], "all")


def pairs_digest(pairs) -> str:
    """A short name of a set of pairs (order-free): the first 16 hex digits of
    the SHA-256 of its rows, sorted, as int64.

    >>> pairs_digest(torch.tensor([[1, 5], [0, 4]])) == pairs_digest(torch.tensor([[0, 4], [1, 5]]))
    True
    """
    rows = _pairs(pairs, "pairs_digest pairs").numpy().astype("<i8")
    rows = np.ascontiguousarray(rows[np.lexsort((rows[:, 1], rows[:, 0]))])
    return hashlib.sha256(rows.tobytes()).hexdigest()[:16]


def evaluate(embeddings: Tensor | dict[str, Tensor], split: Split, data, part: str = "test", csls_k: int = 3,
             block: int = 1024) -> dict[str, float]:
    """Metrics of ``split``'s ``part`` (``"test"`` or ``"val"``) on pair-index embeddings.

    Args:
        embeddings: ``[N, d]`` joint embedding of every entity, or a model's
            output dict (its ``"joint"`` entry is used).
        split: a :class:`Split` in the pair index (see :meth:`Split.to_pair_index`).
        data: the :class:`~psqe.align.data.AlignData` (for kg1's size).

    Returns:
        ``hits@1``, ``hits@10``, ``mrr`` left-to-right (reported), the same
        right-to-left as ``r2l_*``, and ``queries`` / ``candidates`` counts.
    """
    emb = embeddings["joint"] if isinstance(embeddings, dict) else embeddings
    if emb.dim() != 2 or emb.size(0) != data.num_entities:
        raise ValueError(f"evaluate: embeddings must be [{data.num_entities}, d], got {tuple(emb.shape)}")
    if part not in ("test", "val"):
        raise ValueError(f"evaluate: part must be 'test' or 'val', got {part!r}")
    pairs = data.check_pairs(getattr(split, part), what=f"split.{part}").to(emb.device)
    if pairs.shape[0] == 0:
        raise ValueError(f"evaluate: split.{part} is empty")
    left, right = emb[pairs[:, 0]], emb[pairs[:, 1]]
    if split.candidates == "test":
        l2r = rank_metrics(left, right, csls_k, block=block)
        r2l = rank_metrics(left, right, csls_k, "r2l", block=block)
        num_candidates = pairs.shape[0]
    elif split.candidates == "all":
        n1 = data.n1
        l2r = rank_metrics(left, emb[n1:], csls_k, truth=pairs[:, 1] - n1, block=block)
        r2l = rank_metrics(right, emb[:n1], csls_k, truth=pairs[:, 0], block=block)
        num_candidates = data.n2
    else:
        raise ValueError(f"evaluate: unknown candidates {split.candidates!r} (expected 'test' or 'all')")
    return {**l2r, **{f"r2l_{k}": v for k, v in r2l.items()}, "queries": pairs.shape[0], "candidates": num_candidates}


__all__ = ["PROTOCOLS", "Split", "clean_split", "evaluate", "legacy_split", "pairs_digest", "rank_counts", "rank_metrics",
           "ranks", "summarize"]
