"""Per-entity feature tables from files: ``.npy``, ``.npz``, ``.safetensors`` and
the community pickles (read with :mod:`psqe.data.safe_pickle`, never plain
``pickle``).

Accepted contents, all giving ``(ids, table)`` with global entity ids:

* a pickle of a dict ``{global id: 1-D array}`` (EVA's ``*_id_img_feature_dict.pkl``);
  ids are the keys, rows must all have one length;
* a 2-D array (``.npy``, a pickled ndarray, or the only array of a ``.npz`` /
  ``.safetensors``): row ``i`` belongs to global id ``i``;
* a ``.npz`` / ``.safetensors`` with arrays ``ids`` ``[K]`` and ``features`` ``[K, d]``.

Values are cast to float32; NaN/inf, ragged rows, duplicate or non-integer ids
raise :class:`~psqe.data.common.DatasetError` naming the file and the entry.

>>> import tempfile, pathlib, numpy as np
>>> p = pathlib.Path(tempfile.mkdtemp()) / "f.npz"
>>> np.savez(p, ids=np.array([4, 2]), features=np.eye(2))
>>> f = read_id_features(p)
>>> f.ids.tolist(), f.table.dtype.name
([4, 2], 'float32')
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import DatasetError
from .kg import KGPair
from .safe_pickle import safe_load

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pk")


@dataclass
class IdFeatures:
    """Feature rows keyed by global entity id."""

    ids: np.ndarray  # int64 [K]
    table: np.ndarray  # float32 [K, d]
    path: Path

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])


def read_id_features(path: str | Path) -> IdFeatures:
    """Read a feature file (format chosen by suffix); see the module doc for contents."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("feature file not found", path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        obj = safe_load(path)
        if isinstance(obj, Mapping):
            return _from_mapping(obj, path)
        if isinstance(obj, np.ndarray):
            return _from_arrays({"features": obj}, path)
        raise DatasetError(f"expected a dict of id -> array or a 2-D array, found {type(obj).__name__}", path)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"cannot read as a plain numpy array ({e}); object arrays are refused: save a float table instead", path) from None
        return _from_arrays({"features": arr}, path)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"cannot read as a plain .npz archive ({e})", path) from None
        return _from_arrays(arrays, path)
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise DatasetError("reading .safetensors needs the 'safetensors' package (pip install safetensors)", path) from None
        try:
            arrays = load_file(str(path))
        except Exception as e:  # the library raises its own error types
            raise DatasetError(f"cannot read as safetensors: {e}", path) from None
        return _from_arrays(arrays, path)
    raise DatasetError(f"unknown feature file type {suffix!r} (expected .npy, .npz, .safetensors or .pkl)", path)


def _from_mapping(obj: Mapping, path: Path) -> IdFeatures:
    if not obj:
        raise DatasetError("the feature dict is empty", path)
    ids = []
    for key in obj:
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise DatasetError(f"entry key {key!r} is not an integer entity id", path)
        ids.append(int(key))
    rows = []
    first_len = None
    for key, value in zip(ids, obj.values()):
        v = np.asarray(value)
        if v.ndim != 1 or v.dtype.kind not in "fiub":
            raise DatasetError(f"entry for id {key}: expected a 1-D numeric array, found {v.dtype} {v.shape}", path)
        if first_len is None:
            first_len = (v.shape[0], key)
        elif v.shape[0] != first_len[0]:
            raise DatasetError(f"entry for id {key} has {v.shape[0]} values, the first entry (id {first_len[1]}) has {first_len[0]}: rows must all have one length", path)
        rows.append(v)
    table = np.stack(rows).astype(np.float32, copy=False)
    return _checked(np.asarray(ids, dtype=np.int64), table, path)


def _from_arrays(arrays: Mapping[str, np.ndarray], path: Path) -> IdFeatures:
    if "ids" in arrays and "features" in arrays:
        ids, table = np.asarray(arrays["ids"]), np.asarray(arrays["features"])
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise DatasetError(f"'ids' must be a 1-D integer array, found {ids.dtype} {ids.shape}", path)
    elif len(arrays) == 1:
        table = np.asarray(next(iter(arrays.values())))
        ids = np.arange(table.shape[0] if table.ndim else 0)
    else:
        raise DatasetError(f"expected arrays 'ids' and 'features' or a single table, found {sorted(arrays)}", path)
    if table.ndim != 2 or table.dtype.kind not in "fiub":
        raise DatasetError(f"expected a 2-D numeric table, found {table.dtype} {table.shape}", path)
    if ids.shape[0] != table.shape[0]:
        raise DatasetError(f"{ids.shape[0]} ids for {table.shape[0]} feature rows", path)
    return _checked(ids.astype(np.int64), table.astype(np.float32, copy=False), path)


def _checked(ids: np.ndarray, table: np.ndarray, path: Path) -> IdFeatures:
    bad = ~np.isfinite(table).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{int(bad.sum())} feature rows hold NaN/inf, the first for id {int(ids[i])} (row {i})", path)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DatasetError(f"id {int(uniq[counts > 1][0])} has more than one feature row", path)
    return IdFeatures(ids, table, path)


def attach_features(pair: KGPair, modality: str, feats: IdFeatures) -> None:
    """Attach ``feats`` to both graphs of ``pair`` as ``modality``.

    Rows of entities absent from the file are zeros with ``present=False``;
    the feature layer's missing-value rule (e.g. EVA's random N(mean, std)
    for images) replaces them. An id in the file that is an entity of
    neither graph raises (it usually means a file for another split).
    """
    in1, in2 = pair.kg1.contains(torch.from_numpy(feats.ids)), pair.kg2.contains(torch.from_numpy(feats.ids))
    stray = ~(in1 | in2)
    if bool(stray.any()):
        first = int(feats.ids[int(stray.nonzero()[0, 0])])
        raise DatasetError(
            f"{int(stray.sum())} feature ids are entities of neither graph of {pair.name or 'the pair'}, e.g. id {first}; "
            "is this the file for another dataset or split?", feats.path)
    table = torch.from_numpy(feats.table)
    ids = torch.from_numpy(feats.ids)
    for kg, mask in ((pair.kg1, in1), (pair.kg2, in2)):
        rows = kg.to_local(ids[mask])
        full = torch.zeros(kg.num_entities, feats.dim, dtype=torch.float32)
        full[rows] = table[mask]
        present = torch.zeros(kg.num_entities, dtype=torch.bool)
        present[rows] = True
        kg.set_feature(modality, full, present)
