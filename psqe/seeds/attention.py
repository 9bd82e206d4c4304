"""The fused (sparse-matrix) path of Stage II's graph attention, and its gradient floor.

(On CPU, an :class:`Adjacency` layer runs through the compiled layer kernels
of :mod:`.attention_layer` instead; this torch sparse-op path serves CUDA.)
:class:`~.stage2_model.DiagGAT` runs a layer over either input:

- an edge list (``[2, E]`` tensor): PyTorch Geometric's ``message`` /
  scatter path, one ``[E, d]`` message tensor per layer (and more in the
  backward pass). The reference.
- an :class:`Adjacency` (built once per graph, :meth:`Adjacency.build`):
  PyTorch Geometric's fused ``message_and_aggregate`` path, implemented by
  :class:`_AttentionAggregate`. Per head, the aggregation is a CSR
  sparse-dense product ``A^k h`` (``A^k[i, j] = alpha^k_ij``); its backward
  is one transposed product for ``h`` and one sampled dense-dense product
  (``torch.sparse.sampled_addmm``) for the attention coefficients, all heads
  at once. Nothing of size ``[E, d]`` is built. Measured on DBP15K zh_en's
  receptive field (220k edges, d = 300, 2-core CPU): the aggregation forward
  11 ms instead of 196 ms; a whole training epoch half the CPU time of the
  edge-list path.

On the fused path, gradient entries up to ``GRAD_FLUSH`` (2^-70) are set to
zero (:func:`_flush_tiny`). With the attention-score floor of
:class:`~.stage2_model.DiagGAT`, this keeps subnormal numbers, about 100
times slower to multiply on x86 CPUs, out of the products: without them, one
backward GEMM ran 7 times slower after a few epochs on DBP15K.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from .. import _pyg  # noqa: F401  (PyG without its import-time warning)
from torch_geometric import EdgeIndex


@dataclass(frozen=True, eq=False)
class Adjacency:
    """One layer's graph, prepared once for the fused (sparse-matrix) path.

    ``edge_index`` is a PyTorch Geometric :class:`~torch_geometric.EdgeIndex`
    ``[2, E]`` (sources, destinations) sorted by destination, then source;
    ``A`` is ``[num_dst, num_src]`` in CSR form (``crow``; ``col`` = the
    sources). Attention coefficients are given per edge in ``edge_index``
    order. The backward pass uses all heads at once, through a
    ``[num_dst * H, num_src]`` matrix whose row ``H i + k`` is head ``k`` of
    destination ``i`` (and its transpose), built on first use per ``H``.

    >>> import torch
    >>> adj = Adjacency.build(torch.tensor([[2, 0, 1], [0, 1, 0]]), num_src=3, num_dst=2)
    >>> adj.edge_index.tolist(), adj.crow.tolist()
    ([[1, 2, 0], [0, 0, 1]], [0, 2, 3])
    """

    edge_index: EdgeIndex
    num_src: int
    num_dst: int
    crow: Tensor
    col: Tensor
    _by_heads: dict = field(default_factory=dict, repr=False)
    _by_source: list = field(default_factory=list, repr=False)

    @staticmethod
    def build(edge_index: Tensor, num_src: int, num_dst: int) -> "Adjacency":
        """From ``[2, E]`` edges ``source -> destination`` (sources below
        ``num_src``, destinations below ``num_dst``; repeats are kept and
        count twice, as on the edge-list path)."""
        src, dst = edge_index[0].long(), edge_index[1].long()
        if src.numel() and (int(src.min()) < 0 or int(src.max()) >= num_src
                            or int(dst.min()) < 0 or int(dst.max()) >= num_dst):
            raise ValueError(f"Adjacency: edges must have sources in [0, {num_src}) and destinations in [0, {num_dst})")
        order = torch.argsort(dst * num_src + src, stable=True)
        src, dst = src[order], dst[order]
        ei = EdgeIndex(torch.stack([src, dst]), sparse_size=(num_src, num_dst), sort_order="col")
        return Adjacency(ei, num_src, num_dst, _indptr(dst, num_dst), src)

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    def matrix(self, values: Tensor) -> Tensor:
        """``A`` as a torch CSR tensor with the given per-edge values."""
        return _csr(self.crow, self.col, values, (self.num_dst, self.num_src))

    def stacked(self, heads: int) -> dict[str, Tensor]:
        """Index tensors of the all-heads matrix ``B`` (``[num_dst * H, num_src]``,
        row ``H i + k``) and of ``B^T``: CSR ``crow``/``col`` and ``crow_t``/``col_t``,
        and for each entry its position in ``alpha.reshape(-1)`` (``pos``, ``pos_t``)."""
        if heads not in self._by_heads:
            e, dev = self.num_edges, self.col.device
            dst = self.edge_index[1].as_subclass(Tensor)
            k = torch.arange(heads, device=dev)
            rows = (dst[None, :] * heads + k[:, None]).reshape(-1)  # entry (k, e), k-major
            pos = (torch.arange(e, device=dev)[None, :] * heads + k[:, None]).reshape(-1)
            order = torch.argsort(rows, stable=True)  # by row, edges of a row in edge order
            rows, pos = rows[order], pos[order]
            cols = self.col[pos // heads]
            order_t = torch.argsort(cols, stable=True)
            self._by_heads[heads] = {
                "crow": _indptr(rows, self.num_dst * heads), "col": cols, "pos": pos,
                "crow_t": _indptr(cols[order_t], self.num_src), "col_t": rows[order_t], "pos_t": pos[order_t],
            }
        return self._by_heads[heads]


    def by_source(self) -> tuple[Tensor, Tensor, Tensor]:
        """The graph by source (CSC), built on first use: ``(src_ptr [num_src + 1],
        dst [E], edge [E])``, each edge's destination and position in
        ``edge_index`` order, edges sorted by source (then destination)."""
        if not self._by_source:
            order = torch.argsort(self.col, stable=True)
            dst = self.edge_index[1].as_subclass(Tensor)
            self._by_source.extend([_indptr(self.col[order], self.num_src), dst[order].contiguous(), order])
        return tuple(self._by_source)


def _indptr(sorted_index: Tensor, size: int) -> Tensor:
    ptr = torch.zeros(size + 1, dtype=torch.long, device=sorted_index.device)
    torch.cumsum(torch.bincount(sorted_index, minlength=size), 0, out=ptr[1:])
    return ptr


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" (once per process)
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _spmm(a: Tensor, b: Tensor) -> Tensor:
    """CSR ``a`` times dense ``b``. On CPU torch's sum-reduction kernel, which
    writes its output once (``a @ b`` zero-fills it, then copies it from a
    scratch buffer: two extra passes)."""
    return torch.sparse.mm(a, b, "sum") if b.device.type == "cpu" else a @ b


class _AttentionAggregate(torch.autograd.Function):
    """``out = sum_k (A^k x) * scale_k`` with ``A^k[i, j] = alpha[e, k]`` for edge ``e = j -> i``.

    Forward: one CSR sparse-dense product per head. Backward, all heads at
    once with ``q[H i + k] = g_i * scale_k``: ``dx = B^T q`` and ``dalpha`` =
    the sampled product ``q x^T`` at ``B``'s entries (see
    :meth:`Adjacency.stacked`; consecutive rows of ``B`` read the same rows of
    ``x``, so each is fetched from memory once); ``dscale_k = sum_i g_i * (A^k x)_i``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, scale: Tensor, adj: Adjacency) -> Tensor:
        heads = alpha.size(1)
        parts = [_spmm(adj.matrix(alpha[:, k].contiguous()), x) for k in range(heads)]
        out = parts[0] * scale[0]
        for k in range(1, heads):
            out.addcmul_(parts[k], scale[k])
        ctx.adj = adj
        ctx.save_for_backward(x, alpha, scale, *parts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, alpha, scale, *parts = ctx.saved_tensors
        adj, heads = ctx.adj, alpha.size(1)
        need_x, need_alpha, need_scale, _ = ctx.needs_input_grad
        grad = _flush_tiny(grad)
        grad_x = grad_alpha = grad_scale = None
        if need_scale:
            grad_scale = torch.stack([(grad * p).sum(0) for p in parts])
        if need_x or need_alpha:
            st = adj.stacked(heads)
            q = (grad[:, None, :] * scale[None]).reshape(-1, x.size(1))  # row H i + k
            if need_alpha:
                pattern = _csr(st["crow"], st["col"], alpha.new_zeros(st["col"].numel()), (q.size(0), adj.num_src))
                values = torch.sparse.sampled_addmm(pattern, q, x.t(), beta=0.0).values()
                grad_alpha = torch.empty_like(alpha).reshape(-1).index_copy_(0, st["pos"], values).view_as(alpha)
            if need_x:
                flat = alpha.reshape(-1)
                grad_x = _spmm(_csr(st["crow_t"], st["col_t"], flat[st["pos_t"]], (adj.num_src, q.size(0))), q)
        return grad_x, grad_alpha, grad_scale, None


#: Gradient entries below this magnitude are set to zero on the fused path (:func:`_flush_tiny`).
GRAD_FLUSH = 2.0 ** -70


def _flush_tiny(t: Tensor) -> Tensor:
    """``t`` with entries of magnitude up to ``GRAD_FLUSH`` (2^-70, about 8.5e-22)
    set to zero: applied to the gradient entering each attention layer's
    backward pass and to the gradient of the GAT's input (what the visual
    ``Linear``'s weight-gradient product reads).

    Why: the ELU's derivative ``e^z`` makes tiny gradients (on DBP15K a
    quarter of the pre-activations fall below -87 within ten epochs), and
    their products with attention weights (down to ``e^-30 / degree``) are
    subnormal numbers: each costs a ~100-cycle microcode assist on x86 in
    every product it enters (measured: the ``[300, 35k] x [35k, 2048]``
    weight-gradient GEMM 7x slower, a sparse product 7x), and flush-to-zero
    is a per-thread CPU mode library code should not set. From 2^-70 up,
    products with weights down to ``e^-30 / 1000`` stay normal. What is
    dropped is more than 10^13 times below AdamW's ``eps`` (1e-8) and below
    float32 resolution of any sum holding a typical gradient entry.
    """
    return F.hardshrink(t, GRAD_FLUSH)  # one pass: x where |x| > GRAD_FLUSH, else 0


class _FlushGrad(torch.autograd.Function):
    """Identity; the gradient passes through :func:`_flush_tiny`."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        return _flush_tiny(grad)
