"""One diag-GAT attention layer as a single autograd node over psqe's compiled CPU kernels.

:class:`~.stage2_model.DiagGAT` runs a layer on an :class:`~.attention.Adjacency`
through :func:`attention_layer` when :func:`available` says the compiled
kernels serve the input (CPU tensors, float32 or float64, the compiled core
loaded, ``KERNEL = "auto"``); otherwise through PyTorch Geometric's fused
path with torch sparse ops (:class:`~.attention._AttentionAggregate`), which
computes the same function (tests/test_stage2.py compares them in float64).

What the layer computes (the module docstring of :mod:`.stage2_model`), for
``wcat = [w * a_dst; w * a_src]`` (``[2H, d]``) and ``scale = w / H``::

    s        = x @ wcat^T                                  # [N_src, 2H]
    e_ij     = LeakyReLU(s[i, H + k] + s[j, k])  (negated with negative_scores)
    alpha_ij = softmax over i's incoming edges of max(e_ij, max_i e - floor)
    pre_i    = sum_k scale_k * sum_j alpha_ij^k x_j        # psqe::gat_aggregate
    out_i    = ELU(pre_i) when elu (in place), else pre_i

Why a kernel: the torch-op path builds about a dozen ``[N, d]`` temporaries
per layer and pass (per-head products, the ``[N * H, d]`` gradient rows, the
ELU's gradient, the gradient floors, the scores' gradient and its sum); the
kernels walk each row of the graph once per pass, fuse the ELU's gradient
(taken from its output, ``y + 1`` where ``y <= 0``, as torch's in-place ELU
does: equal to ``e^z`` up to float rounding of ``y``), the gradient floor
(:data:`~.attention.GRAD_FLUSH`) and the scores' own gradient, and write each
output row once. The edge softmax and its gradient (``[E, H]``) and the
forward ELU (in place) stay torch ops.

>>> import torch
>>> from psqe.seeds.attention import Adjacency
>>> adj = Adjacency.build(torch.tensor([[0, 1, 1, 2], [0, 0, 1, 1]]), num_src=3, num_dst=2)
>>> x = torch.randn(3, 4, requires_grad=True)
>>> wcat, scale = torch.randn(2, 4), torch.ones(1, 4)
>>> if available(x):
...     out, alpha = attention_layer(x, wcat, scale, adj, negative_slope=0.2, negative_scores=False,
...                                  elu=True, floor=30.0, flush_input=True)
...     out.sum().backward()
...     assert out.shape == (2, 4) and x.grad.shape == (3, 4)
...     assert torch.allclose(alpha.sum(), torch.tensor(2.0))  # each destination's weights sum to 1
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from .. import _pyg  # noqa: F401  (PyG without its import-time warning)
from torch_geometric.utils import segment, softmax

from .. import ops
from .attention import GRAD_FLUSH, Adjacency

#: ``"auto"``: the compiled kernels wherever :func:`available`; ``"off"``: always
#: the torch sparse-op path (for comparisons and tests). The environment
#: variable ``PSQE_GAT_KERNEL`` sets it at import.
KERNEL = os.environ.get("PSQE_GAT_KERNEL", "auto")
if KERNEL not in ("auto", "off"):
    raise ValueError(f"PSQE_GAT_KERNEL must be 'auto' or 'off', got {KERNEL!r}")


def available(x: Tensor) -> bool:
    """Whether :func:`attention_layer` can run on ``x`` (see the module docstring)."""
    return (KERNEL == "auto" and ops.backend() == "compiled" and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64))


def attention_layer(x: Tensor, wcat: Tensor, scale: Tensor, adj: Adjacency, *, negative_slope: float,
                    negative_scores: bool, elu: bool, floor: float, flush_input: bool) -> tuple[Tensor, Tensor]:
    """One layer (module docstring): returns ``(out [num_dst, d], alpha [E, H])``,
    ``alpha`` in ``adj.edge_index`` order (no gradient through it).

    ``flush_input``: floor the gradient of ``x`` at :data:`~.attention.GRAD_FLUSH`
    (the GAT's input, which feeds the encoder's weight-gradient product).
    """
    if (adj.num_src, adj.num_dst) != (x.size(0), adj.crow.numel() - 1):
        raise ValueError(f"attention_layer: x has {x.size(0)} rows, the adjacency {adj.num_src} sources")
    return _AttentionLayer.apply(x, wcat, scale, adj, negative_slope, negative_scores, elu, floor, flush_input)


class _AttentionLayer(torch.autograd.Function):
    """:func:`attention_layer` with its backward written out (module docstring)."""

    @staticmethod
    def forward(ctx, x, wcat, scale, adj: Adjacency, slope: float, negative: bool, elu: bool, floor: float,
                flush_input: bool):
        heads, n_dst = scale.size(0), adj.num_dst
        dst, src = adj.edge_index[1].as_subclass(Tensor), adj.col
        s = x @ wcat.t()
        pre = s[:n_dst, heads:][dst] + s[:, :heads][src]
        e = F.leaky_relu(pre, slope)
        if negative:
            e = e.neg_()
        low = segment(e, adj.crow, reduce="max")[dst] - floor
        floored = torch.maximum(e, low)
        alpha = softmax(floored, dst, adj.crow, n_dst)
        out = torch.ops.psqe.gat_aggregate(adj.crow, adj.col, alpha, x, scale)
        if elu:  # in place; the backward takes ELU' from the output, as torch's in-place ELU does
            F.elu_(out)
        ctx.adj, ctx.slope, ctx.negative, ctx.elu, ctx.flush_input = adj, slope, negative, elu, flush_input
        # the floor's gradient rule is torch.maximum's: all to e above it, half at a tie
        tie = (e == low).to(e.dtype)
        floor_grad = (e > low).to(e.dtype).add_(tie, alpha=0.5)
        ctx.save_for_backward(x, wcat, scale, alpha, pre, floor_grad, out)
        ctx.mark_non_differentiable(alpha)
        return out, alpha

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_alpha):
        x, wcat, scale, alpha, pre, floor_grad, out = ctx.saved_tensors
        adj, heads = ctx.adj, scale.size(0)
        dst, src = adj.edge_index[1].as_subclass(Tensor), adj.col
        g, grad_alpha, grad_scale = torch.ops.psqe.gat_aggregate_backward(
            adj.crow, adj.col, alpha, x, scale, out, grad_out.contiguous(), ctx.elu, GRAD_FLUSH)
        t = alpha * grad_alpha  # softmax backward, then the floor, the sign and the LeakyReLU
        de = t.sub_(alpha * segment(t, adj.crow, reduce="sum")[dst]).mul_(floor_grad)
        if ctx.negative:
            de = de.neg_()
        de = torch.where(pre > 0, de, de * ctx.slope)
        d_scores = x.new_zeros(x.size(0), 2 * heads)
        d_scores[:, :heads].index_add_(0, src, de)
        d_scores[:adj.num_dst, heads:] = segment(de, adj.crow, reduce="sum")
        grad_wcat = d_scores.t() @ x
        grad_x = None
        if ctx.needs_input_grad[0]:
            src_ptr, by_dst, edge = adj.by_source()
            grad_x = torch.ops.psqe.gat_aggregate_backward_input(
                src_ptr, by_dst, edge, alpha, scale, g, d_scores, wcat, GRAD_FLUSH if ctx.flush_input else 0.0)
        return grad_x, grad_wcat, grad_scale, None, None, None, None, None, None


__all__ = ["KERNEL", "attention_layer", "available"]
