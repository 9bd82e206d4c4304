"""The bfloat16-screened CPU path of psqe.ops.topk_similarity
(csrc/ops/cpu/topk_screen.h): it must return what the float32 path returns,
and fall back to it row by row when it cannot certify a row.

``PSQE_TOPK_SCREEN=on`` forces the screen at every size; the counters of
``torch.ops.psqe._topk_screen_stats`` show that it ran and how many rows it
recomputed in float32.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import psqe.ops as ops
from psqe import _reference
from conftest import integer_features

pytestmark = pytest.mark.skipif(ops.backend() != "compiled", reason="the screen is part of the compiled CPU kernel")


def _stats() -> tuple[int, int, int]:
    """(rows screened, of those recomputed, calls that gave up) since load."""
    screened, recomputed, abandoned = torch.ops.psqe._topk_screen_stats()
    return screened, recomputed, abandoned


def _run(a, b, k, exclude=None):
    """``topk_similarity`` and the (screened, recomputed, gave up) counts of the call."""
    before = _stats()
    out = ops.topk_similarity(a, b, k, exclude)
    after = _stats()
    return out, tuple(x - y for x, y in zip(after, before))


@pytest.fixture
def screen(monkeypatch):
    """Sets PSQE_TOPK_SCREEN; skips when this libtorch has no bfloat16 GEMM to screen with."""
    monkeypatch.setenv("PSQE_TOPK_SCREEN", "on")
    _, (screened, _, _) = _run(torch.ones(2, 8), torch.ones(3, 8), 1)
    if screened == 0:
        pytest.skip("no MKL cblas_gemm_bf16bf16f32 in this libtorch: the screen never runs")
    return lambda mode: monkeypatch.setenv("PSQE_TOPK_SCREEN", mode)


@pytest.mark.parametrize("n,m,d,k", [(1, 1, 1, 1), (7, 5, 7, 10), (300, 1000, 300, 10), (2500, 4500, 7, 100),
                                     (1200, 900, 2048, 1), (64, 3000, 256, 2048)])
def test_integer_inputs_equal_the_oracle_exactly(screen, n, m, d, k):
    # Products and sums of small integers are exact in both paths; ties are
    # plentiful, so some rows cannot be certified and take the float32 path.
    a, b = integer_features(n, d, seed=n + d), integer_features(m, d, seed=m + k)
    exclude = torch.arange(m) % 7 == 3
    (v, i), (screened, recomputed, gave_up) = _run(a, b, k, exclude)
    rv, ri = _reference.topk_similarity(a, b, k, exclude)
    # At least the first block of 2048 rows is screened; it may give up after it.
    assert min(n, 2048) <= screened <= n and 0 <= recomputed <= screened and gave_up in (0, 1)
    torch.testing.assert_close(v, rv, rtol=0, atol=0)
    assert torch.equal(i, ri)


@pytest.mark.parametrize("d", [300, 1024])
def test_unit_rows_agree_with_float64_truth(screen, d):
    g = torch.Generator().manual_seed(d)
    a = F.normalize(torch.randn(2000, d, generator=g), dim=1)
    b = F.normalize(torch.randn(6000, d, generator=g), dim=1)
    exclude = torch.rand(6000, generator=g) < 0.2
    (v, i), (screened, recomputed, gave_up) = _run(a, b, 10, exclude)
    assert (screened, gave_up) == (2000, 0) and recomputed < 20  # random rows: the hardest case for the certificate
    exact = (a.double() @ b.double().T).masked_fill_(exclude, -torch.inf)
    truth = torch.topk(exact, 11, dim=1)
    torch.testing.assert_close(v.double(), truth.values[:, :10], rtol=0, atol=1e-6)
    torch.testing.assert_close(exact.gather(1, i), v.double(), rtol=0, atol=1e-6)
    # Indices differ only where float64 values are closer than float32 can
    # tell: compare the places clear of both neighbours (the 11th included).
    clear = (truth.values[:, :-1] - truth.values[:, 1:]) > 1e-6
    tie_free = clear.clone()
    tie_free[:, 1:] &= clear[:, :-1]
    assert tie_free.float().mean() > 0.99
    assert torch.equal(i[tie_free], truth.indices[:, :10][tie_free])
    screen("off")
    _, (screened_off, _, _) = _run(a, b, 10, exclude)
    assert screened_off == 0


def test_values_bfloat16_cannot_tell_apart_are_recomputed(screen):
    # Every b entry is 1 + f_j with f_j < 2^-8: it rounds to 1 in bfloat16, so
    # every screened value is d and no row can be certified.
    m, d = 500, 256
    f = torch.randperm(m, generator=torch.Generator().manual_seed(0)).float() / m * 2.0 ** -9
    a, b = torch.ones(40, d), (1.0 + f).unsqueeze(1).expand(m, d).contiguous()
    (v, i), counts = _run(a, b, 5)
    assert counts == (40, 40, 1)  # and more than a quarter failed: it gives up
    assert torch.equal(i, torch.argsort(f, descending=True)[:5].expand(40, 5))
    torch.testing.assert_close(v, _reference.topk_similarity(a, b, 5)[0], rtol=0, atol=0)


def test_rescoring_orders_what_the_screen_ties(screen):
    # Ten columns near 2d that bfloat16 rounds to exactly 2d, far above 490 at
    # d: the certificate holds and the float32 rescoring orders the ten.
    d = 128
    f = torch.randperm(10, generator=torch.Generator().manual_seed(1)).float() * 2.0 ** -12
    b = torch.ones(500, d)
    b[100:110] = (2.0 * (1.0 + f)).unsqueeze(1)
    (v, i), counts = _run(torch.ones(3, d), b, 5)
    assert counts == (3, 0, 0)
    assert torch.equal(i, (100 + torch.argsort(f, descending=True)[:5]).expand(3, 5))
    torch.testing.assert_close(v, (2.0 * d * (1.0 + f)).sort(descending=True).values[:5].expand(3, 5))


def test_bound_covers_rounding_that_reverses_the_order(screen):
    # d = 256, a = ones. Columns P_j: every entry 1 + 2^-8 (1 - e_j), which
    # bfloat16 rounds down to 1: true 257 - e_j, screened 256. Columns Q:
    # half the entries 1 + 2^-8 (1 + 1e-3) (rounded up to 1 + 2^-7), half 1:
    # true about 256.5, screened 257. The screen ranks every Q above every P,
    # the truth every P above every Q; only a bound of at least 0.5 keeps
    # the P columns among the rescored ones (ours is about 1.0 here).
    d, u = 256, 2.0 ** -8
    e = (torch.arange(20, dtype=torch.float64) + 1) * 1e-3
    p_cols = (1 + u * (1 - e)).float().unsqueeze(1).expand(20, d)
    q_cols = torch.ones(10, d)
    q_cols[:, ::2] = 1 + u * (1 + 1e-3)
    b = torch.cat([q_cols, p_cols, torch.full((500, d), 0.5)])
    assert torch.equal(b[10:30].bfloat16().float(), torch.ones(20, d))  # the premise: P rounds to 1
    (v, i), counts = _run(torch.ones(4, d), b, 5)
    assert counts == (4, 0, 0)  # certified: the filler at 128 is far below
    assert torch.equal(i, torch.arange(10, 15).expand(4, 5))  # P_1..P_5, smallest e first
    torch.testing.assert_close(v.double(), (257 - e[:5]).expand(4, 5), rtol=0, atol=1e-4)


def test_strided_inputs_and_huge_norms(screen):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(600, 400, generator=g)[:, ::2]
    b = torch.randn(200, 3000, generator=g).T
    (v, i), _ = _run(a, b, 7)
    exact = a.double() @ b.double().T
    torch.testing.assert_close(exact.gather(1, i), v.double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(v.double(), exact.topk(7, dim=1).values, rtol=0, atol=1e-4)
    # Norm products past 1e36 give no useful bound: every row is recomputed.
    big = torch.randn(50, 200, generator=g) * 1e18
    (v, i), counts = _run(big, big * 10, 3)
    assert counts == (0, 0, 1)
    screen("off")
    rv, ri = ops.topk_similarity(big, big * 10, 3)
    assert torch.equal(i, ri) and torch.equal(v, rv)


@pytest.mark.parametrize("n,m,d,k", [(7, 5, 7, 10), (300, 1000, 300, 10), (2500, 4500, 7, 100), (3000, 2100, 256, 1)])
def test_both_directions_equal_two_oracle_calls(screen, n, m, d, k):
    a, b = integer_features(n, d, seed=n + d), integer_features(m, d, seed=m + k)
    before = _stats()
    rv, ri, cv, ci = ops.topk_similarity_both(a, b, k)
    after = _stats()
    assert after[0] - before[0] in (n + m, min(n, 2048)) or after[2] > before[2]
    ref_rv, ref_ri = _reference.topk_similarity(a, b, k)
    ref_cv, ref_ci = _reference.topk_similarity(b, a, k)
    torch.testing.assert_close((rv, cv), (ref_rv, ref_cv), rtol=0, atol=0)
    assert torch.equal(ri, ref_ri) and torch.equal(ci, ref_ci)


def test_both_directions_on_unit_rows_and_unresolvable_columns(screen):
    g = torch.Generator().manual_seed(9)
    a = F.normalize(torch.randn(3000, 384, generator=g), dim=1)
    b = F.normalize(torch.randn(2500, 384, generator=g), dim=1)
    before = _stats()
    rv, ri, cv, ci = ops.topk_similarity_both(a, b, 10)
    after = _stats()
    assert after[0] - before[0] == 5500 and after[1] - before[1] < 20 and after[2] == before[2]
    exact = a.double() @ b.double().T
    torch.testing.assert_close(rv.double(), exact.topk(10, dim=1).values, rtol=0, atol=1e-6)
    torch.testing.assert_close(cv.double(), exact.T.topk(10, dim=1).values, rtol=0, atol=1e-6)
    torch.testing.assert_close(exact.gather(1, ri), rv.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(exact.T.gather(1, ci), cv.double(), rtol=0, atol=1e-6)
    # Rows of a that bfloat16 rounds to one vector: column 0's top 3 is
    # beyond the screen, as is every other one's (all ties at 0).
    f = torch.randperm(400, generator=g).float() / 400 * 2.0 ** -9
    a = (1.0 + f).unsqueeze(1).expand(400, 128).contiguous()
    b = torch.cat([torch.ones(1, 128), torch.zeros(99, 128)])
    before = _stats()
    rv, ri, cv, ci = ops.topk_similarity_both(a, b, 3)
    assert _stats()[2] - before[2] == 1  # every row failed: the float32 path redid both directions
    assert torch.equal(ci[0], torch.argsort(f, descending=True)[:3])
    ref = _reference.topk_similarity(b, a, 3)
    assert torch.equal(ci, ref[1]) and torch.equal(cv, ref[0])


def test_bfloat16_inputs_match_float64_truth():
    # bfloat16 inputs multiply exactly in float32 (on a CPU with native
    # bfloat16 products through the bfloat16 GEMM, elsewhere after conversion).
    g = torch.Generator().manual_seed(11)
    a = F.normalize(torch.randn(2500, 384, generator=g), dim=1).bfloat16()
    b = F.normalize(torch.randn(4500, 384, generator=g), dim=1).bfloat16()
    v, i = ops.topk_similarity(a, b, 10)
    assert v.dtype == torch.float32
    exact = a.double() @ b.double().T
    torch.testing.assert_close(v.double(), exact.topk(10, dim=1).values, rtol=0, atol=1e-6)
    torch.testing.assert_close(exact.gather(1, i), v.double(), rtol=0, atol=1e-6)
    rv, ri, cv, ci = ops.topk_similarity_both(a, b, 10)
    assert torch.equal(rv, v) and torch.equal(ri, i)
    torch.testing.assert_close(cv.double(), exact.T.topk(10, dim=1).values, rtol=0, atol=1e-6)


def test_auto_leaves_small_problems_alone(screen):
    screen("auto")
    # d below 128: the GEMM does not dominate, the float32 path runs.
    _, counts = _run(torch.randn(100, 64), torch.randn(5000, 64), 10)
    assert counts == (0, 0, 0)


def test_bad_mode_is_a_clear_error(screen):
    screen("fast")
    with pytest.raises(RuntimeError, match="PSQE_TOPK_SCREEN must be auto, on or off"):
        ops.topk_similarity(torch.randn(3, 4), torch.randn(5, 4), 2)
