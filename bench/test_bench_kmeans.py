"""K-means for Stage I: the torch implementation vs scikit-learn, at DBP15K size and at 1M points.

Issue 4 asks which is faster. Inputs are the fused Stage I vectors' shape:
DBP15K zh_en has 38,960 entities; the fused visual (2048) + relation (384)
table is 2,432-d; K = 5 (the script's default). At 1M points (``--bench-big``)
the vectors are 300-d (the Stage II hidden size). Both get the same data, the
same K, the same iteration cap and k-means++ seeding; quality is compared by
the inertia they reach (recorded; asserted within 5% of each other).
"""
from __future__ import annotations

import pytest
import torch

from _common import generator, pedantic, record_machine
from psqe.seeds.kmeans import kmeans

pytest.importorskip("sklearn")


def blobs(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    """``n`` unit-scale points around ``k`` centres (clusters exist, as in Stage I's fused vectors)."""
    g = generator(seed)
    centres = torch.randn(k, d, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    return centres[labels] * 0.5 + torch.randn(n, d, generator=g)


def inertia(x: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    total = 0.0
    for c in range(k):
        pts = x[labels == c]
        if pts.numel():
            total += float(((pts - pts.mean(0)) ** 2).sum())
    return total


@pytest.fixture(scope="module")
def dbp15k_sized() -> torch.Tensor:
    return blobs(38_960, 2_432, 5, seed=40)


@pytest.fixture(scope="module")
def million() -> torch.Tensor:
    return blobs(1_000_000, 300, 5, seed=41)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_kmeans_dbp15k_sized(benchmark, dbp15k_sized, backend):
    benchmark.group = "kmeans n=38,960 d=2,432 K=5"
    labels = pedantic(benchmark, kmeans, args=(dbp15k_sized, 5), kwargs=dict(seed=0, backend=backend), rounds=3)
    record_machine(benchmark, n=38_960, d=2_432, k=5, backend=backend, inertia=inertia(dbp15k_sized, labels, 5))
    other = kmeans(dbp15k_sized, 5, seed=0, backend="sklearn" if backend == "torch" else "torch")
    assert abs(inertia(dbp15k_sized, labels, 5) / inertia(dbp15k_sized, other, 5) - 1) < 0.05


@pytest.mark.big
@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_kmeans_million(benchmark, million, backend):
    benchmark.group = "kmeans n=1M d=300 K=5"
    labels = pedantic(benchmark, kmeans, args=(million, 5), kwargs=dict(seed=0, backend=backend), rounds=1)
    record_machine(benchmark, n=1_000_000, d=300, k=5, backend=backend, inertia=inertia(million, labels, 5))
