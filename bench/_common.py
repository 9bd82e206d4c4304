"""Helpers shared by psqe's benchmarks: machine record, seeded inputs, CUDA check.

Imported by ``bench/conftest.py`` and the ``test_bench_*`` modules (pytest puts
``bench/`` on ``sys.path``, the folder has no ``__init__.py``).
"""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

import psqe.ops

#: Parameter id of psqe's own implementation in every group; the others are
#: baselines (bench/summarize.py reads ratios against it).
OURS = "psqe"


def cuda_ready() -> bool:
    """True when a GPU is visible and psqe was compiled with its CUDA kernels."""
    return torch.cuda.is_available() and psqe.ops.backends()["compiled_cuda"]


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@lru_cache(maxsize=1)
def _psqe_source() -> tuple[str, str]:
    """Where psqe was imported from, and the git commit there (plus '-dirty')."""
    root = Path(psqe.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return str(root), commit


def machine_info() -> dict[str, object]:
    """The machine a number was measured on: CPU model, cores, torch, threads, GPU."""
    info: dict[str, object] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "psqe_backend": psqe.ops.backend(),
        "psqe_openmp": psqe.ops.backends()["openmp"],
        "psqe_root": _psqe_source()[0],
        "psqe_commit": _psqe_source()[1],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def record_machine(benchmark, **extra: object) -> None:
    """Store :func:`machine_info` and ``extra`` in ``benchmark.extra_info``."""
    benchmark.extra_info.update(machine_info())
    benchmark.extra_info.update(extra)


def pedantic(benchmark, fn, args=(), kwargs=None, rounds=3, warmup_rounds=0):
    """``benchmark.pedantic(fn, ...)`` with one call per round; returns fn's result.

    Also stores the 1-minute load average before and after in ``extra_info``:
    the machine is shared, and other jobs' load is the main source of noise.
    """
    benchmark.extra_info["loadavg_1m_before"] = os.getloadavg()[0]
    out = benchmark.pedantic(fn, args=args, kwargs=kwargs or {}, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    benchmark.extra_info["loadavg_1m_after"] = os.getloadavg()[0]
    return out


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded generator on ``device``."""
    return torch.Generator(device=device).manual_seed(seed)


def unit_rows(n: int, d: int, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[n, d]`` float32 rows drawn N(0, 1) and scaled to unit norm, in place.

    In place, so drawing a big input leaves no transient copy behind in the
    peak RSS (the memory checks in ``_peak.py`` draw their inputs the same way).
    """
    x = torch.empty(n, d, device=device).normal_(generator=generator(seed, device))
    return x.div_(x.norm(dim=1, keepdim=True))


def noisy_copy(x: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """Unit rows ``normalise(x + e)``, ``e`` isotropic with expected norm ``noise``."""
    e = torch.empty_like(x).normal_(generator=generator(seed, x.device)).mul_(noise / x.shape[1] ** 0.5)
    y = e.add_(x)
    return y.div_(y.norm(dim=1, keepdim=True))


def planted_pair(n: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit features ``a``, ``b`` with ``b[j] = normalise(a[perm[j]] + noise)``.

    Returns ``(a, b, perm)``. With ``noise`` of a few units (d = 300) true
    pairs still stand out but compete with random rows, so the greedy walk
    meets real conflicts instead of a trivially separated matching.
    """
    a = unit_rows(n, d, seed)
    perm = torch.randperm(n, generator=generator(seed + 1))
    return a, noisy_copy(a[perm], noise, seed + 2), perm
