"""Greedy one-to-one matching between two embedding tables, on sparse candidates.

The authors' script builds the dense ``|E1| x |E2|`` similarity matrix for
every greedy selection. Here the candidates are each entity's ``k`` best
partners in both directions (:func:`psqe.ops.topk_similarity_both`, one pass
over the free rows x free columns), walked by
:func:`psqe.ops.greedy_match`. The result equals the dense greedy walk unless
some entity's candidate list "ran out"; that is detected and ``k`` doubled.

Why the check is sound: each list is fetched one longer than ``k``; the extra,
``(k+1)``-th score is a sentinel that every left-out partner scores at most
(after the snap below), and candidates that tie it are dropped too, so a list
holds *every* partner that ranks above the sentinel. The dense walk can then
first differ from the sparse one only at a pair ``(i, j)`` outside the
candidates, ranked below all of row ``i``'s candidates, reached while ``i`` is
still free — so by then all of ``i``'s candidate columns were taken by others
(likewise for ``j``), and that happened before the walk stopped.
:func:`greedy_one_to_one` flags every entity for which this may have happened
(conservatively) and widens ``k`` until none is left or the lists cover the
whole side.

Ties: PSQE-SPEC breaks them by ``(i, j)`` ascending. Identical vectors
(entities with the same name, in R1) have inner products that differ only by
rounding, and the rounding depends on the kernel and the thread count: walked
as they come, which of them are kept is noise (on DBP15K zh_en R1, where 7,153
kg1 entities have a kg2 partner of cosine 1, Type I's precision moved between
0.86 and 0.97 with it). So the candidate scores are first snapped to a grid of
``TIE_GRID`` (about 1e-6): scores that close are ties, and ties go by ``(i, j)``.
That order is the caller's: where the row order means something (DBP15K's
files list the linked entities first), shuffle it first, as the seed
generators do (``PSQEConfig.tie_order``).

>>> import torch
>>> from psqe.matching import greedy_one_to_one
>>> g = torch.Generator().manual_seed(0)
>>> a = torch.randn(200, 16, generator=g)
>>> b = a[torch.randperm(200, generator=g)] + 0.01 * torch.randn(200, 16, generator=g)
>>> res = greedy_one_to_one(a, b, limit=50, k=4)
>>> res.rows.shape, res.exact
(torch.Size([50]), True)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import ops

log = logging.getLogger(__name__)

#: Candidate scores are rounded to multiples of this before the walk, so that scores equal but for
#: rounding tie exactly and go by ``(i, j)`` (module docstring).
TIE_GRID = 2.0 ** -20


def snap(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` rounded to the nearest multiple of :data:`TIE_GRID` (exact in float32 for ``|score| < 2**3``).

    >>> snap(torch.tensor([1.0000001, 0.9999999, 0.5])).tolist()
    [1.0, 1.0, 0.5]
    """
    return torch.round(scores * (1 / TIE_GRID)) * TIE_GRID


@dataclass(frozen=True)
class GreedyResult:
    """Pairs kept by the greedy walk, in selection order.

    Attributes:
        rows: int64 ``[S]`` indices into ``a``.
        cols: int64 ``[S]`` indices into ``b``.
        scores: ``[S]`` similarity of each kept pair.
        k: candidates per entity in the final attempt.
        exhausted_rows / exhausted_cols: entities whose candidate list may have
            run out before the walk ended; both 0 means the result is exactly
            the dense greedy walk.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    scores: torch.Tensor
    k: int
    exhausted_rows: int
    exhausted_cols: int

    @property
    def exact(self) -> bool:
        return self.exhausted_rows == 0 and self.exhausted_cols == 0


def _free_mask(size: int, used: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    free = torch.ones(size, dtype=torch.bool, device=device)
    if used is not None and used.numel():
        free[used.to(device)] = False
    return free


def _trim(values: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which fetched candidates a list keeps, and its sentinel (None: the list holds every partner).

    ``values`` are ``[owners, w]`` snapped scores, sorted descending, of the ``w = min(k + 1, total)``
    best partners. Unless that is all ``total`` of them, the last is the sentinel: the snap can make a
    left-out partner tie it, so everything that ties it goes too and the kept candidates are exactly the
    partners that rank above it (module docstring).
    """
    if values.shape[1] >= total or values.shape[0] == 0:
        return torch.ones_like(values, dtype=torch.bool), None
    sentinel = values[:, -1]
    return values > sentinel.unsqueeze(1), sentinel


def _flat(vr, ir, keep_r, free_r, vc, ic, keep_c, free_c) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept candidates of both directions as flat ``(scores, rows, cols)`` for :func:`psqe.ops.greedy_match`."""
    scores = torch.cat([vr[keep_r], vc[keep_c]])
    rows = torch.cat([free_r.unsqueeze(1).expand_as(ir)[keep_r], ic[keep_c]])
    cols = torch.cat([ir[keep_r], free_c.unsqueeze(1).expand_as(ic)[keep_c]])
    return scores, rows, cols


def _at_risk(
    lists: torch.Tensor,
    keep: torch.Tensor,
    sentinel: torch.Tensor | None,
    owners: torch.Tensor,
    partner_of_owner: torch.Tensor,
    other_taken: torch.Tensor,
    stop: float | None,
) -> int:
    """How many owners' candidate lists may have run out before the walk stopped."""
    if sentinel is None:
        return 0
    # Matched to one of its own candidates: a free candidate existed until then.
    own_hit = ((lists == partner_of_owner[owners].unsqueeze(1)) & keep).any(dim=1)
    all_taken = (other_taken[lists] | ~keep).all(dim=1)
    risk = ~own_hit & all_taken
    if stop is not None:
        # A left-out partner scores at most the sentinel: a list whose sentinel is below the score the walk
        # stopped at was never exhausted in time (at equal scores the (i, j) order may go either way).
        risk &= sentinel >= stop
    return int(risk.sum())


def greedy_one_to_one(
    a: torch.Tensor,
    b: torch.Tensor,
    limit: int | None = None,
    k: int = 16,
    used_rows: torch.Tensor | None = None,
    used_cols: torch.Tensor | None = None,
    widen: bool = True,
) -> GreedyResult:
    """Greedy one-to-one pairs between rows of ``a`` and rows of ``b`` by ``a @ b.T``.

    Args:
        a: ``[n, d]`` features of the first side (normalise them for cosine).
        b: ``[m, d]`` features of the second side.
        limit: number of pairs to keep (None: until no free pair is left).
        k: initial candidates per entity and direction.
        used_rows, used_cols: int64 indices already taken (never matched).
        widen: double ``k`` (up to ``psqe.ops.MAX_TOPK``) while a list ran out.

    Returns:
        A :class:`GreedyResult`; ``result.exact`` tells whether it is provably
        the dense greedy walk (a warning is logged when it is not).
    """
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"greedy_one_to_one: a and b must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if k < 1:
        raise ValueError(f"greedy_one_to_one: k must be >= 1, got {k}")
    n, m, device = a.shape[0], b.shape[0], a.device
    row_free = _free_mask(n, used_rows, device)
    col_free = _free_mask(m, used_cols, device)
    free_r, free_c = row_free.nonzero().squeeze(1), col_free.nonzero().squeeze(1)
    n_free_r, n_free_c = free_r.numel(), free_c.numel()
    a_free, b_free = a[free_r], b[free_c]
    while True:
        fetch = min(k + 1, ops.MAX_TOPK)  # k candidates and the sentinel (see _trim)
        if n_free_r and n_free_c:  # one pass over the free rows x free columns gives both directions
            vr, ir, vc, ic = ops.topk_similarity_both(a_free, b_free, fetch)
            vr, vc = snap(vr), snap(vc)  # still sorted: rounding keeps the order, and makes near-ties ties
            ir, ic = free_c[ir], free_r[ic]  # sorted index maps: ties still go to the smaller index
        else:
            vr, vc = a.new_empty(n_free_r, 0, dtype=torch.float32), a.new_empty(n_free_c, 0, dtype=torch.float32)
            ir, ic = vr.long(), vc.long()
        keep_r, sentinel_r = _trim(vr, n_free_c)
        keep_c, sentinel_c = _trim(vc, n_free_r)
        scores, rows, cols = _flat(vr, ir, keep_r, free_r, vc, ic, keep_c, free_c)
        pos = ops.greedy_match(scores, rows, cols, limit)
        sel_r, sel_c, sel_s = rows[pos], cols[pos], scores[pos]

        row_partner = torch.full((n,), -1, dtype=torch.long, device=device)
        col_partner = torch.full((m,), -1, dtype=torch.long, device=device)
        row_partner[sel_r], col_partner[sel_c] = sel_c, sel_r
        row_taken, col_taken = ~row_free | (row_partner >= 0), ~col_free | (col_partner >= 0)
        stop = float(sel_s[-1]) if limit is not None and pos.numel() == limit and limit > 0 else None
        risk_r = _at_risk(ir, keep_r, sentinel_r, free_r, row_partner, col_taken, stop)
        risk_c = _at_risk(ic, keep_c, sentinel_c, free_c, col_partner, row_taken, stop)
        complete = sentinel_r is None and sentinel_c is None
        if (risk_r == 0 and risk_c == 0) or not widen or complete or k >= ops.MAX_TOPK:
            break
        log.debug("greedy_one_to_one: %d + %d candidate lists ran out at k=%d; widening", risk_r, risk_c, k)
        k = min(2 * k, ops.MAX_TOPK)
    if risk_r or risk_c:
        # Not provably the dense walk: walk every fetched candidate, those tying a sentinel too, so that an
        # entity whose partners all tie (a zero row, say) is not left unmatched for want of a candidate.
        every_r, every_c = torch.ones_like(keep_r), torch.ones_like(keep_c)
        scores, rows, cols = _flat(vr, ir, every_r, free_r, vc, ic, every_c, free_c)
        pos = ops.greedy_match(scores, rows, cols, limit)
        sel_r, sel_c, sel_s = rows[pos], cols[pos], scores[pos]
        log.warning(
            "greedy_one_to_one: %d row and %d column candidate lists ran out at k=%d; the "
            "result may differ from the dense greedy walk", risk_r, risk_c, k,
        )
    return GreedyResult(sel_r, sel_c, sel_s, k, risk_r, risk_c)
