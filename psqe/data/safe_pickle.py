"""Load the community's feature pickles without ever executing code from them.

The EVA/MCLEA/MEAformer image features (``*_GA_id_img_feature_dict.pkl``) and
cached name features are pickles of dicts ``{entity id: numpy array}`` or of
plain numpy arrays, downloaded from file hosts. ``pickle.load`` on such a file
runs whatever callables it names. :func:`safe_load` uses an unpickler whose
``find_class`` admits only the globals those files contain:

* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` (numpy 1
  name) / ``numpy._core.multiarray._reconstruct`` (numpy 2), ``numpy.ndarray``,
  ``numpy.dtype``, numpy scalars (``...multiarray.scalar``, used for numpy
  integer keys) and protocol 5's ``...numeric._frombuffer``;
* ``_codecs.encode``, with which protocols 0-2 store raw bytes (it only looks
  up codecs of the standard ``encodings`` package);
* ``collections.OrderedDict``. Plain dicts, lists, tuples, numbers and strings
  need no global at all.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, any
class) raises :class:`UnsafePickleError` naming the file and the refused
global, before it is called.

>>> import io, pickle, numpy as np
>>> blob = pickle.dumps({3: np.ones(2, dtype=np.float32)})
>>> safe_loads(blob)[3].tolist()
[1.0, 1.0]
>>> safe_loads(pickle.dumps(print), source="evil.pkl")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
psqe.data.safe_pickle.UnsafePickleError: evil.pkl: refused to load global 'builtins.print'...
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from .common import DatasetError

#: (module, name) pairs a feature pickle may name -> the module to take it from.
_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") is not None else "numpy.core"
ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}
for _core in ("numpy.core", "numpy._core"):
    ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = (f"{_NUMPY_CORE}.multiarray", "_reconstruct")
    ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = (f"{_NUMPY_CORE}.multiarray", "scalar")
    ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = (f"{_NUMPY_CORE}.numeric", "_frombuffer")


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (``source`` names the file in errors)."""

    def __init__(self, file: BinaryIO, source: str | Path = "<pickle>") -> None:
        # latin1: numpy arrays pickled by Python 2 store their bytes as str.
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"refused to load global '{module}.{name}': feature pickles may only hold "
                "dicts of ids to numpy arrays (see psqe.data.safe_pickle.ALLOWED_GLOBALS)",
                self.source,
            )
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused persistent id {pid!r}", self.source)


def safe_loads(data: bytes, source: str | Path = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return _load(io.BytesIO(data), source)


def safe_load(path: str | Path) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler`."""
    path = Path(path)
    with open(path, "rb") as f:
        return _load(f, path)


def _load(f: BinaryIO, source: str | Path) -> Any:
    try:
        return RestrictedUnpickler(f, source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetError(f"not a readable feature pickle: {type(e).__name__}: {e}", source) from None
