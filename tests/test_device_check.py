"""bench/device_check.sh, the prepared GPU check: it parses, and what it names exists.

The script runs only on a lent GPU machine, where a broken step costs scarce
device time; these checks catch, here, a rename that would break it there.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_files_and_tests_it_names_exist():
    text = SCRIPT.read_text(encoding="utf-8")
    files = set(re.findall(r"\b((?:bench|tests)/[\w/.-]+\.py)\b", text))
    assert {"bench/test_bench_topk.py", "bench/test_bench_aligners.py", "bench/test_bench_scaling.py"} <= files
    for name in files:
        assert (ROOT / name).is_file(), name
    aligners = (ROOT / "bench" / "test_bench_aligners.py").read_text(encoding="utf-8")
    # `-k schedule` must select the whole-schedule run, and `-k "not schedule"` everything else
    assert re.findall(r"^def (test_\w*schedule\w*)\(", aligners, re.M) == ["test_meaformer_schedule_cuda"]
    assert "tests/test_cuda_training.py" in text and (ROOT / "tests" / "test_cuda_training.py").is_file()


def test_the_seed_sets_it_copies_are_complete():
    folder = ROOT / "bench" / "results" / "seeds" / "DBP15K-zh_en-R2"
    assert "bench/results/seeds/DBP15K-zh_en-R2" in SCRIPT.read_text(encoding="utf-8")
    for name in ("uvp.tsv", "multimodal.tsv", "psqe.tsv", "quality.json"):
        assert (folder / name).is_file(), name
    rows = (folder / "psqe.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 990 and all(len(r.split("\t")) == 2 for r in rows)


def test_the_cpu_test_names_the_cuda_tests_borrow_exist():
    """tests/test_cuda_training.py reuses the CPU tests' bounds and helpers (``test_align_eva.BOUND``, ...);
    a rename there would break it only where CUDA runs, so every borrowed name is looked up here."""
    import importlib

    text = (ROOT / "tests" / "test_cuda_training.py").read_text(encoding="utf-8")
    borrowed = set(re.findall(r"\b(test_\w+)\.([A-Za-z_]\w*)\b", text))
    assert {m for m, _ in borrowed} == {"test_align_eva", "test_align_mclea", "test_align_meaformer",
                                         "test_align_pcmea", "test_pipeline"}
    for module, name in sorted(borrowed):
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
