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
global, before it is called. numpy itself trusts what it is handed: a dtype
state of the wrong shape crashed the interpreter (numpy 2.4), so every
``BUILD`` of a dtype is checked first, and arrays or scalars of Python
objects are refused. Any other failure of a malformed file is a
:class:`~psqe.data.common.DatasetError` naming it.

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

import numpy as np

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


def _check_dtype_state(state: Any, source: str | Path) -> None:
    """A numpy dtype's pickled state, as ``np.dtype.__setstate__`` takes it, checked before numpy reads it:
    numpy trusts its shape, and a short tuple crashes the interpreter (numpy 2.4)."""
    ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
          and isinstance(state[1], str) and state[1] in "<>|="
          and (state[2] is None or isinstance(state[2], tuple))
          and (state[3] is None or (isinstance(state[3], tuple) and all(isinstance(n, str) for n in state[3])))
          and (state[4] is None or isinstance(state[4], dict))
          and all(isinstance(v, int) and not isinstance(v, bool) for v in state[5:8])
          and (len(state) == 8 or state[8] is None or isinstance(state[8], dict)))
    if not ok:
        raise DatasetError(f"not a readable feature pickle: a malformed numpy dtype state {state!r:.200}", source)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (``source`` names the file in errors).

    The pure-Python unpickler (about 1.3x the C one's time on protocol-2 feature dicts), so that a
    ``BUILD`` can be checked before numpy's ``__setstate__`` runs: a numpy dtype's state must have the
    shape numpy expects, and no array or scalar may hold Python objects (feature pickles hold numbers).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

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
        found = getattr(importlib.import_module(target[0]), target[1])
        if target[1] == "scalar":
            return self._numeric_scalar(found)
        return found

    def _numeric_scalar(self, scalar):
        def build(dtype, *args):
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise UnsafePickleError(f"refused a numpy scalar of dtype {dtype!r}: not numeric", self.source)
            return scalar(dtype, *args)
        return build

    def _load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            _check_dtype_state(state, self.source)
        elif isinstance(inst, np.ndarray):
            # (version, shape, dtype, is_fortran, data), or without the version in numpy's oldest pickles
            dtype = state[len(state) - 3] if isinstance(state, tuple) and len(state) in (4, 5) else None
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise UnsafePickleError(f"refused a numpy array of dtype {dtype!r}: not numeric", self.source)
        self.load_build()

    dispatch[pickle.BUILD[0]] = _load_build

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
    except DatasetError:  # UnsafePickleError and the dtype check, already named
        raise
    except Exception as e:  # nothing runs but numpy's reconstruction: any other failure is a malformed file
        raise DatasetError(f"not a readable feature pickle: {type(e).__name__}: {e}", source) from None
