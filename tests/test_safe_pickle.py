"""The restricted unpickler and the feature-file readers."""
from __future__ import annotations

import collections
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from psqe.data import DatasetError, KGPair, KnowledgeGraph
from psqe.data.feature_files import attach_features, read_id_features
from psqe.data.safe_pickle import UnsafePickleError, safe_load, safe_loads


class RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "zh_en_GA_id_img_feature_dict.pkl"
    path.write_bytes(pickle.dumps({0: np.ones(2), 1: RunsShell(f"echo pwned > {marker}")}))
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    assert not marker.exists()
    msg = str(info.value)
    assert str(path) in msg and f"'{os.system.__module__}.system'" in msg
    assert isinstance(info.value, DatasetError) and isinstance(info.value, pickle.UnpicklingError)
    with pytest.raises(UnsafePickleError, match="refused"):
        read_id_features(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [CallsEval(), RunsShell, collections.Counter(a=1), np.random.default_rng(0)],
                         ids=["eval", "a-class", "counter", "generator"])
def test_other_globals_are_refused(payload):
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        safe_loads(pickle.dumps(payload, protocol=2), source="x.pkl")


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_dict_of_arrays_loads(tmp_path, protocol):
    images = {0: np.arange(4, dtype=np.float32), np.int64(7): np.ones(4, dtype=np.float64)}
    path = tmp_path / "img.pkl"
    path.write_bytes(pickle.dumps(images, protocol=protocol))
    loaded = safe_load(path)
    assert sorted(int(k) for k in loaded) == [0, 7]
    assert loaded[0].dtype == np.float32 and loaded[0].tolist() == [0, 1, 2, 3]
    feats = read_id_features(path)
    assert feats.ids.tolist() == [0, 7] and feats.table.dtype == np.float32 and feats.table.shape == (2, 4)


def test_numpy1_module_names_and_ordered_dict():
    blob = pickle.dumps(collections.OrderedDict({3: np.ones(2, dtype=np.float32)}), protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1.x wrote them
    assert b"numpy.core.multiarray" in blob
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = safe_loads(blob)
    assert loaded[3].tolist() == [1.0, 1.0]


def test_malformed_numpy_state_is_an_error_not_a_crash():
    """numpy trusts a pickled dtype's state tuple, and a short one killed the interpreter (numpy 2.4); object
    arrays and scalars have no place in a feature pickle. Each is a DatasetError naming the source."""

    class ShortDtypeState:  # pickles as numpy.dtype('f4', False, True) then BUILD with a 6-tuple state
        def __reduce__(self):
            return (np.dtype, ("f4", False, True), (3, "<", None, -1, -1, 0))

    short = pickle.dumps({0: ShortDtypeState()}, protocol=2)  # never pickle.loads this: it is the crash
    with pytest.raises(DatasetError, match=r"bad.pkl: not a readable feature pickle: a malformed numpy dtype state"):
        safe_loads(short, source="bad.pkl")
    for obj in (np.array([1, "a"], dtype=object), {1: np.array([None])}):
        with pytest.raises(UnsafePickleError, match="refused a numpy array of dtype dtype\\('O'\\): not numeric"):
            safe_loads(pickle.dumps(obj, protocol=2))
    with pytest.raises(DatasetError, match="not a readable feature pickle: MemoryError|not a readable feature pickle"):
        safe_loads(b"\x80\x02X\xff\xff\xff\x7f")  # a string claiming 2 GB: any failure is named, none escapes
    assert safe_loads(pickle.dumps({1: np.float64(2.5)}, protocol=2)) == {1: 2.5}  # numeric scalars still load
    table = np.arange(6, dtype=np.float32).reshape(2, 3)
    reconstruct, args, state = table.__reduce__()

    class Unversioned:  # numpy's oldest array pickles: the state without its version number
        def __reduce__(self):
            return (reconstruct, args, state[1:])

    assert safe_loads(pickle.dumps(Unversioned(), protocol=2)).tolist() == table.tolist()


def test_pickled_table_and_garbage(tmp_path):
    (tmp_path / "names.pkl").write_bytes(pickle.dumps(np.eye(3)))
    assert read_id_features(tmp_path / "names.pkl").ids.tolist() == [0, 1, 2]
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a readable feature pickle"):
        safe_load(tmp_path / "junk.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetError, match="found list"):
        read_id_features(tmp_path / "list.pkl")
    (tmp_path / "keys.pkl").write_bytes(pickle.dumps({"a": np.ones(2)}))
    with pytest.raises(DatasetError, match="entry key 'a' is not an integer entity id"):
        read_id_features(tmp_path / "keys.pkl")


def test_npy_npz(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(6, dtype=np.int32).reshape(3, 2))
    f = read_id_features(tmp_path / "t.npy")
    assert f.ids.tolist() == [0, 1, 2] and f.table.dtype == np.float32 and f.table[2].tolist() == [4, 5]
    np.save(tmp_path / "obj.npy", np.array([{0: 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="object arrays are refused"):
        read_id_features(tmp_path / "obj.npy")
    np.savez(tmp_path / "f.npz", ids=np.array([5, 1]), features=np.ones((2, 3)))
    assert read_id_features(tmp_path / "f.npz").ids.tolist() == [5, 1]
    np.savez(tmp_path / "dup.npz", ids=np.array([5, 5]), features=np.ones((2, 3)))
    with pytest.raises(DatasetError, match="id 5 has more than one feature row"):
        read_id_features(tmp_path / "dup.npz")
    np.savez(tmp_path / "odd.npz", a=np.ones(2), b=np.ones(2))
    with pytest.raises(DatasetError, match=r"found \['a', 'b'\]"):
        read_id_features(tmp_path / "odd.npz")
    with pytest.raises(DatasetError, match="unknown feature file type"):
        (tmp_path / "f.csv").write_text("1,2")
        read_id_features(tmp_path / "f.csv")


def test_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the optional 'safetensors' package is not installed")
    st.save_file({"ids": np.array([2, 0], dtype=np.int64), "features": np.ones((2, 3), dtype=np.float16)}, str(tmp_path / "f.safetensors"))
    f = read_id_features(tmp_path / "f.safetensors")
    assert f.ids.tolist() == [2, 0] and f.table.dtype == np.float32
    st.save_file({"t": np.full((2, 2), np.nan, dtype=np.float32)}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(DatasetError, match="NaN/inf"):
        read_id_features(tmp_path / "nan.safetensors")


def test_attach_features_presence(tmp_path):
    kg1 = KnowledgeGraph(torch.tensor([0, 1, 2]), ["a", "b", "c"], torch.zeros(0, 3))
    kg2 = KnowledgeGraph(torch.tensor([3, 4]), ["x", "y"], torch.zeros(0, 3))
    pair = KGPair(kg1, kg2)
    np.savez(tmp_path / "f.npz", ids=np.array([4, 1]), features=np.array([[4.0, 4.0], [1.0, 1.0]]))
    attach_features(pair, "visual", read_id_features(tmp_path / "f.npz"))
    assert kg1.present["visual"].tolist() == [False, True, False]
    assert kg1.features["visual"].tolist() == [[0, 0], [1, 1], [0, 0]]
    assert kg2.present["visual"].tolist() == [False, True] and kg2.features["visual"][1].tolist() == [4, 4]
