"""The compiled attention-layer kernels (psqe::gat_aggregate and its two
backward ops) against dense float64 references, and the autograd node built
on them (psqe.seeds.attention_layer) against torch's own gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from psqe import ops
from psqe.seeds import attention_layer
from psqe.seeds.attention import GRAD_FLUSH, Adjacency

pytestmark = [pytest.mark.one_thread,
              pytest.mark.skipif(ops.backend() != "compiled", reason="the compiled core is not loaded")]

OPS = torch.ops.psqe


def graph(n_src: int, n_dst: int, m: int, seed: int) -> Adjacency:
    """Random edges into the first n_dst nodes, a repeated edge, and a destination without edges."""
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, n_src, (m,), generator=g), torch.randint(0, n_dst - 1, (m,), generator=g)
    src, dst = torch.cat([src, src[:2]]), torch.cat([dst, dst[:2]])
    return Adjacency.build(torch.stack([src, dst]), n_src, n_dst)


def dense(adj: Adjacency, alpha: torch.Tensor, k: int) -> torch.Tensor:
    """Head k's [num_dst, num_src] matrix (repeated edges add up)."""
    a = torch.zeros(adj.num_dst, adj.num_src, dtype=alpha.dtype)
    src, dst = adj.edge_index.as_subclass(torch.Tensor)
    a.index_put_((dst, src), alpha[:, k], accumulate=True)
    return a


def inputs(adj: Adjacency, d: int, heads: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(adj.num_edges, heads, generator=g, dtype=dtype)
    x = torch.randn(adj.num_src, d, generator=g, dtype=dtype)
    scale = torch.randn(heads, d, generator=g, dtype=dtype)
    return alpha, x, scale


@pytest.mark.parametrize("heads,d", [(1, 5), (2, 300), (3, 17)])
def test_forward_and_backward_match_dense_references(heads, d):
    adj = graph(40, 25, 120, seed=heads)
    alpha, x, scale = inputs(adj, d, heads, seed=1)
    mats = [dense(adj, alpha, k) for k in range(heads)]
    ref = sum((m @ x) * scale[k] for k, m in enumerate(mats))
    out = OPS.gat_aggregate(adj.crow, adj.col, alpha, x, scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert bool((out[-1] == 0).all())  # the destination without edges

    # backward through an ELU, against autograd on the dense form
    a_ = alpha.clone().requires_grad_()
    x_, s_ = x.clone().requires_grad_(), scale.clone().requires_grad_()
    pre = sum((dense(adj, a_, k) @ x_) * s_[k] for k in range(heads))
    y = F.elu(pre)
    grad_y = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2))
    want_pre, want_alpha, want_x, want_scale = torch.autograd.grad(y, [pre, a_, x_, s_], grad_y)
    g, grad_alpha, grad_scale = OPS.gat_aggregate_backward(adj.crow, adj.col, alpha, x, scale, y.detach(),
                                                           grad_y, True, GRAD_FLUSH)
    torch.testing.assert_close(g, want_pre, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_alpha, want_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_scale, want_scale, rtol=1e-10, atol=1e-12)
    src_ptr, by_dst, edge = adj.by_source()
    grad_x = OPS.gat_aggregate_backward_input(src_ptr, by_dst, edge, alpha, scale, g)
    torch.testing.assert_close(grad_x, want_x, rtol=1e-10, atol=1e-12)
    # the low-rank term is added: dS @ W
    low = torch.randn(adj.num_src, 4, dtype=x.dtype)
    weight = torch.randn(4, d, dtype=x.dtype)
    torch.testing.assert_close(OPS.gat_aggregate_backward_input(src_ptr, by_dst, edge, alpha, scale, g, low, weight),
                               want_x + low @ weight, rtol=1e-10, atol=1e-12)


def test_float32_matches_float64():
    adj = graph(500, 300, 3000, seed=5)
    alpha, x, scale = inputs(adj, 64, 2, seed=3)
    out64 = OPS.gat_aggregate(adj.crow, adj.col, alpha, x, scale)
    out32 = OPS.gat_aggregate(adj.crow, adj.col, alpha.float(), x.float(), scale.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)


def test_flush_zeroes_tiny_gradients_and_keeps_nan():
    adj = graph(30, 30, 90, seed=4)
    alpha, x, scale = inputs(adj, 8, 2, seed=5, dtype=torch.float32)
    grad = torch.randn(30, 8)
    grad[:5] = 1e-40  # subnormal
    grad[5:10] = GRAD_FLUSH / 4
    grad[10, 3] = float("nan")
    g, grad_alpha, _ = OPS.gat_aggregate_backward(adj.crow, adj.col, alpha, x, scale, x[:30], grad, False, GRAD_FLUSH)
    assert bool((g[:10] == 0).all()) and torch.equal(g[11:], grad[11:])
    assert torch.isnan(g[10, 3]) and torch.isnan(grad_alpha[adj.crow[10]:adj.crow[11]]).all()
    src_ptr, by_dst, edge = adj.by_source()
    tiny = torch.full((30, 8), GRAD_FLUSH / 1000)  # sums of a few of these stay below the floor
    assert bool((OPS.gat_aggregate_backward_input(src_ptr, by_dst, edge, alpha.abs(), scale.abs(), tiny,
                                                  flush=GRAD_FLUSH) == 0).all())
    assert bool((OPS.gat_aggregate_backward_input(src_ptr, by_dst, edge, alpha.abs(), scale.abs(), tiny) != 0).any())


def test_grad_scale_does_not_depend_on_the_thread_count():
    adj = graph(3000, 2000, 20000, seed=6)
    alpha, x, scale = inputs(adj, 32, 2, seed=7, dtype=torch.float32)
    grad = torch.randn(2000, 32)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append(OPS.gat_aggregate_backward(adj.crow, adj.col, alpha, x, scale, x[:2000], grad, True, GRAD_FLUSH))
    torch.set_num_threads(1)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_attention_layer_gradcheck():
    """The whole node (scores, edge softmax with its floor, aggregation, ELU) in float64."""
    adj = graph(9, 6, 20, seed=8)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    wcat = torch.randn(4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    scale = torch.randn(2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    for negative in (False, True):
        def layer(x, wcat, scale):
            return attention_layer.attention_layer(x, wcat, scale, adj, negative_slope=0.2, negative_scores=negative,
                                                   elu=True, floor=30.0, flush_input=False)[0]
        assert torch.autograd.gradcheck(layer, (x, wcat, scale))


def test_bad_input_raises_clear_errors():
    adj = graph(10, 6, 20, seed=10)
    alpha, x, scale = inputs(adj, 4, 2, seed=11)
    with pytest.raises(RuntimeError, match="col must lie in"):
        OPS.gat_aggregate(adj.crow, adj.col + 10, alpha, x, scale)
    with pytest.raises(RuntimeError, match="crow must start at 0 and end at the number of edges"):
        short = adj.crow.clone()
        short[-1] -= 1
        OPS.gat_aggregate(short, adj.col, alpha, x, scale)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        bad = adj.crow.clone()
        bad[1] = bad[2] + 1  # entry 2 now below entry 1
        OPS.gat_aggregate(bad, adj.col, alpha, x, scale)
    with pytest.raises(RuntimeError, match="alpha must be Double like x"):
        OPS.gat_aggregate(adj.crow, adj.col, alpha.float(), x, scale)
    with pytest.raises(RuntimeError, match=r"scale must be \[heads, d\]"):
        OPS.gat_aggregate(adj.crow, adj.col, alpha, x, scale[:1])
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        OPS.gat_aggregate(adj.crow, adj.col, alpha.half(), x.half(), scale.half())
    with pytest.raises(RuntimeError, match="grad_out must be"):
        OPS.gat_aggregate_backward(adj.crow, adj.col, alpha, x, scale, x[:6], x[:5], True, 0.0)
    src_ptr, by_dst, edge = adj.by_source()
    g = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="both low_grad and low_weight"):
        OPS.gat_aggregate_backward_input(src_ptr, by_dst, edge, alpha, scale, g, torch.zeros(10, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="dst must lie in"):
        OPS.gat_aggregate_backward_input(src_ptr, by_dst, edge, alpha, scale, g[:2])
    with pytest.raises(ValueError, match="adjacency"):
        attention_layer.attention_layer(x[:5], torch.zeros(4, 4, dtype=torch.float64), scale, adj, negative_slope=0.2,
                                        negative_scores=False, elu=False, floor=30.0, flush_input=False)
