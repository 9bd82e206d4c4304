"""Pure-PyTorch oracles of the compiled ops.

Each function has the exact semantics of its op in ``csrc/psqe_ops.h`` and is
written for clarity, not speed: the tests compare the compiled kernels with
these, the benchmarks use them as the dense baselines, and :mod:`psqe.ops`
falls back to them when the compiled library is not installed. They work in
blocks of rows, so they need ``block x m`` memory, not ``n x m``.

``script_greedy`` is a faithful re-statement of the authors' research
script's selection (dense matrix, flattened top ``100 * k``, a Python walk
with list membership): the baseline to match and to beat.
"""
from __future__ import annotations

import torch

MAX_TOPK = 2048
_ROW_BLOCK = 1024


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_finite(t: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0, 0])
        raise ValueError(
            f"{what} must be finite, but it holds {int(bad.sum())} NaN/inf value(s); "
            f"the first at flat index {first} (shape {tuple(t.shape)})"
        )


def _check_pair(x: torch.Tensor, y: torch.Tensor, op: str, nx: str, ny: str) -> None:
    for t, name in ((x, nx), (y, ny)):
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{op}: {nx} and {ny} must have the same feature size d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not x.dtype.is_floating_point or x.dtype != y.dtype:
        raise TypeError(f"{op}: {nx} and {ny} must share one floating dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"{op}: {nx} and {ny} must be on the same device, got {x.device} and {y.device}")
    _check_finite(x, f"{op}: {nx}")
    _check_finite(y, f"{op}: {ny}")


def topk_similarity(a: torch.Tensor, b: torch.Tensor, k: int, exclude: torch.Tensor | None = None):
    """Row-wise top-k of ``a @ b.T``: values desc, ties to the smaller column; see psqe.ops."""
    _check_pair(a, b, "topk_similarity", "a", "b")
    if not 1 <= k <= MAX_TOPK:
        raise ValueError(f"topk_similarity: k must be in [1, {MAX_TOPK}], got {k}")
    m = b.shape[0]
    if exclude is not None and (exclude.dtype != torch.bool or tuple(exclude.shape) != (m,)):
        raise ValueError(f"topk_similarity: exclude must be a bool mask of shape [{m}], got {exclude.dtype} {tuple(exclude.shape)}")
    acc = _acc_dtype(a.dtype)
    kk = min(k, m)
    values = torch.empty(a.shape[0], kk, dtype=acc, device=a.device)
    indices = torch.empty(a.shape[0], kk, dtype=torch.long, device=a.device)
    bt = b.to(acc).T
    for r0 in range(0, a.shape[0], _ROW_BLOCK):
        sim = a[r0 : r0 + _ROW_BLOCK].to(acc) @ bt
        if exclude is not None:
            sim[:, exclude] = float("-inf")
        # A stable descending sort keeps equal values in column order.
        v, i = torch.sort(sim, dim=1, descending=True, stable=True)
        v, i = v[:, :kk], i[:, :kk]
        i[torch.isneginf(v)] = -1
        values[r0 : r0 + _ROW_BLOCK] = v
        indices[r0 : r0 + _ROW_BLOCK] = i
    return values, indices


def topk_similarity_both(a: torch.Tensor, b: torch.Tensor, k: int):
    """Row-wise and column-wise top-k of ``a @ b.T`` (ties to the smaller index); see psqe.ops.

    One pass over blocks of rows: each score is computed once and enters both
    lists, so a pair in both carries one value (two products, ``a @ b.T`` and
    ``b @ a.T``, may round apart, and the greedy walk's exactness argument
    needs one score per pair).
    """
    _check_pair(a, b, "topk_similarity_both", "a", "b")
    if not 1 <= k <= MAX_TOPK:
        raise ValueError(f"topk_similarity_both: k must be in [1, {MAX_TOPK}], got {k}")
    acc = _acc_dtype(a.dtype)
    n, m = a.shape[0], b.shape[0]
    kr, kc = min(k, m), min(k, n)
    row_values = torch.empty(n, kr, dtype=acc, device=a.device)
    row_indices = torch.empty(n, kr, dtype=torch.long, device=a.device)
    col_values = torch.empty(m, 0, dtype=acc, device=a.device)
    col_indices = torch.empty(m, 0, dtype=torch.long, device=a.device)
    bt = b.to(acc).T
    for r0 in range(0, n, _ROW_BLOCK):
        sim = a[r0 : r0 + _ROW_BLOCK].to(acc) @ bt
        v, i = torch.sort(sim, dim=1, descending=True, stable=True)
        row_values[r0 : r0 + _ROW_BLOCK], row_indices[r0 : r0 + _ROW_BLOCK] = v[:, :kr], i[:, :kr]
        v, i = torch.sort(sim.T, dim=1, descending=True, stable=True)
        # the running best come first: a stable sort keeps the smaller row among equal scores
        v, i = torch.cat([col_values, v[:, :kc]], 1), torch.cat([col_indices, i[:, :kc] + r0], 1)
        v, order = torch.sort(v, dim=1, descending=True, stable=True)
        col_values, col_indices = v[:, :kc], i.gather(1, order[:, :kc])
    return row_values, row_indices, col_values, col_indices


def walk_rank(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Rank of every candidate in the strict walk order (score desc, row, col, position)."""
    s = scores.to(_acc_dtype(scores.dtype)) + 0.0  # -0.0 -> +0.0
    order = torch.argsort(cols, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    order = order[torch.argsort(s[order], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def greedy_match(scores, rows, cols, limit=None, used_rows=None, used_cols=None) -> torch.Tensor:
    """Greedy one-to-one selection, computed as rounds of locally dominant edges.

    A different algorithm from the compiled CPU scan on purpose: with a strict
    order the greedy walk keeps exactly the edges that are, round after round,
    the best live edge at both their endpoints; the first ``limit`` of them in
    walk order are what a walk stopped at ``limit`` keeps.
    """
    if scores.dim() != 1 or rows.shape != scores.shape or cols.shape != scores.shape:
        raise ValueError(f"greedy_match: scores, rows, cols must be 1-D of one length, got {tuple(scores.shape)}, {tuple(rows.shape)}, {tuple(cols.shape)}")
    if not scores.dtype.is_floating_point or rows.dtype != torch.long or cols.dtype != torch.long:
        raise TypeError(f"greedy_match: scores must be floating and rows/cols int64, got {scores.dtype}, {rows.dtype}, {cols.dtype}")
    if limit is not None and limit < 0:
        raise ValueError(f"greedy_match: limit must be >= 0, got {limit}")
    _check_finite(scores, "greedy_match: scores")
    for t, name in ((rows, "rows"), (cols, "cols"), (used_rows, "used_rows"), (used_cols, "used_cols")):
        if t is not None and t.numel() and int(t.min()) < 0:
            raise ValueError(f"greedy_match: {name} must hold indices >= 0, got {int(t.min())}")
    c = scores.numel()
    if c == 0 or limit == 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    rank = walk_rank(scores, rows, cols)
    n_rows = int(rows.max()) + 1 if used_rows is None or not used_rows.numel() else max(int(rows.max()), int(used_rows.max())) + 1
    n_cols = int(cols.max()) + 1 if used_cols is None or not used_cols.numel() else max(int(cols.max()), int(used_cols.max())) + 1
    row_used = torch.zeros(n_rows, dtype=torch.bool, device=scores.device)
    col_used = torch.zeros(n_cols, dtype=torch.bool, device=scores.device)
    if used_rows is not None:
        row_used[used_rows] = True
    if used_cols is not None:
        col_used[used_cols] = True
    kept = torch.zeros(c, dtype=torch.bool, device=scores.device)
    big = torch.iinfo(torch.long).max
    while True:
        live = ~row_used[rows] & ~col_used[cols] & ~kept
        if not bool(live.any()):
            break
        lr, lc, lk = rows[live], cols[live], rank[live]
        best_r = torch.full((n_rows,), big, dtype=torch.long, device=scores.device).scatter_reduce_(0, lr, lk, "amin")
        best_c = torch.full((n_cols,), big, dtype=torch.long, device=scores.device).scatter_reduce_(0, lc, lk, "amin")
        win = (best_r[lr] == lk) & (best_c[lc] == lk)
        kept[live.nonzero().squeeze(1)[win]] = True
        row_used[lr[win]] = True
        col_used[lc[win]] = True
    pos = kept.nonzero().squeeze(1)
    pos = pos[torch.argsort(rank[pos])]
    return pos if limit is None else pos[:limit]


def mic_keep(left: torch.Tensor, right: torch.Tensor, both_directions: bool = False) -> torch.Tensor:
    """keep[k]: <left[k], right[k]> is the max of row k (and column k) of left @ right.T."""
    _check_pair(left, right, "mic_keep", "left", "right")
    if left.shape != right.shape:
        raise ValueError(f"mic_keep: left and right must have the same shape, got {tuple(left.shape)} and {tuple(right.shape)}")
    acc = _acc_dtype(left.dtype)
    s = left.shape[0]
    rt = right.to(acc).T
    keep = torch.empty(s, dtype=torch.bool, device=left.device)
    col_max = torch.full((s,), float("-inf"), dtype=acc, device=left.device)
    diag = torch.empty(s, dtype=acc, device=left.device)
    for r0 in range(0, s, _ROW_BLOCK):
        sim = left[r0 : r0 + _ROW_BLOCK].to(acc) @ rt
        own = torch.arange(r0, r0 + sim.shape[0], device=left.device)
        diag[own] = sim[own - r0, own]
        keep[own] = diag[own] >= sim.max(dim=1).values
        if s:
            col_max = torch.maximum(col_max, sim.max(dim=0).values)
    if both_directions:
        keep &= diag >= col_max
    return keep


def script_greedy(sim: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The authors' script's selection on a dense similarity matrix.

    Takes the flattened top ``100 * k`` entries of ``sim`` (ties to the
    smaller flat index, i.e. row then column) and walks them with Python list
    membership tests, keeping a pair when neither entity was used, until ``k``
    pairs are kept. O(k^2) membership work: the slow baseline.
    """
    m = sim.shape[1]
    flat = sim.reshape(-1)
    top = min(100 * k, flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices[:top].tolist()
    used_left: list[int] = []
    used_right: list[int] = []
    pairs: list[tuple[int, int]] = []
    for f in order:
        i, j = divmod(f, m)
        if i in used_left or j in used_right:
            continue
        used_left.append(i)
        used_right.append(j)
        pairs.append((i, j))
        if len(pairs) == k:
            break
    return pairs
