"""Loading of the compiled core ``psqe._C``.

The library is a PyTorch extension: it must be built against the exact torch
it runs with. :func:`load` finds it, checks that, and registers its ops under
``torch.ops.psqe``. When it is absent the package falls back to the
pure-PyTorch oracle in :mod:`psqe._reference` (with one warning); when it is
present but built for another torch it refuses with the command to rebuild.
Set ``PSQE_DISABLE_COMPILED=1`` to use the fallback on purpose.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import warnings

import torch

log = logging.getLogger(__name__)

REBUILD = (
    "Rebuild it against the running torch from the psqe source folder with:\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps ."
)


def _parse_build_info(info: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in info.split(";") if "=" in part)


def load() -> dict[str, str] | None:
    """Load ``psqe._C``; return its build info, or None when it is not installed."""
    if os.environ.get("PSQE_DISABLE_COMPILED", "0") == "1":
        log.info("PSQE_DISABLE_COMPILED=1: using the pure-PyTorch reference ops")
        return None
    spec = importlib.util.find_spec("psqe._C")
    if spec is None or spec.origin is None:
        warnings.warn(
            "psqe's compiled core (psqe._C) is not installed; using the pure-PyTorch "
            "reference ops, which are correct but far slower and build n x m blocks. "
            "Install the package with `pip install .` to build it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        torch.ops.load_library(spec.origin)
    except OSError as err:
        raise ImportError(
            f"psqe's compiled core {spec.origin} cannot be loaded by torch {torch.__version__}: "
            f"{err}\nThis usually means it was built against another torch. {REBUILD}"
        ) from err
    info = _parse_build_info(torch.ops.psqe._build_info())
    built = info.get("torch", "unknown")
    if built != torch.__version__:
        raise ImportError(
            f"psqe's compiled core was built against torch {built}, but torch "
            f"{torch.__version__} is running; an extension only works with the torch "
            f"it was built for. {REBUILD}"
        )
    if info.get("openmp") != "1":
        log.warning("psqe's compiled core was built without OpenMP: CPU ops run on one thread")
    return info
