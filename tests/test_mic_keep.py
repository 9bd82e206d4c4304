"""psqe.ops.mic_keep against the dense check."""
from __future__ import annotations

import pytest
import torch

import psqe.ops as ops
from psqe import _reference
from conftest import integer_features


def planted(s: int, d: int, seed: int, noise: int = 2):
    """Right rows = left rows + small integer noise: most pairs survive, some not."""
    left = integer_features(s, d, seed)
    right = left + integer_features(s, d, seed + 1, -noise, noise + 1)
    return left, right


@pytest.mark.parametrize("s,d,noise", [(1, 4, 2), (50, 8, 2), (3000, 16, 2), (5000, 300, 12)])
@pytest.mark.parametrize("both", [False, True])
def test_matches_dense_check(device, s, d, noise, both):
    left, right = planted(s, d, seed=s, noise=noise)
    keep = ops.mic_keep(left.to(device), right.to(device), both_directions=both)
    sim = left.double() @ right.double().T
    dense = sim.diagonal() >= sim.max(dim=1).values
    if both:
        dense &= sim.diagonal() >= sim.max(dim=0).values
    assert torch.equal(keep.cpu(), dense)
    assert torch.equal(keep.cpu(), _reference.mic_keep(left, right, both))
    if s >= 3000:
        assert 0.05 < keep.float().mean() < 0.95  # the check really decides something


def test_ties_keep_the_pair_and_columns_are_checked():
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    right = torch.tensor([[1.0, 0.0], [0.5, 0.0], [1.0, 0.0]])
    # Row 0: ties with column 2 -> kept. Row 1: column 0 beats its own 0.5.
    # Row 2 is orthogonal to every right row: all zeros, a tie -> kept.
    assert ops.mic_keep(left, right).tolist() == [True, False, True]
    # Column 2's best row is row 0 (1.0 > 0.0): dropped in both directions.
    assert ops.mic_keep(left, right, both_directions=True).tolist() == [True, False, False]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    left, right = planted(700, 32, seed=2)
    assert torch.equal(ops.mic_keep(left.to(dtype), right.to(dtype)), _reference.mic_keep(left.double(), right.double()))


def test_non_contiguous_and_empty(device):
    left, right = planted(600, 64, seed=3)
    keep = ops.mic_keep(left[:, ::2].to(device), right[:, ::2].to(device), True)
    assert torch.equal(keep.cpu(), _reference.mic_keep(left[:, ::2].contiguous(), right[:, ::2].contiguous(), True))
    assert ops.mic_keep(torch.zeros(0, 3, device=device), torch.zeros(0, 3, device=device)).shape == (0,)


@pytest.mark.parametrize(
    "left,right,message",
    [
        (torch.zeros(3), torch.zeros(3, 2), "left must be 2-D"),
        (torch.zeros(3, 2), torch.zeros(4, 2), "same shape"),
        (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64), "same dtype"),
        (torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3, 2, dtype=torch.int32), "float16, bfloat16"),
        (torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), "left must be finite"),
    ],
)
def test_bad_input_is_a_clear_error(left, right, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.psqe.mic_keep(left, right)


def test_opcheck():
    left, right = planted(60, 8, seed=4)
    torch.library.opcheck(torch.ops.psqe.mic_keep.default, (left, right, True))
