"""`read_seeds`: the seeds files `psqe align` and `psqe reproduce` read back, and their errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from psqe.seeds.io import read_seeds


def test_text_and_npy_read_the_same_pairs(tmp_path):
    pairs = [[3, 1200], [0, 1207], [15, 1201]]
    text = tmp_path / "seeds.tsv"
    text.write_text("3\t1200\n\n0 1207\n15\t1201\n")  # a blank line and a space separator are accepted
    array = tmp_path / "seeds.npy"
    np.save(array, np.asarray(pairs, dtype=np.int32))
    for path in (text, array):
        got = read_seeds(path)
        assert got.dtype == torch.long and got.tolist() == pairs


@pytest.mark.parametrize("content, message", [
    ("", "holds no seed pairs"),
    ("\n\n", "holds no seed pairs"),
    ("1\t2\n3\t4\n1\t2\n", r"line 3: \[1, 2\] repeats an earlier pair \(line 1\)"),
    ("1\t2\n3\t2\n", r"line 2: \[3, 2\] uses entity 2 \(column 2\) again \(line 1\)"),
    ("1\t2\n\n1\t5\n", r"line 3: \[1, 5\] uses entity 1 \(column 1\) again \(line 1\)"),
    ("1\t2\n-3\t4\n", r"line 2: negative entity id \[-3, 4\]"),
    ("1\t2\t3\n", "line 1: expected 'id1<TAB>id2'"),
    ("1\n", "line 1: expected 'id1<TAB>id2'"),
    ("a\tb\n", "line 1: expected 'id1<TAB>id2'"),
    ("1.0\t2\n", "line 1: expected 'id1<TAB>id2'"),
    ("1\t2\n--5\t3\n", "line 2: expected 'id1<TAB>id2'"),  # passed a lstrip('-').isdigit() test, then int() failed
    ("1\t2\n\u00b2\t3\n", "line 2: expected 'id1<TAB>id2'"),  # a superscript digit: isdigit() but not int()
    ("0_1\t2\n", "line 1: expected 'id1<TAB>id2'"),
])
def test_bad_text_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "seeds.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_seeds(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 3), dtype=np.int64), r"expected an integer \[S, 2\] array, got int64 \(3, 3\)"),
    (np.zeros(4, dtype=np.int64), r"expected an integer \[S, 2\] array, got int64 \(4,\)"),
    (np.zeros((3, 2), dtype=np.float32), r"expected an integer \[S, 2\] array, got float32 \(3, 2\)"),
    (np.zeros((0, 2), dtype=np.int64), "holds no seed pairs"),
    (np.array([[0, 1], [0, 2]]), r"row 1: \[0, 2\] uses entity 0 \(column 1\) again \(row 0\)"),  # 0-based rows
])
def test_bad_npy_files_are_named(tmp_path, array, message):
    path = tmp_path / "seeds.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message) as info:
        read_seeds(path)
    assert str(path) in str(info.value)


def test_pickled_npy_is_refused_not_loaded(tmp_path):
    path = tmp_path / "seeds.npy"
    np.save(path, np.array([[0, 1], None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain .npy array"):
        read_seeds(path)


def test_byte_order_mark_and_bad_encoding(tmp_path):
    path = tmp_path / "seeds.tsv"
    path.write_bytes("\ufeff1\t2\r\n3\t4\r\n".encode("utf-8"))  # as a Windows editor saves it
    assert read_seeds(path).tolist() == [[1, 2], [3, 4]]
    path.write_bytes(b"1\t2\n3\t4\xe9\n")
    with pytest.raises(ValueError, match=r"seeds.tsv, line 2: not UTF-8 text"):
        read_seeds(path)
    path.write_bytes(b"1\t2\r3\t4\r5\t6\xe9\r")  # CR-only line ends: read, and lines counted, as the loaders do
    with pytest.raises(ValueError, match=r"seeds.tsv, line 3: not UTF-8 text"):
        read_seeds(path)
    path.write_bytes(b"1\t2\r3\t4\r")
    assert read_seeds(path).tolist() == [[1, 2], [3, 4]]
    path.write_bytes(b"1\t2\x0b3\t4\n")  # a vertical tab is no line end (str.splitlines took it for one)
    with pytest.raises(ValueError, match=r"seeds.tsv, line 1: expected 'id1<TAB>id2'"):
        read_seeds(path)


def test_write_result_leaves_one_result_in_the_folder(tmp_path, monkeypatch):
    """A second result written to the same folder removes the first one's stage files it does not have."""
    from psqe.seeds.io import write_result
    from psqe.seeds.pipeline import SeedResult

    seeds = torch.tensor([[0, 5], [1, 6]])
    write_result(SeedResult(seeds=seeds, stages={"stage1": seeds, "fixed_size": seeds[:1]}), tmp_path, {})
    (tmp_path / "notes.txt").write_text("mine")
    write_result(SeedResult(seeds=seeds[:1], stages={"stage1": seeds[:1]}), tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.json", "seeds.npy", "seeds.tsv",
                                                          "stage_stage1.tsv"]
    assert (tmp_path / "stage_stage1.tsv").read_text() == "0\t5\n"
    # a third result that fails halfway (here: writing its stage file) leaves no report beside its seeds
    import psqe.seeds.io as seeds_io

    real = seeds_io.atomic_write

    def fail_on_stages(path, write):
        if path.name.startswith("stage_"):
            raise OSError("disk full")
        real(path, write)
    monkeypatch.setattr(seeds_io, "atomic_write", fail_on_stages)
    with pytest.raises(OSError, match="disk full"):
        write_result(SeedResult(seeds=seeds, stages={"stage1": seeds}), tmp_path, {})
    assert not (tmp_path / "report.json").exists() and (tmp_path / "seeds.tsv").read_text() == "0\t5\n1\t6\n"


def test_atomic_write_syncs_before_the_rename_and_cleans_up(tmp_path, monkeypatch):
    """The new file's bytes reach the disk before its name replaces the old file (then the folder entry);
    a failing writer leaves the old file and no temporary one."""
    import os

    from psqe.features._util import atomic_write

    target = tmp_path / "seeds.tsv"
    target.write_text("old\n")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    atomic_write(target, lambda tmp: Path(tmp).write_text("new\n"))
    tmp_name = events[1][1]
    assert events == [("fsync", tmp_name), ("replace", tmp_name), ("fsync", str(tmp_path))]
    assert Path(tmp_name).parent == tmp_path and target.read_text() == "new\n"

    def fail(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["seeds.tsv"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"seeds file {tmp_path / 'nope.tsv'} does not exist"):
        read_seeds(tmp_path / "nope.tsv")
    with pytest.raises(IsADirectoryError, match="is a folder; give the seeds.tsv or seeds.npy in it"):
        read_seeds(tmp_path)  # a folder is not a seeds file
