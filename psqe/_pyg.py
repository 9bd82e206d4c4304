"""torch_geometric, imported once without the FutureWarning that torch >= 2.10 gives for the
``torch.jit.script`` calls PyG makes at import (PyG's to change, not ours; it printed before every
``psqe seeds`` / ``align`` / ``reproduce`` message). Modules that use PyG import this first.
"""
from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import torch_geometric  # noqa: F401
