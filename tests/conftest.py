"""Shared fixtures: devices, exact-arithmetic inputs and the data folder."""
from __future__ import annotations

import os
from pathlib import Path

# Nothing is fetched from a model hub in tests: every model loads from a
# local folder (a tiny one built from a config, or an installed package).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import psqe.ops

HAS_CUDA = torch.cuda.is_available() and psqe.ops.backends()["compiled_cuda"]

#: cpu always; cuda shows as skipped (not absent) where it cannot run.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and psqe built with CUDA")]),
]

DATA = Path(os.environ.get("PSQE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def integer_features(n: int, d: int, seed: int, low: int = -3, high: int = 4) -> torch.Tensor:
    """Small integers: every dot product is exact in fp16 inputs / fp32 sums.

    With exact arithmetic any two implementations must agree to the bit, so
    these inputs test ordering and tie-breaking (ties are plentiful) exactly.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, d), generator=g).float()


def tie_free_features(n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d = 1 inputs whose row products are all distinct (randperm construction)."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.randperm(n, generator=g) + 1).float().unsqueeze(1)
    b = (torch.randperm(m, generator=g) + 1).float().unsqueeze(1)
    return a, b
