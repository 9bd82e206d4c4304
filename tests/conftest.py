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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_thread: run the module with torch.set_num_threads(1)")


@pytest.fixture(scope="module", autouse=True)
def _thread_limit(request):
    """Modules marked ``one_thread`` run single-threaded: their tensors are too small
    to gain from threads, and on a shared 2-core machine two OpenMP threads per
    process were measured 10-50x slower."""
    if request.node.get_closest_marker("one_thread") is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Feature noise of the aligner tests' pair: noisier than make_pair's defaults,
#: under which random projections of the features already rank many test pairs first.
ALIGN_NOISE = {"visual": 3.0, "attribute": 1.5, "relation": 1.5}


@pytest.fixture(scope="session")
def align_setup():
    """``(AlignData, legacy split in the pair index)`` of an 800-entity synthetic pair."""
    from psqe.align import AlignData, legacy_split
    from psqe.data.synthetic import make_pair

    pair = make_pair(800, seed=0, noise=ALIGN_NOISE)
    data = AlignData.from_pair(pair)
    return data, legacy_split(pair.links).to_pair_index(data)
