"""Build of psqe's compiled core (``psqe._C``), a PyTorch extension.

The C++ sources in csrc/ are always built; the CUDA sources in
csrc/ops/cuda/ are added when ``FORCE_CUDA=1`` or when a GPU is visible and
``CUDA_HOME`` is set. Options (environment variables):

- ``FORCE_CUDA=1``: compile the CUDA kernels even without a visible GPU
  (needs nvcc; ``CUDA_HOME=/usr/local/cuda``).
- ``TORCH_CUDA_ARCH_LIST``: GPU architectures; without a visible GPU it
  defaults to "9.0+PTX" to keep the build short: H100/H200 code, and PTX
  that newer GPUs compile at load (older ones, e.g. A100 "8.0", need it set).
- ``PSQE_DEBUG=1``: -O0 -g instead of -O3 -g0.
"""
from __future__ import annotations

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def extension():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/ops/*.cpp") + rel("csrc/ops/cpu/*.cpp")
    debug = os.environ.get("PSQE_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp (and linking libgomp) is what makes at::parallel_for use more
    # than one thread: torch is built with AT_PARALLEL_OPENMP, whose
    # parallel_for is an inline `#pragma omp parallel` in our own object files.
    # Python's own CFLAGS add -g; debug info for torch's templates makes each
    # object ~30x larger and its compile ~2.7x slower, so it is off unless
    # PSQE_DEBUG=1 (the last -g flag wins).
    cxx = opt + ([] if debug else ["-g0"]) + ["-fopenmp", f'-DPSQE_TORCH_VERSION="{torch.__version__}"']
    kwargs = dict(name="psqe._C", include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    if want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"
        nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        # A toolkit without the math-library headers (cusparse.h, ...) that
        # torch's CUDA headers include: take them from torch's nvidia-* wheels.
        kwargs["include_dirs"] += sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "*", "include")))
        return CUDAExtension(
            sources=sources + rel("csrc/ops/cuda/*.cu"),
            extra_compile_args={"cxx": cxx + ["-DPSQE_WITH_CUDA"], "nvcc": nvcc + ["-DPSQE_WITH_CUDA"]},
            **kwargs,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
