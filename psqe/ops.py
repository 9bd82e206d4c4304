"""Typed entry points to psqe's compiled core.

Three ops carry every stage of PSQE and every aligner's evaluation:

- :func:`topk_similarity` — fused, tiled top-k of ``a @ b.T`` (no n x m matrix);
  :func:`topk_similarity_both` gives the rows' and the columns' top-k from one pass;
- :func:`greedy_match` — greedy one-to-one selection over scored candidates;
- :func:`mic_keep` — the MIC check of a seed list (no s x s matrix).

(Stage II's attention layers have CPU kernels of their own,
``torch.ops.psqe.gat_aggregate*``, used by :mod:`psqe.seeds.attention_layer`.)

They run the compiled kernels (``torch.ops.psqe.*``, CPU and CUDA) when the
library is installed, and otherwise the pure-PyTorch oracle of
:mod:`psqe._reference`; :func:`backend` says which. None of them is
differentiable: they read their inputs detached, on every backend, so
embeddings that are being trained can be passed as they are (the outputs
carry no gradient). On CUDA the float32 products follow PyTorch's TF32 switch
(``torch.backends.cuda.matmul.allow_tf32``, off by default): leave it off, or
scores lose about three decimals and ties and the greedy walk's order differ
from the CPU's.

>>> import torch, psqe.ops as ops
>>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> b = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])
>>> values, indices = ops.topk_similarity(a, b, k=2)
>>> indices.tolist()
[[0, 1], [2, 1]]
"""
from __future__ import annotations

import torch

from . import _reference
from ._library import load

_BUILD_INFO = load()
#: Largest ``k`` accepted by :func:`topk_similarity` on every backend.
MAX_TOPK = _reference.MAX_TOPK

if _BUILD_INFO is not None:
    # Fake kernels: shapes only, so torch.compile / FakeTensor tracing work.
    # Registered only when the library (and so the op) exists.
    @torch.library.register_fake("psqe::topk_similarity")
    def _topk_fake(a, b, k, exclude=None):
        kk = min(k, b.shape[0])
        acc = torch.float64 if a.dtype == torch.float64 else torch.float32
        return a.new_empty((a.shape[0], kk), dtype=acc), a.new_empty((a.shape[0], kk), dtype=torch.long)

    @torch.library.register_fake("psqe::topk_similarity_both")
    def _topk_both_fake(a, b, k):
        acc = torch.float64 if a.dtype == torch.float64 else torch.float32
        n, m = a.shape[0], b.shape[0]
        kr, kc = min(k, m), min(k, n)
        return (a.new_empty((n, kr), dtype=acc), a.new_empty((n, kr), dtype=torch.long),
                a.new_empty((m, kc), dtype=acc), a.new_empty((m, kc), dtype=torch.long))

    @torch.library.register_fake("psqe::greedy_match")
    def _greedy_fake(scores, rows, cols, limit=None, used_rows=None, used_cols=None):
        size = torch.library.get_ctx().new_dynamic_size()
        return rows.new_empty((size,))

    @torch.library.register_fake("psqe::mic_keep")
    def _mic_fake(left, right, both_directions=False):
        return left.new_empty((left.shape[0],), dtype=torch.bool)

    # Stage II's attention-layer kernels (CPU; psqe.seeds.attention_layer).
    @torch.library.register_fake("psqe::gat_aggregate")
    def _gat_fake(crow, col, alpha, x, scale):
        return x.new_empty((crow.shape[0] - 1, x.shape[1]))

    @torch.library.register_fake("psqe::gat_aggregate_backward")
    def _gat_backward_fake(crow, col, alpha, x, scale, out, grad_out, elu, flush):
        return x.new_empty((crow.shape[0] - 1, x.shape[1])), torch.empty_like(alpha), torch.empty_like(scale)

    @torch.library.register_fake("psqe::gat_aggregate_backward_input")
    def _gat_backward_input_fake(src_ptr, dst, edge, alpha, scale, g, low_grad=None, low_weight=None, flush=0.0):
        return g.new_empty((src_ptr.shape[0] - 1, g.shape[1]))

    def _gat_no_formula(ctx, grad):
        raise RuntimeError("psqe::gat_aggregate has no gradient of its own: psqe.seeds.attention_layer's "
                           "autograd.Function gives the layer's (call the op under torch.no_grad() otherwise)")

    # Without an autograd kernel, backward() through a direct call would leave the inputs' .grad None
    # silently (PyTorch only warns); now it raises.
    torch.library.register_autograd("psqe::gat_aggregate", _gat_no_formula, setup_context=lambda ctx, inputs, output: None)


def backend() -> str:
    """``"compiled"`` when the compiled core is loaded, else ``"reference"``.

    >>> import psqe.ops
    >>> psqe.ops.backend() in ("compiled", "reference")
    True
    """
    return "compiled" if _BUILD_INFO is not None else "reference"


def backends() -> dict[str, bool]:
    """What can run: compiled CPU kernels, compiled CUDA kernels, OpenMP threads.

    >>> import psqe.ops
    >>> sorted(psqe.ops.backends())
    ['compiled_cpu', 'compiled_cuda', 'openmp']
    """
    info = _BUILD_INFO or {}
    return {
        "compiled_cpu": _BUILD_INFO is not None,
        "compiled_cuda": info.get("cuda") == "1",
        "openmp": info.get("openmp") == "1",
    }


_WARNED_DEVICES: set[str] = set()


def _detached(*inputs):
    """The inputs without their autograd history (anything not a tensor as it is, for the ops' own errors)."""
    return tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in inputs)


def _compiled_for(t: torch.Tensor) -> bool:
    """Whether the compiled kernels serve ``t``'s device; else the oracle runs (warned once per device).

    A library built without CUDA kernels (no ``FORCE_CUDA=1`` and no GPU at
    build time) still runs CUDA tensors, through the PyTorch oracle.
    """
    if _BUILD_INFO is None:
        return False
    if t.device.type in ("cpu", "meta") or (t.device.type == "cuda" and _BUILD_INFO.get("cuda") == "1"):
        return True
    if t.device.type not in _WARNED_DEVICES:
        _WARNED_DEVICES.add(t.device.type)
        import warnings

        warnings.warn(f"psqe was built without {t.device.type.upper()} kernels: psqe.ops runs the PyTorch reference "
                      f"on {t.device.type} tensors (rebuild with FORCE_CUDA=1 for the compiled ones)", stacklevel=3)
    return False


def topk_similarity(
    a: torch.Tensor, b: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of every row of ``a @ b.T``, without forming it.

    Args:
        a: ``[n, d]`` float16/bfloat16/float32/float64.
        b: ``[m, d]`` of the same dtype and device.
        k: ``1 <= k <= MAX_TOPK``; rows get ``min(k, m)`` entries.
        exclude: optional bool ``[m]``: columns never returned (used entities).

    Returns:
        ``(values, indices)``, both ``[n, min(k, m)]``: values sorted
        descending (float32, or float64 for float64 inputs; half inputs
        accumulate in float32), ties broken by the smaller column; int64
        column indices. A row with fewer than ``min(k, m)`` columns left after
        ``exclude`` is padded with ``-inf`` / ``-1``.

    On a CPU with native bfloat16 products, float32 inputs with ``d >= 128``
    are screened with a bfloat16 GEMM and the candidates a proven error
    bound cannot rule out are rescored in float32 (rows it cannot settle are
    recomputed): the float32 result, about twice as fast at 15k x 15k x 1024.
    ``PSQE_TOPK_SCREEN=off|on|auto`` overrides the choice.

    Example:
        >>> import torch, psqe.ops as ops
        >>> a = torch.eye(3)
        >>> b = torch.tensor([[3.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])
        >>> ops.topk_similarity(a, b, k=2, exclude=torch.tensor([True, False, False]))[1].tolist()
        [[1, 2], [1, 2], [2, 1]]
    """
    a, b = _detached(a, b)
    if not _compiled_for(a):
        return _reference.topk_similarity(a, b, k, exclude)
    return torch.ops.psqe.topk_similarity(a, b, k, exclude)


def topk_similarity_both(
    a: torch.Tensor, b: torch.Tensor, k: int, one_score: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of every row *and* every column of ``a @ b.T``, one GEMM per tile.

    ``(row_values, row_indices)`` equal ``topk_similarity(a, b, k)``;
    ``(col_values, col_indices)`` are ``[m, min(k, n)]``: for column ``j``
    (row ``j`` of ``b``) the largest ``(a @ b.T)[i, j]`` sorted descending,
    ties broken by the smaller ``i``, and those ``i``. Both come from one
    pass over the similarity tiles (half the GEMM work of two calls), so a
    pair in both lists carries the same score in each: the greedy walk's
    exactness check (:mod:`psqe.matching`) relies on it. On CPU the compiled
    kernel makes that pass; other devices run the PyTorch one-pass version
    in :mod:`psqe._reference` (blocks of 1,024 rows: ``1024 x m`` memory and
    a sort per block), not two :func:`topk_similarity` calls, whose column
    scores, from ``b @ a.T``, could round apart. ``one_score=False`` lets
    such a device run those two calls (its compiled kernel) where the caller
    needs the lists but not one score per pair (CSLS means, nearest
    neighbours); the CPU kernel is used either way. No ``exclude``: pass the
    free rows.

    Example:
        >>> import torch, psqe.ops as ops
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> b = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]])
        >>> rv, ri, cv, ci = ops.topk_similarity_both(a, b, k=1)
        >>> ri.squeeze(1).tolist(), ci.squeeze(1).tolist()
        ([0, 2], [0, 1, 1])
    """
    a, b = _detached(a, b)
    if not _compiled_for(a):
        return _reference.topk_similarity_both(a, b, k)
    if a.device.type in ("cpu", "meta"):
        return torch.ops.psqe.topk_similarity_both(a, b, k)
    if one_score:
        return _reference.topk_similarity_both(a, b, k)
    return (*torch.ops.psqe.topk_similarity(a, b, k, None), *torch.ops.psqe.topk_similarity(b, a, k, None))


def greedy_match(
    scores: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    limit: int | None = None,
    used_rows: torch.Tensor | None = None,
    used_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy one-to-one selection: the positions of the kept candidates.

    Candidates are walked by descending score (ties: smaller row, then smaller
    column); one is kept when neither its row nor its column is used, until
    ``limit`` are kept. This is EVA's "unsupervised visual pivoting" walk.

    Args:
        scores: ``[c]`` floating, finite.
        rows, cols: ``[c]`` int64 entity indices (>= 0) of each candidate. The walk keeps
            per-index state up to the largest index (1 byte an index on CPU, 8 on CUDA): pass
            compact indices (``torch.unique(..., return_inverse=True)``), not sparse ids.
        limit: stop after this many kept pairs (None: walk all).
        used_rows, used_cols: int64 lists of entities already used.

    Returns:
        int64 ``[S]`` positions into the candidate arrays, in selection order.

    Example:
        >>> import torch, psqe.ops as ops
        >>> scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
        >>> rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
        >>> ops.greedy_match(scores, rows, cols).tolist()
        [3, 1]
    """
    (scores,) = _detached(scores)
    if not _compiled_for(scores):
        return _reference.greedy_match(scores, rows, cols, limit, used_rows, used_cols)
    return torch.ops.psqe.greedy_match(scores, rows, cols, limit, used_rows, used_cols)


def mic_keep(left: torch.Tensor, right: torch.Tensor, both_directions: bool = False) -> torch.Tensor:
    """The MIC check: which seed pairs are each other's best match.

    ``keep[k]`` is true when ``<left[k], right[k]>`` is the largest value of
    row ``k`` of ``left @ right.T`` (with ``both_directions``, also of column
    ``k``); a tie keeps the pair. Modality weights: scale the features, e.g.
    ``left = cat([w_v * norm(v1), w_a * norm(a1), w_r * norm(r1)])`` and
    ``right = cat([norm(v2), norm(a2), norm(r2)])`` give the weighted sum of
    per-modality cosines that PSQE uses.

    Example:
        >>> import torch, psqe.ops as ops
        >>> left = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
        >>> right = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> ops.mic_keep(left, right).tolist()
        [True, False]
    """
    left, right = _detached(left, right)
    if not _compiled_for(left):
        return _reference.mic_keep(left, right, both_directions)
    return torch.ops.psqe.mic_keep(left, right, both_directions)
