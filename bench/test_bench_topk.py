"""topk_similarity vs dense ``topk(a @ b.T)`` vs faiss ``IndexFlatIP``; peak memory.

Targets (DESIGN.md): on CPU at 15k x 15k x 1024, k = 10, the fused top-k is
at least as fast as faiss IndexFlatIP and well ahead of dense matmul + topk;
at 100k x 100k x 256 its extra memory stays under 300 MB; on a GPU at
100k x 100k x 512 it runs close to the dense GEMM throughput of the same tiles.
The CPU group also times the bare GEMMs of psqe's own tiles ("gemm_only"),
the floor any fused top-k can approach.
"""
from __future__ import annotations

import pytest
import torch

import psqe.ops as ops
from _common import OURS, cuda_ready, pedantic, record_machine, unit_rows
from _peak import peak_memory

K = 10
GROUP_CPU = "topk 15k x 15k x 1024, k=10"
# The CPU kernel's GEMM tiles (csrc/ops/cpu/tiling.h): "gemm_only" runs just
# these GEMMs, no selection. Not a competitor: the floor a fused top-k can
# approach, which tells how much of psqe's time is selection overhead.
CPU_ROW_TILE, CPU_COL_TILE = 2048, 4096


@pytest.fixture(scope="module")
def dense_reference(topk_inputs):
    """Dense ``topk(a @ b.T)``: what every implementation must return."""
    a, b = topk_inputs
    return torch.topk(a @ b.T, K)


def _check(values: torch.Tensor, indices: torch.Tensor, reference) -> None:
    # Different GEMM blockings round differently, so near-ties may swap:
    # values must agree closely and indices almost everywhere.
    ref_v, ref_i = reference
    assert torch.allclose(values, ref_v, atol=1e-5), "top-k values differ from dense topk"
    assert (indices == ref_i).float().mean() > 0.999, "top-k indices differ from dense topk"


def _gemm_tiles(a: torch.Tensor, b: torch.Tensor) -> None:
    buffer = torch.empty(CPU_ROW_TILE, CPU_COL_TILE)
    for r0 in range(0, a.shape[0], CPU_ROW_TILE):
        x = a[r0 : r0 + CPU_ROW_TILE]
        for c0 in range(0, b.shape[0], CPU_COL_TILE):
            y = b[c0 : c0 + CPU_COL_TILE]
            if x.shape[0] == CPU_ROW_TILE and y.shape[0] == CPU_COL_TILE:
                torch.mm(x, y.T, out=buffer)
            else:
                torch.mm(x, y.T)


def _screen_mode(monkeypatch, benchmark, impl: str) -> None:
    """``psqe``: the op as shipped (``PSQE_TOPK_SCREEN`` auto: the bfloat16
    screen where the CPU has native bfloat16 products); ``psqe_float32``: the
    float32 path alone."""
    monkeypatch.setenv("PSQE_TOPK_SCREEN", "off" if impl == "psqe_float32" else "auto")
    benchmark.extra_info["topk_screen"] = "off" if impl == "psqe_float32" else "auto"


def _record_screen(benchmark, before, calls: int) -> None:
    """Rows the screen served and recomputed per call, from the op's counters."""
    after = torch.ops.psqe._topk_screen_stats()
    benchmark.extra_info["screened_rows_per_call"] = (after[0] - before[0]) // calls
    benchmark.extra_info["recomputed_rows_per_call"] = (after[1] - before[1]) // calls
    benchmark.extra_info["calls_that_gave_up"] = after[2] - before[2]


@pytest.mark.parametrize("impl", [OURS, "psqe_float32", "dense", "faiss", "gemm_only"])
def test_topk_cpu_15k(benchmark, monkeypatch, topk_inputs, dense_reference, impl):
    """One group, all implementations: the ratios are read from one run."""
    a, b = topk_inputs
    benchmark.group = GROUP_CPU
    record_machine(benchmark, n=a.shape[0], m=b.shape[0], d=a.shape[1], k=K)
    rounds = 5
    before = torch.ops.psqe._topk_screen_stats() if ops.backend() == "compiled" else None
    if impl.startswith(OURS):
        _screen_mode(monkeypatch, benchmark, impl)

        def run():
            return ops.topk_similarity(a, b, K)
    elif impl == "dense":
        def run():
            return torch.topk(a @ b.T, K)
    elif impl == "gemm_only":
        pedantic(benchmark, _gemm_tiles, args=(a, b), rounds=rounds, warmup_rounds=1)
        return
    else:
        faiss = pytest.importorskip("faiss")
        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatIP(a.shape[1])  # built outside the timed call
        index.add(b.numpy())
        queries = a.numpy()
        rounds = 3  # about 4x slower than the others here

        def run():
            v, i = index.search(queries, K)
            return torch.from_numpy(v), torch.from_numpy(i)

        benchmark.extra_info["faiss_threads"] = faiss.omp_get_max_threads()
    values, indices = pedantic(benchmark, run, rounds=rounds, warmup_rounds=1)
    if before is not None and impl.startswith(OURS):
        _record_screen(benchmark, before, calls=rounds + 1)  # + the warm-up round
    _check(values, indices, dense_reference)


GROUP_BOTH = "topk of rows and columns 15k x 15k x 1024, k=10"


@pytest.mark.parametrize("impl", ["psqe_both", "psqe_two_calls", "dense_both"])
def test_topk_both_directions_cpu_15k(benchmark, topk_inputs, dense_reference, impl):
    """Both directions (what greedy_one_to_one and CSLS need): one fused pass vs
    two ``topk_similarity`` calls vs one dense matrix with a top-k along each axis."""
    a, b = topk_inputs
    benchmark.group = GROUP_BOTH
    record_machine(benchmark, n=a.shape[0], m=b.shape[0], d=a.shape[1], k=K)
    if impl == "psqe_both":
        def run():
            return ops.topk_similarity_both(a, b, K)
    elif impl == "psqe_two_calls":
        def run():
            return (*ops.topk_similarity(a, b, K), *ops.topk_similarity(b, a, K))
    else:
        def run():
            sim = a @ b.T
            rows, cols = torch.topk(sim, K, dim=1), torch.topk(sim, K, dim=0)
            return rows.values, rows.indices, cols.values.T, cols.indices.T
    rv, ri, cv, ci = pedantic(benchmark, run, rounds=3, warmup_rounds=1)
    _check(rv, ri, dense_reference)
    dense_cols = torch.topk(b @ a.T, K)
    _check(cv, ci, dense_cols)


# The CUDA kernel's tiles (csrc/ops/cuda/topk_similarity_kernel.cu): 8192
# columns of b at a time. The baseline does only the GEMMs over the same
# column tiles, no selection: the throughput the fused op should approach.
CUDA_N, CUDA_D, CUDA_COL_TILE = 100_000, 512, 8192


@pytest.mark.cuda
@pytest.mark.parametrize("impl", [OURS, "dense_gemm"])
def test_topk_cuda_100k(benchmark, impl):
    """GPU: fused top-k vs bare GEMM over the same tiles, 100k x 100k x 512, k = 10."""
    if not cuda_ready():  # also skipped at collection; keeps the file importable anywhere
        pytest.skip("no CUDA")
    a = unit_rows(CUDA_N, CUDA_D, seed=1, device="cuda")
    b = unit_rows(CUDA_N, CUDA_D, seed=2, device="cuda")
    benchmark.group = "topk CUDA 100k x 100k x 512, k=10"
    record_machine(benchmark, n=CUDA_N, m=CUDA_N, d=CUDA_D, k=K, gemm_flop=2 * CUDA_N * CUDA_N * CUDA_D)
    if impl == OURS:
        def run():
            out = ops.topk_similarity(a, b, K)
            torch.cuda.synchronize()
            return out
    else:
        tiles = [b[c0 : c0 + CUDA_COL_TILE] for c0 in range(0, CUDA_N, CUDA_COL_TILE)]

        def run():
            for b_tile in tiles:
                sim = a @ b_tile.T
            torch.cuda.synchronize()
            return sim

    pedantic(benchmark, run, rounds=5, warmup_rounds=1)


@pytest.mark.big
def test_topk_peak_memory_100k(benchmark):
    """Extra peak RSS of one CPU call at 100k x 100k x 256, k = 10: under 300 MB.

    Timed: the whole child process (inputs + op, ~30-60 s); the memory
    numbers are in ``extra_info``.
    """
    benchmark.group = "peak memory: topk 100k x 100k x 256, k=10"
    result = pedantic(
        benchmark,
        peak_memory,
        kwargs=dict(op="topk", n=100_000, m=100_000, d=256, k=K, threads=torch.get_num_threads()),
        rounds=1,
    )
    record_machine(benchmark, **result, bound_mb=300)
    assert result["extra_mb"] < 300, f"extra peak memory {result['extra_mb']:.0f} MB >= 300 MB"
