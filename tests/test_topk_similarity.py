"""psqe.ops.topk_similarity against the dense oracle."""
from __future__ import annotations

import pytest
import torch

import psqe.ops as ops
from psqe import _reference
from conftest import integer_features, tie_free_features

# A grid over shapes that crosses the CPU tiles (2048 rows x 4096 columns).
GRID = [
    # (n, m, d, k)
    (1, 1, 1, 1),
    (7, 5, 7, 10),        # k > m: output has m columns
    (300, 1000, 300, 10),
    (2500, 4500, 7, 1000),
    (3000, 5000, 300, 10),
    (1200, 900, 2048, 1),
    (2100, 4200, 1, 10),
    (64, 3000, 2048, 2048),
]


@pytest.mark.parametrize("n,m,d,k", GRID)
def test_matches_oracle_exactly_on_integer_inputs(device, n, m, d, k):
    a = integer_features(n, d, seed=n + d).to(device)
    b = integer_features(m, d, seed=m + k).to(device)
    v, i = ops.topk_similarity(a, b, k)
    rv, ri = _reference.topk_similarity(a, b, k)
    assert v.shape == (n, min(k, m)) and v.dtype == torch.float32 and i.dtype == torch.long
    torch.testing.assert_close(v, rv, rtol=0, atol=0)
    assert torch.equal(i, ri)


def test_tie_free_randperm_inputs_give_the_exact_order(device):
    a, b = tie_free_features(500, 3000, seed=1)
    v, i = ops.topk_similarity(a.to(device), b.to(device), 25)
    # Each row of a is positive, so every row's order is b's order.
    expected = torch.argsort(b.squeeze(1), descending=True)[:25]
    assert torch.equal(i.cpu(), expected.expand(500, 25))
    torch.testing.assert_close(v.cpu(), a * b.squeeze(1)[expected], rtol=0, atol=0)


def test_float_inputs_agree_with_float64_truth():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1500, 300, generator=g), torch.randn(5000, 300, generator=g)
    v, i = ops.topk_similarity(a, b, 50)
    exact = a.double() @ b.double().T
    truth = torch.topk(exact, 50, dim=1).values
    torch.testing.assert_close(v.double(), truth, rtol=0, atol=1e-4)
    # The returned columns really have the returned values.
    torch.testing.assert_close(exact.gather(1, i), v.double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, dtype):
    a = integer_features(700, 64, seed=5).to(device, dtype)
    b = integer_features(900, 64, seed=6).to(device, dtype)
    v, i = ops.topk_similarity(a, b, 30)
    rv, ri = _reference.topk_similarity(a.double(), b.double(), 30)
    assert v.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(v.double(), rv, rtol=0, atol=0)
    assert torch.equal(i, ri)


def test_non_contiguous_inputs(device):
    big_a = integer_features(800, 600, seed=7).to(device)
    big_b = integer_features(600, 1300, seed=8).to(device)
    a, b = big_a[::2, ::2], big_b.T[::2, ::2]  # strided rows and a transposed view
    assert not a.is_contiguous() and not b.is_contiguous()
    v, i = ops.topk_similarity(a, b, 40)
    rv, ri = _reference.topk_similarity(a.contiguous(), b.contiguous(), 40)
    torch.testing.assert_close(v, rv, rtol=0, atol=0)
    assert torch.equal(i, ri)


def test_exclude_mask(device):
    a = integer_features(400, 32, seed=9).to(device)
    b = integer_features(5000, 32, seed=10).to(device)
    exclude = (torch.rand(5000, generator=torch.Generator().manual_seed(0)) < 0.7).to(device)
    v, i = ops.topk_similarity(a, b, 100, exclude=exclude)
    rv, ri = _reference.topk_similarity(a, b, 100, exclude=exclude)
    assert not bool(exclude[i].any())
    torch.testing.assert_close(v, rv, rtol=0, atol=0)
    assert torch.equal(i, ri)


def test_exclude_leaves_fewer_columns_than_k_pads(device):
    a = integer_features(5, 4, seed=11).to(device)
    b = integer_features(6, 4, seed=12).to(device)
    exclude = torch.tensor([True, False, True, True, False, True], device=device)
    v, i = ops.topk_similarity(a, b, 4)
    assert v.shape == (5, 4)
    v, i = ops.topk_similarity(a, b, 4, exclude=exclude)
    assert torch.equal(torch.sort(i[:, :2], dim=1).values.cpu(), torch.tensor([[1, 4]] * 5))
    assert bool((i[:, 2:] == -1).all()) and bool(torch.isneginf(v[:, 2:]).all())


@pytest.mark.parametrize("n,m,d", [(0, 5, 3), (4, 0, 3), (0, 0, 3), (3, 5, 0)])
def test_empty_inputs(device, n, m, d):
    a, b = torch.zeros(n, d, device=device), torch.ones(m, d, device=device)
    v, i = ops.topk_similarity(a, b, 3)
    assert v.shape == i.shape == (n, min(3, m))
    if n and m:  # d = 0: every similarity is 0, ties go to the smaller column
        assert bool((v == 0).all()) and torch.equal(i.cpu(), torch.arange(3).expand(n, 3))


def test_large_k_over_tiles(device):
    a = integer_features(50, 16, seed=13).to(device)
    b = integer_features(9000, 16, seed=14).to(device)
    v, i = ops.topk_similarity(a, b, ops.MAX_TOPK)
    rv, ri = _reference.topk_similarity(a, b, ops.MAX_TOPK)
    assert torch.equal(i, ri) and torch.equal(v, rv)


@pytest.mark.parametrize(
    "a,b,k,exclude,message",
    [
        (torch.zeros(3), torch.zeros(4, 3), 1, None, "a must be 2-D"),
        (torch.zeros(3, 2), torch.zeros(4, 3), 1, None, "same feature size"),
        (torch.zeros(3, 2), torch.zeros(4, 2), 0, None, "k must be >= 1"),
        (torch.zeros(3, 2), torch.zeros(4, 2), 5000, None, "exceeds the largest supported k"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), 1, None, "float16, bfloat16"),
        (torch.zeros(3, 2), torch.zeros(4, 2, dtype=torch.float64), 1, None, "same dtype"),
        (torch.tensor([[0.0, float("nan")]]), torch.zeros(4, 2), 1, None, "a must be finite"),
        (torch.zeros(3, 2), torch.tensor([[0.0, float("inf")]]), 1, None, "b must be finite"),
        (torch.zeros(3, 2), torch.zeros(4, 2), 1, torch.zeros(3, dtype=torch.bool), r"shape \[m\] = \[4\]"),
        (torch.zeros(3, 2), torch.zeros(4, 2), 1, torch.zeros(4), "bool mask"),
    ],
)
def test_bad_input_is_a_clear_error(a, b, k, exclude, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.psqe.topk_similarity(a, b, k, exclude)


def test_opcheck():
    a, b = integer_features(30, 8, seed=1), integer_features(40, 8, seed=2)
    torch.library.opcheck(torch.ops.psqe.topk_similarity.default, (a, b, 5, None))
    torch.library.opcheck(torch.ops.psqe.topk_similarity.default, (a, b, 5, torch.rand(40) < 0.3))


# --- topk_similarity_both: rows and columns from one pass -------------------


@pytest.mark.parametrize("n,m,d,k", GRID + [(5000, 9000, 16, 64)])
def test_both_matches_two_oracle_calls(device, n, m, d, k):
    a = integer_features(n, d, seed=n + d).to(device)
    b = integer_features(m, d, seed=m + k).to(device)
    rv, ri, cv, ci = ops.topk_similarity_both(a, b, k)
    erv, eri = _reference.topk_similarity(a, b, k)
    ecv, eci = _reference.topk_similarity(b, a, k)
    assert cv.shape == ci.shape == (m, min(k, n)) and cv.dtype == torch.float32
    for got, want in ((rv, erv), (ri, eri), (cv, ecv), (ci, eci)):
        assert torch.equal(got, want)


def test_both_oracle_is_one_pass_with_ties_across_blocks():
    """The oracle's columns come from the row blocks' products (2,500 rows: three blocks), merged with
    ties to the smaller row: integer features tie often, across blocks too."""
    a, b = integer_features(2500, 6, seed=3, low=-1, high=2), integer_features(700, 6, seed=4, low=-1, high=2)
    got = _reference.topk_similarity_both(a, b, 40)
    want = (*_reference.topk_similarity(a, b, 40), *_reference.topk_similarity(b, a, 40))
    assert int((got[2][:, :-1] == got[2][:, 1:]).sum()) > 1000  # many ties within the column lists
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("impl", ["ops", "oracle"])
def test_both_give_a_pair_one_score(device, impl):
    """A pair in row i's list and column j's list carries the same score in both, bit for bit (the greedy
    walk's exactness argument needs it); float inputs, so two products could round apart. On this CPU's
    BLAS ``a @ b.T`` and ``b @ a.T`` happened to agree here even for two calls; the check bites where
    they do not (CUDA, other BLAS builds)."""
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(2100, 96, generator=g).to(device), torch.randn(1300, 96, generator=g).to(device)
    both = ops.topk_similarity_both if impl == "ops" else _reference.topk_similarity_both
    rv, ri, cv, ci = both(a, b, 30)
    n, m = a.shape[0], b.shape[0]
    row_key = (torch.arange(n, device=device).unsqueeze(1) * m + ri).flatten()
    col_key = (ci * m + torch.arange(m, device=device).unsqueeze(1)).flatten()
    row_key, order = torch.sort(row_key)
    at = torch.searchsorted(row_key, col_key).clamp(max=row_key.numel() - 1)
    shared = row_key[at] == col_key
    assert int(shared.sum()) > 5000
    assert torch.equal(rv.flatten()[order][at[shared]], cv.flatten()[shared])


def test_both_columns_agree_with_float64_truth():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(4500, 300, generator=g), torch.randn(1500, 300, generator=g)
    _, _, cv, ci = ops.topk_similarity_both(a, b, 50)
    exact = (a.double() @ b.double().T).T  # column j of a @ b.T
    torch.testing.assert_close(cv.double(), torch.topk(exact, 50, dim=1).values, rtol=0, atol=1e-4)
    torch.testing.assert_close(exact.gather(1, ci), cv.double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_both_dtypes_and_strides(device, dtype):
    big_a = integer_features(1400, 130, seed=15).to(device, dtype)
    big_b = integer_features(900, 130, seed=16).to(device, dtype)
    a, b = big_a[::2, ::2], big_b[:, ::2]
    assert not a.is_contiguous()
    out = ops.topk_similarity_both(a, b, 20)
    ref = _reference.topk_similarity_both(a.double(), b.double(), 20)
    assert out[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for got, want in zip(out, ref):
        assert torch.equal(got.double() if got.is_floating_point() else got, want)


@pytest.mark.parametrize("n,m", [(0, 5), (4, 0), (0, 0)])
def test_both_empty_inputs(device, n, m):
    rv, ri, cv, ci = ops.topk_similarity_both(torch.zeros(n, 3, device=device), torch.ones(m, 3, device=device), 3)
    assert rv.shape == ri.shape == (n, min(3, m)) and cv.shape == ci.shape == (m, min(3, n))


@pytest.mark.parametrize(
    "a,b,k,message",
    [
        (torch.zeros(3, 2), torch.zeros(4, 3), 1, "same feature size"),
        (torch.zeros(3, 2), torch.zeros(4, 2), 0, "k must be >= 1"),
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), 1, "float16, bfloat16"),
        (torch.zeros(3, 2), torch.tensor([[0.0, float("nan")]]), 1, "b must be finite"),
    ],
)
def test_both_bad_input_is_a_clear_error(a, b, k, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.psqe.topk_similarity_both(a, b, k)
    with pytest.raises((ValueError, TypeError)):  # the oracle (fallback) rejects it too
        _reference.topk_similarity_both(a, b, k)


def test_both_opcheck():
    a, b = integer_features(30, 8, seed=1), integer_features(40, 8, seed=2)
    torch.library.opcheck(torch.ops.psqe.topk_similarity_both.default, (a, b, 5))


# --- gradients -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_ops_take_trained_embeddings_and_return_no_gradient(backend, monkeypatch):
    """Embeddings under training (requires_grad) go in as they are, on either backend, and give the values of
    their detached selves without a gradient (the compiled kernels had raised an autograd error from inside
    the GEMM, the oracle returned differentiable values)."""
    if backend == "compiled" and ops.backend() != "compiled":
        pytest.skip("the compiled core is not built")
    if backend == "reference":
        monkeypatch.setattr(ops, "_BUILD_INFO", None)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 6, generator=g), torch.randn(15, 6, generator=g)
    ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
    for got, want in ((ops.topk_similarity(ga, gb, 4), ops.topk_similarity(a, b, 4)),
                      (ops.topk_similarity_both(ga, gb, 4), ops.topk_similarity_both(a, b, 4)),
                      ((ops.mic_keep(ga[:15], gb, True),), (ops.mic_keep(a[:15], b, True),))):
        assert all(not x.requires_grad and torch.equal(x, y) for x, y in zip(got, want))
    scores = torch.rand(10, generator=g, requires_grad=True)
    rows, cols = torch.arange(10) % 4, torch.arange(10) % 3
    assert torch.equal(ops.greedy_match(scores, rows, cols), ops.greedy_match(scores.detach(), rows, cols))


@pytest.mark.skipif(ops.backend() != "compiled", reason="the compiled core is not built")
def test_gat_aggregate_called_directly_refuses_backward():
    """The bare aggregation kernel has no gradient formula: backward through it is an error, not a None .grad."""
    crow, col = torch.tensor([0, 2, 3]), torch.tensor([0, 1, 1])
    x = torch.rand(2, 4, requires_grad=True)
    out = torch.ops.psqe.gat_aggregate(crow, col, torch.rand(3, 1), x, torch.ones(1, 4))
    with pytest.raises(RuntimeError, match="no gradient of its own"):
        out.sum().backward()
    assert x.grad is None
