"""psqe.matching.greedy_one_to_one: sparse candidates == the dense greedy walk."""
from __future__ import annotations

import pytest
import torch

from psqe import _reference
from psqe.matching import greedy_one_to_one, snap
from conftest import integer_features


def dense_greedy(a, b, limit=None, used_rows=None, used_cols=None):
    """Greedy walk over every pair of the dense similarity, snapped to the tie grid as greedy_one_to_one
    walks it (a no-op on integer inputs)."""
    sim = snap(a @ b.T)
    n, m = sim.shape
    rows = torch.arange(n).repeat_interleave(m)
    cols = torch.arange(m).repeat(n)
    pos = _reference.greedy_match(sim.reshape(-1), rows, cols, limit, used_rows, used_cols)
    return rows[pos], cols[pos]


@pytest.mark.parametrize("n,m,limit,k", [(300, 400, 100, 4), (500, 450, 300, 2), (200, 200, None, 8), (1000, 1200, 1000, 3)])
def test_equals_dense_greedy(n, m, limit, k):
    a, b = integer_features(n, 12, seed=n), integer_features(m, 12, seed=m)
    res = greedy_one_to_one(a, b, limit=limit, k=k)
    assert res.exact
    r, c = dense_greedy(a, b, limit)
    assert torch.equal(res.rows, r) and torch.equal(res.cols, c)
    torch.testing.assert_close(res.scores, (a[r] * b[c]).sum(1), rtol=0, atol=0)


def test_matches_the_scripts_selection_on_planted_features():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(1500, 64, generator=g), dim=1)
    perm = torch.randperm(1500, generator=g)
    b = torch.nn.functional.normalize(a[perm] + 0.6 * torch.randn(1500, 64, generator=g), dim=1)
    res = greedy_one_to_one(a, b, limit=500, k=10)
    # the script's walk on the scores snapped to the tie grid (scores within ~1e-6 tie; ties go by (i, j))
    script = _reference.script_greedy(snap(a @ b.T), 500)
    assert res.exact and list(zip(res.rows.tolist(), res.cols.tolist())) == script
    # on these features some candidates are within 1e-6 of each other: unsnapped, the order differs
    assert _reference.script_greedy(a @ b.T, 500) != script


def test_near_ties_go_by_index_whatever_the_rounding():
    """Identical vectors score equal but for rounding, which depends on the kernel and the thread count: the
    walk takes them by (i, j), as PSQE-SPEC asks, not by the rounding noise."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=1)
    perm = torch.randperm(300, generator=g)
    b = a[perm].clone()
    inverse = torch.argsort(perm)  # a[i] == b[inverse[i]]
    expected = [(i, int(inverse[i])) for i in range(100)]  # all 300 pairs score 1: the 100 smallest rows win
    for trial in range(3):
        noisy = b * (1 + 1e-7 * torch.randn(300, 1, generator=g))  # what another rounding order could give
        res = greedy_one_to_one(a, noisy, limit=100, k=4)
        assert list(zip(res.rows.tolist(), res.cols.tolist())) == expected, trial


def test_small_k_is_detected_and_widened():
    a, b = integer_features(400, 6, seed=1), integer_features(400, 6, seed=2)
    narrow = greedy_one_to_one(a, b, limit=None, k=1, widen=False)
    assert not narrow.exact
    r, c = dense_greedy(a, b)
    assert not (torch.equal(narrow.rows, r) and torch.equal(narrow.cols, c))
    wide = greedy_one_to_one(a, b, limit=None, k=1)
    assert wide.exact and wide.k > 1
    assert torch.equal(wide.rows, r) and torch.equal(wide.cols, c)


@pytest.mark.parametrize("seed", range(6))
def test_exact_flag_is_never_wrong(seed):
    a, b = integer_features(150, 3, seed=seed, low=-2, high=3), integer_features(170, 3, seed=seed + 50, low=-2, high=3)
    for k in (1, 2, 3):
        for limit in (10, 60, None):
            res = greedy_one_to_one(a, b, limit=limit, k=k, widen=False)
            if res.exact:
                r, c = dense_greedy(a, b, limit)
                assert torch.equal(res.rows, r) and torch.equal(res.cols, c), (k, limit)


def test_a_partner_the_snap_ties_with_the_last_candidate_is_not_missed():
    """Row 0 scores column 0 at 0.5 - 2^-23 and column 1 at 0.5: the raw top-1 is column 1, but snapped they
    tie and column 0 goes first. Column 0's own top-1 is row 1 (0.5 raw), so no top-1 list holds (0, 0), and
    every entity is matched to its own candidate: a walk on those lists keeps (0, 1), (1, 0) and sees nothing
    wrong, where the dense walk keeps (0, 0), (1, 1)."""
    a = torch.eye(3)
    b = torch.tensor([[0.5 - 2.0 ** -23, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (a @ b.T)[i, j] = b[j, i]
    dense = _reference.script_greedy(snap(a @ b.T), 3)
    assert dense == [(2, 2), (0, 0), (1, 1)]
    narrow = greedy_one_to_one(a, b, limit=None, k=1, widen=False)
    assert not narrow.exact
    wide = greedy_one_to_one(a, b, limit=None, k=1)
    assert wide.exact and list(zip(wide.rows.tolist(), wide.cols.tolist())) == dense


def test_exact_flag_is_never_wrong_on_near_ties():
    """Small pairs with scores on a coarse lattice, nudged by less than the tie grid: the snap turns them back
    into ties that the raw top-k broke by the nudge, not by index. Whenever a result claims to be exact it is
    the dense walk on snapped scores (before the sentinel, 5 of these 200 claims were wrong)."""
    exact = 0
    for trial in range(200):
        g = torch.Generator().manual_seed(trial)
        a = torch.randint(0, 3, (6, 2), generator=g).float() / 8
        b = torch.randint(0, 3, (7, 2), generator=g).float() / 8
        b = b * (1 + 2.0 ** -24 * torch.randint(-3, 4, b.shape, generator=g))
        for k in (1, 2):
            for limit in (3, None):
                res = greedy_one_to_one(a, b, limit=limit, k=k, widen=False)
                if res.exact:
                    exact += 1
                    r, c = dense_greedy(a, b, limit)
                    assert torch.equal(res.rows, r) and torch.equal(res.cols, c), (trial, k, limit)
                wide = greedy_one_to_one(a, b, limit=limit, k=k)
                r, c = dense_greedy(a, b, limit)
                assert wide.exact and torch.equal(wide.rows, r) and torch.equal(wide.cols, c), (trial, k, limit)
    assert exact >= 5


def test_an_inexact_result_walks_every_fetched_candidate():
    """Zero rows tie with every partner, so the sentinel trim empties their lists; a result that cannot be
    proved exact walks all k + 1 fetched candidates instead, so they can still be matched (as before the
    trim)."""
    from psqe import ops

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    b = torch.nn.functional.normalize(a[torch.randperm(300, generator=g)] + 0.5 * torch.randn(300, 16, generator=g), dim=1)
    a[:20], b[:20] = 0, 0
    res = greedy_one_to_one(a, b, limit=None, k=4, widen=False)
    assert not res.exact and bool((res.rows < 20).any())
    vr, ir, vc, ic = ops.topk_similarity_both(a, b, 5)
    vr, vc = snap(vr), snap(vc)
    scores = torch.cat([vr.reshape(-1), vc.reshape(-1)])
    rows = torch.cat([torch.arange(300).repeat_interleave(5), ic.reshape(-1)])
    cols = torch.cat([ir.reshape(-1), torch.arange(300).repeat_interleave(5)])
    pos = ops.greedy_match(scores, rows, cols, None)
    assert torch.equal(res.rows, rows[pos]) and torch.equal(res.cols, cols[pos])


def test_used_entities_are_respected():
    a, b = integer_features(300, 10, seed=3), integer_features(300, 10, seed=4)
    used_r, used_c = torch.arange(0, 300, 2), torch.arange(100)
    res = greedy_one_to_one(a, b, limit=80, k=4, used_rows=used_r, used_cols=used_c)
    r, c = dense_greedy(a, b, 80, used_r, used_c)
    assert res.exact and torch.equal(res.rows, r) and torch.equal(res.cols, c)


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 1"):
        greedy_one_to_one(torch.zeros(3, 2), torch.zeros(3, 2), k=0)
    with pytest.raises(ValueError, match="must be 2-D"):
        greedy_one_to_one(torch.zeros(3), torch.zeros(3, 2))
