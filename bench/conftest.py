"""pytest options, markers and seeded inputs of psqe's benchmarks (pytest-benchmark).

Rules (DESIGN.md "Benchmarks", BENCHMARK-PROTOCOL.md): ours and each
baseline sit in one pytest-benchmark group, so a ratio is read from one run
on one (shared, noisy) machine; quote medians. Every input is drawn from a
seeded ``torch.Generator``: every run times the same data.

Options:
    --bench-big   also run the large-memory cases (marker ``big``: tens of
                  seconds and GBs each). A normal run stays short.

Run from the repository root, with the compiled core built::

    pytest bench --benchmark-columns=median,min,max,rounds [--bench-big]
"""
from __future__ import annotations

import pytest
import torch

import psqe.ops
from _common import cuda_ready, generator, machine_info, noisy_copy, planted_pair, unit_rows


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-big",
        action="store_true",
        default=False,
        help="also run the large-memory psqe benchmarks (marker 'big')",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "big: large-memory benchmark, run only with --bench-big")
    config.addinivalue_line("markers", "cuda: needs a CUDA device and psqe's compiled CUDA kernels")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Timing the pure-PyTorch fallback would say nothing about the compiled core.
    compiled = psqe.ops.backend() == "compiled"
    for item in items:
        if not compiled:
            item.add_marker(pytest.mark.skip(reason="psqe compiled core not loaded (psqe.ops.backend() == 'reference')"))
        if "big" in item.keywords and not config.getoption("--bench-big"):
            item.add_marker(pytest.mark.skip(reason="large-memory case: pass --bench-big"))
        if "cuda" in item.keywords and not cuda_ready():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device and psqe built with CUDA kernels"))


@pytest.fixture(scope="session")
def machine() -> dict[str, object]:
    """CPU model, cores, torch version and threads of this run."""
    return machine_info()


@pytest.fixture(scope="module")
def topk_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """15k x 1024 unit rows ``a`` and ``b`` (DBP15K-sized, d of a text encoder)."""
    return unit_rows(15_000, 1024, seed=1), unit_rows(15_000, 1024, seed=2)


@pytest.fixture(scope="module")
def candidates_10m() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """10M random candidates: scores ~ N(0, 1), rows and columns uniform over 1M."""
    c, entities = 10_000_000, 1_000_000
    g = generator(3)
    scores = torch.randn(c, generator=g)
    rows = torch.randint(0, entities, (c,), generator=g)
    cols = torch.randint(0, entities, (c,), generator=g)
    return scores, rows, cols


@pytest.fixture(scope="module")
def planted_15k() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """15k x 300 unit features with a planted matching ``b[j] ~ a[perm[j]]``.

    noise = 5 puts greedy top-1000 precision near 0.9 (measured): real
    conflicts, and k = 10 candidates still give the exact dense walk.
    """
    return planted_pair(15_000, 300, noise=5.0, seed=10)


@pytest.fixture(scope="module")
def mic_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A 20k-seed list, d = 300: ``right[k] = normalise(left[k] + noise)``.

    noise = 4 makes MIC keep about 60% of the pairs (measured): a real filter.
    """
    left = unit_rows(20_000, 300, seed=20)
    return left, noisy_copy(left, 4.0, seed=21)
