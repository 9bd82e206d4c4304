"""Stage II model: per-modality encoders and the diag-weight graph attention.

PSQE-SPEC.md, Stage II step 1 (paper Eq. 5):
``H^v = GAT(Linear(h^v))``, ``H^a = Linear(h^a)``, ``H^r = Linear(h^r)``.

The graph attention is the "diag" variant of EVA/MCLEA/MEAformer: a layer has,
per head ``k``, a weight *vector* ``w_k`` (elementwise ``w_k * h``, not a
matrix) and two attention vectors. For node ``i`` and an incoming edge
``j -> i`` (PyTorch Geometric's ``source_to_target`` flow; the union graph is
symmetric, so direction never matters there):

    e_ij     = LeakyReLU_0.2(a_src_k . (w_k * h_i) + a_dst_k . (w_k * h_j))
    alpha_ij = softmax of e_ij over the incoming edges of i
    out_i    = mean_k  sum_j alpha_ij^k (w_k * h_j)

``a_src`` scores the updated node ``i`` and ``a_dst`` its neighbour ``j``
(MCLEA's naming: its ``a_src_dst`` is applied to ``[h[edge[0]], h[edge[1]]]``
and row ``edge[0]`` is the node that aggregates). ELU between layers, not
after the last. The EVA-family code scores with ``exp(-LeakyReLU(.))``;
``negative_scores=True`` reproduces that sign, the default is GAT's.

Two exact rewrites keep the work sparse and small (message passing over the
edge list: memory O(E * d), never an N x N matrix):

- ``w_k *`` distributes over the sum and the head mean is linear, so the
  message is ``h_j * (sum_k alpha_ij^k w_k / H)``: one ``[E, d]`` tensor
  instead of ``[E, H, d]``, and the attention scores are ``h @ (w * a)^T``.
- ``forward`` takes one edge list per layer and per-layer destination counts:
  with nodes ordered so that each layer's destinations are a prefix of its
  sources (seeds, then their 1-hop, then their 2-hop neighbours; see
  :func:`receptive_field`), a layer only computes the rows the next reads.

Three ways to run a layer, the same function (equal up to float rounding;
tests/test_stage2.py checks outputs and gradients in float64): an edge list
(``[2, E]`` tensor; PyTorch Geometric's ``message`` / scatter path, the
reference) or an :class:`~.attention.Adjacency`, which runs through the
compiled CPU layer kernels of :mod:`.attention_layer` where they serve the
input, and otherwise (CUDA, ``PSQE_GAT_KERNEL=off``, attention dropout
while training) through the fused sparse-matrix path of :mod:`.attention`.

Attention scores more than ``SCORE_FLOOR`` (30) below their destination's
maximum are raised to that floor (a weight under ``e^-30``, far below float32
resolution either way), so products of weights stay normal float32 numbers
(see :mod:`.attention` for why subnormal numbers matter on CPU).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .. import _pyg  # noqa: F401  (PyG without its import-time warning)
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, segment, softmax, sort_edge_index

from . import attention_layer
from .attention import Adjacency, _AttentionAggregate, _FlushGrad

MODALITIES: tuple[str, ...] = ("visual", "attribute", "relation")

#: Attention scores are floored at (destination maximum - SCORE_FLOOR); see the module docstring.
SCORE_FLOOR = 30.0


Edges = Union[Tensor, Adjacency]


class DiagGAT(MessagePassing):
    """Multi-layer, multi-head graph attention with per-dimension weights.

    Args:
        dim: feature size (input = hidden = output).
        num_layers: attention layers (PSQE: 2).
        heads: heads per layer, averaged (PSQE: 2).
        dropout: feature dropout before each layer but the last (EVA's rule).
        attention_dropout: dropout on the attention coefficients.
        negative_slope: LeakyReLU slope of the scores (0.2).
        negative_scores: score with ``-LeakyReLU(.)`` as the EVA-family code does.

    Parameters ``w``, ``a_src``, ``a_dst`` are ``[num_layers, heads, dim]``;
    ``w`` starts at ones and the attention vectors uniform in
    ``+-sqrt(6 / (2 dim + heads))`` (MCLEA's Xavier on its ``[H, 2d, 1]`` tensor).

    >>> import torch
    >>> gat = DiagGAT(4)
    >>> x = torch.randn(3, 4)
    >>> edges = torch.tensor([[0, 1, 1, 2, 0, 1, 2], [1, 0, 2, 1, 0, 1, 2]])
    >>> gat(x, edges).shape
    torch.Size([3, 4])
    """

    #: An :class:`Adjacency`'s ``EdgeIndex`` (sorted by destination) takes
    #: PyTorch Geometric's fused ``message_and_aggregate`` path.
    SUPPORTS_FUSED_EDGE_INDEX = True

    def __init__(self, dim: int, num_layers: int = 2, heads: int = 2, dropout: float = 0.0,
                 attention_dropout: float = 0.0, negative_slope: float = 0.2, negative_scores: bool = False) -> None:
        super().__init__(aggr="add", node_dim=0)
        if dim < 1 or num_layers < 1 or heads < 1:
            raise ValueError(f"DiagGAT: dim, num_layers and heads must be >= 1, got {dim}, {num_layers}, {heads}")
        self.dim, self.num_layers, self.heads = dim, num_layers, heads
        self.dropout, self.attention_dropout = dropout, attention_dropout
        self.negative_slope, self.negative_scores = negative_slope, negative_scores
        self.w = nn.Parameter(torch.empty(num_layers, heads, dim))
        self.a_src = nn.Parameter(torch.empty(num_layers, heads, dim))
        self.a_dst = nn.Parameter(torch.empty(num_layers, heads, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.ones_(self.w)
        bound = math.sqrt(6.0 / (2 * self.dim + self.heads))
        nn.init.uniform_(self.a_src, -bound, bound)
        nn.init.uniform_(self.a_dst, -bound, bound)

    def forward(self, x: Tensor, edge_index: Edges | Sequence[Edges], num_dst: Sequence[int] | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run all layers.

        Args:
            x: ``[N, dim]`` node features.
            edge_index: ``[2, E]`` (rows: source, destination) or an
                :class:`Adjacency`, used by every layer, or one per layer.
                Self loops are not added.
            num_dst: per layer, how many leading nodes are its destinations
                (non-increasing; default all ``N``; an :class:`Adjacency`
                carries its own). Layer ``l`` reads the first ``num_dst[l-1]``
                rows of the previous output, so its edges must have sources
                below that and destinations below ``num_dst[l]``; every
                incoming edge of a destination must be given.
            return_attention: also return each layer's ``[E_l, heads]``
                coefficients (edge order of the edge list, or of
                ``Adjacency.edge_index``).

        Returns:
            ``[num_dst[-1], dim]`` (``[N, dim]`` by default), and the
            coefficients when asked.
        """
        single = isinstance(edge_index, (Tensor, Adjacency))
        edges = [edge_index] * self.num_layers if single else list(edge_index)
        if num_dst is not None:
            sizes = [int(n) for n in num_dst]
        else:
            sizes = [e.num_dst if isinstance(e, Adjacency) else x.size(0) for e in edges]
        if len(edges) != self.num_layers or len(sizes) != self.num_layers:
            raise ValueError(f"DiagGAT: need {self.num_layers} edge lists and num_dst entries, "
                             f"got {len(edges)} and {len(sizes)}")
        kernel = [isinstance(e, Adjacency) and attention_layer.available(x)
                  and (self.attention_dropout == 0 or not self.training) for e in edges]
        flush_input = x.requires_grad and kernel[0]  # the kernel floors the input's gradient itself
        if x.requires_grad and not kernel[0] and any(isinstance(e, Adjacency) for e in edges):
            x = _FlushGrad.apply(x)  # the input's gradient feeds the encoder's weight-gradient GEMM
        attention = []
        for layer, (ei, n_dst) in enumerate(zip(edges, sizes)):
            last = layer + 1 == self.num_layers
            if not last:
                x = F.dropout(x, self.dropout, self.training)
            w, a_src, a_dst = self.w[layer], self.a_src[layer], self.a_dst[layer]
            n_src = x.size(0)
            graph, extra = ei, {"adjacency": None}
            if isinstance(ei, Adjacency):
                if (ei.num_src, ei.num_dst) != (n_src, n_dst):
                    raise ValueError(f"DiagGAT layer {layer}: adjacency is {ei.num_dst} x {ei.num_src}, "
                                     f"the layer needs {n_dst} x {n_src}")
                graph, extra = ei.edge_index, {"adjacency": ei}
            if kernel[layer]:  # one autograd node over the compiled kernels (attention_layer.py)
                x, alpha = attention_layer.attention_layer(
                    x, torch.cat([w * a_dst, w * a_src]), w / self.heads, ei, negative_slope=self.negative_slope,
                    negative_scores=self.negative_scores, elu=not last, floor=SCORE_FLOOR,
                    flush_input=flush_input and layer == 0)
                attention.append(alpha)
                continue
            # One product for both: [N_src, 2H], a_dst . (w * h_j) then a_src . (w * h_i)
            # (the second half is used on the destination rows only).
            scores = x @ torch.cat([w * a_dst, w * a_src]).t()
            score_nei, score_self = scores[:, :self.heads], scores[:n_dst, self.heads:]
            alpha = self.edge_updater(graph, score=(score_nei, score_self), size=(n_src, n_dst))
            attention.append(alpha)
            alpha = F.dropout(alpha, self.attention_dropout, self.training)
            x = self.propagate(graph, x=x, alpha=alpha, w=w, size=(n_src, n_dst), **extra)
            if not last:
                x = F.elu(x)
        return (x, attention) if return_attention else x

    def edge_update(self, score_j: Tensor, score_i: Tensor, index: Tensor, ptr: Tensor | None,
                    size_i: int | None) -> Tensor:
        """Attention coefficients ``[E, H]``: softmax over each destination's incoming edges."""
        e = F.leaky_relu(score_i + score_j, self.negative_slope)
        e = -e if self.negative_scores else e
        # Scores far below their destination's maximum are raised to a floor
        # (module docstring): their weight is below float32 resolution either
        # way, and products of weights stay normal numbers.
        if ptr is not None:
            e_max = segment(e.detach(), ptr, reduce="max")
        else:
            e_max = scatter(e.detach(), index, dim=0, dim_size=size_i, reduce="max")
        return softmax(torch.maximum(e, e_max[index] - SCORE_FLOOR), index, ptr, size_i)

    def message(self, x_j: Tensor, alpha: Tensor, w: Tensor) -> Tensor:
        return x_j * (alpha @ (w / self.heads))  # = mean_k alpha_ij^k (w_k * h_j)

    def message_and_aggregate(self, edge_index: Tensor, x: Tensor, alpha: Tensor, w: Tensor,
                              adjacency: Adjacency | None) -> Tensor:
        if adjacency is None:  # an EdgeIndex given directly
            adjacency = Adjacency.build(edge_index.as_tensor(), *edge_index.sparse_size())
        return _AttentionAggregate.apply(x, alpha, w / self.heads, adjacency)


def receptive_field(edge_index: Tensor, targets: Tensor, num_nodes: int,
                    layers: int) -> tuple[Tensor, list[Tensor], list[int]]:
    """Nodes and per-layer edges that ``layers`` rounds of message passing
    need for the outputs at ``targets`` (distinct node ids).

    Returns ``(nodes, edges, num_dst)``: ``nodes`` lists pair indices as
    targets first (in the given order, no repeats), then their 1-hop, 2-hop,
    ... in-neighbours; ``edges[l]`` holds layer ``l``'s edges relabelled into
    positions of ``nodes``, i.e. every edge into the first ``num_dst[l]``
    nodes (``num_dst[-1] == len(targets)``).

    >>> import torch
    >>> path = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    >>> nodes, edges, num_dst = receptive_field(path, torch.tensor([0]), 4, 2)
    >>> nodes.tolist(), num_dst, edges[1].tolist()
    ([0, 1, 2], [2, 1], [[1], [0]])
    """
    src, dst = edge_index
    mask = torch.zeros(num_nodes, dtype=torch.bool, device=targets.device)
    mask[targets] = True
    order, counts = [targets], [targets.numel()]
    for _ in range(layers):
        reach = torch.zeros_like(mask)
        reach[src[mask[dst]]] = True
        new = (reach & ~mask).nonzero().flatten()
        mask |= reach
        order.append(new)
        counts.append(counts[-1] + new.numel())
    nodes = torch.cat(order)
    local = torch.full((num_nodes,), -1, dtype=torch.long, device=nodes.device)
    local[nodes] = torch.arange(nodes.numel(), device=nodes.device)
    num_dst = [counts[layers - 1 - layer] for layer in range(layers)]
    edges = []
    for n_dst in num_dst:
        keep = (local[dst] >= 0) & (local[dst] < n_dst)
        edges.append(sort_edge_index(local[edge_index[:, keep]], sort_by_row=False))
    return nodes, edges, num_dst


def _encode(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear(x)``, with the product in ``x``'s dtype when it is a reduced
    precision one (see :class:`ContrastiveTuner`)."""
    if x.dtype == linear.weight.dtype:
        return linear(x)
    return F.linear(x, linear.weight.to(x.dtype)).float() + linear.bias


class ContrastiveTuner(nn.Module):
    """Stage II encoders (paper Eq. 5): any modality given a size of ``None`` is absent.

    Args:
        visual_dim, attribute_dim, relation_dim: raw feature sizes (or ``None``).
        hidden: output size of every modality (300).
        heads, layers, dropout, negative_scores: of the visual :class:`DiagGAT`.

    ``forward(features, edge_index)`` takes a dict modality -> ``[N, d_m]``
    (all present modalities) and returns modality -> ``[N, hidden]`` float32.
    A modality given in ``bfloat16`` has its ``Linear`` product run in
    bfloat16 (the weight is rounded per call; the product accumulates in
    float32 and is returned as float32, the bias added in float32); the
    parameters and everything after the ``Linear`` stay float32.

    >>> import torch
    >>> model = ContrastiveTuner(visual_dim=8, attribute_dim=None, relation_dim=5, hidden=6)
    >>> feats = {"visual": torch.randn(4, 8), "relation": torch.randn(4, 5)}
    >>> edges = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    >>> {m: tuple(h.shape) for m, h in model(feats, edges).items()}
    {'visual': (4, 6), 'relation': (4, 6)}
    """

    def __init__(self, visual_dim: int | None, attribute_dim: int | None, relation_dim: int | None, hidden: int = 300,
                 heads: int = 2, layers: int = 2, dropout: float = 0.0, negative_scores: bool = False) -> None:
        super().__init__()
        dims = dict(zip(MODALITIES, (visual_dim, attribute_dim, relation_dim)))
        self.modalities = tuple(m for m, d in dims.items() if d is not None)
        if not self.modalities:
            raise ValueError("ContrastiveTuner: every modality is absent (all dims are None)")
        self.hidden = hidden
        self.linears = nn.ModuleDict({m: nn.Linear(dims[m], hidden) for m in self.modalities})
        self.gat = (DiagGAT(hidden, layers, heads, dropout=dropout, negative_scores=negative_scores)
                    if visual_dim is not None else None)

    def forward(self, features: dict[str, Tensor], edge_index: Edges | Sequence[Edges],
                num_dst: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Encode every present modality; see :meth:`DiagGAT.forward` for
        ``edge_index`` / ``num_dst``. The other modalities are encoded on every
        row they are given (with ``num_dst``, give them the destination rows)."""
        missing = [m for m in self.modalities if features.get(m) is None]
        if missing:
            raise ValueError(f"ContrastiveTuner.forward: features lack modalities {missing}")
        out = {}
        for m in self.modalities:
            h = _encode(self.linears[m], features[m])
            if m == "visual":
                h = self.gat(h, edge_index, num_dst)
            out[m] = h
        return out
