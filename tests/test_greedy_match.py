"""psqe.ops.greedy_match against the script's dense walk and the rounds oracle."""
from __future__ import annotations

import pytest
import torch

import psqe.ops as ops
from psqe import _reference


def random_candidates(c: int, n: int, m: int, seed: int, integer_scores: bool = False):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 50, (c,), generator=g).float() if integer_scores else torch.randn(c, generator=g)
    return scores, torch.randint(0, n, (c,), generator=g), torch.randint(0, m, (c,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_scripts_dense_greedy_on_2k_matrices(seed):
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(2000, 2000, generator=g)
    k = 1000
    script = _reference.script_greedy(sim, k)
    rows = torch.arange(2000).repeat_interleave(2000)
    cols = torch.arange(2000).repeat(2000)
    pos = ops.greedy_match(sim.reshape(-1), rows, cols, limit=k)
    assert list(zip(rows[pos].tolist(), cols[pos].tolist())) == script


@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("limit", [None, 0, 1, 100, 10**9])
def test_matches_rounds_oracle(device, integer_scores, limit):
    scores, rows, cols = random_candidates(50_000, 3000, 2500, seed=7, integer_scores=integer_scores)
    pos = ops.greedy_match(scores.to(device), rows.to(device), cols.to(device), limit)
    ref = _reference.greedy_match(scores, rows, cols, limit)
    assert torch.equal(pos.cpu(), ref)


def test_selection_is_a_matching_in_walk_order():
    scores, rows, cols = random_candidates(20_000, 500, 700, seed=3, integer_scores=True)
    pos = ops.greedy_match(scores, rows, cols)
    r, c, s = rows[pos], cols[pos], scores[pos]
    assert r.unique().numel() == r.numel() and c.unique().numel() == c.numel()
    key = [(-float(x), int(y), int(z)) for x, y, z in zip(s, r, c)]
    assert key == sorted(key)  # score desc, then row, then col
    # Maximality: every candidate touches a selected row or column.
    assert bool((torch.isin(rows, r) | torch.isin(cols, c)).all())


def test_pre_used_rows_and_cols(device):
    scores, rows, cols = random_candidates(30_000, 1000, 1000, seed=4)
    used_r, used_c = torch.arange(0, 1000, 3), torch.tensor([5, 999, 4000])
    pos = ops.greedy_match(scores.to(device), rows.to(device), cols.to(device), 200, used_r.to(device), used_c.to(device))
    ref = _reference.greedy_match(scores, rows, cols, 200, used_r, used_c)
    assert torch.equal(pos.cpu(), ref)
    assert not bool(torch.isin(rows[pos.cpu()], used_r).any())
    assert not bool(torch.isin(cols[pos.cpu()], used_c).any())


def test_duplicates_and_signed_zero():
    scores = torch.tensor([0.0, -0.0, 0.0, 1.0, 1.0])
    rows = torch.tensor([1, 0, 0, 2, 2])
    cols = torch.tensor([0, 0, 1, 3, 3])
    # -0.0 == +0.0, so (0, 0) wins the tie by its smaller row; (2, 3) twice: kept once.
    assert ops.greedy_match(scores, rows, cols).tolist() == [3, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_score_dtypes(dtype):
    scores, rows, cols = random_candidates(20_000, 800, 800, seed=5)
    scores = scores.to(dtype)
    assert torch.equal(ops.greedy_match(scores, rows, cols), _reference.greedy_match(scores, rows, cols))


def test_empty():
    e = torch.empty(0, dtype=torch.long)
    assert ops.greedy_match(torch.empty(0), e, e).numel() == 0
    assert ops.greedy_match(torch.ones(2), torch.tensor([0, 1]), torch.tensor([1, 0]), limit=0).numel() == 0


@pytest.mark.parametrize(
    "scores,rows,cols,limit,message",
    [
        (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), None, "scores must be 1-D"),
        (torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long), None, "same length"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.long), None, "rows must be int64"),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), None, "floating"),
        (torch.tensor([0.0, float("nan")]), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), None, "scores must be finite"),
        (torch.tensor([0.0, float("-inf")]), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), None, "scores must be finite"),
        (torch.zeros(2), torch.tensor([0, -4]), torch.zeros(2, dtype=torch.long), None, "entry 1 is -4"),
        (torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), -1, "limit must be >= 0"),
    ],
)
def test_bad_input_is_a_clear_error(scores, rows, cols, limit, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.psqe.greedy_match(scores, rows, cols, limit)


def test_bad_used_list():
    with pytest.raises(RuntimeError, match="used_cols must hold indices >= 0"):
        torch.ops.psqe.greedy_match(torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), None, None, torch.tensor([-1]))


def test_opcheck():
    scores, rows, cols = random_candidates(500, 40, 40, seed=6)
    torch.library.opcheck(torch.ops.psqe.greedy_match.default, (scores, rows, cols, 10, None, None))
