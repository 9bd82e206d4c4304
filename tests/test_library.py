"""Loading the compiled core: backend report, fallback, version check, docs."""
from __future__ import annotations

import doctest
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import psqe
import psqe.matching
import psqe.ops
from psqe import _library


def test_compiled_core_is_used_when_installed():
    if os.environ.get("PSQE_REQUIRE_COMPILED") != "1" and importlib.util.find_spec("psqe._C") is None:
        pytest.skip("psqe._C is not built here (CI sets PSQE_REQUIRE_COMPILED=1)")
    assert psqe.ops.backend() == "compiled"
    info = _library._parse_build_info(torch.ops.psqe._build_info())
    assert info["torch"] == torch.__version__
    assert info["openmp"] == "1", "at::parallel_for would run on one thread"
    assert psqe.ops.backends()["compiled_cpu"]


def test_reference_fallback_gives_the_same_answers():
    code = (
        "import torch, psqe.ops as ops\n"
        "assert ops.backend() == 'reference', ops.backend()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "a, b = torch.randint(-3, 4, (300, 8), generator=g).float(), torch.randint(-3, 4, (500, 8), generator=g).float()\n"
        "v, i = ops.topk_similarity(a, b, 7)\n"
        "s = (a @ b.T).reshape(-1); r = torch.arange(300).repeat_interleave(500); c = torch.arange(500).repeat(300)\n"
        "p = ops.greedy_match(s, r, c, 50)\n"
        "k = ops.mic_keep(a, b[:300], True)\n"
        "torch.save({'v': v, 'i': i, 'p': p, 'k': k}, __import__('sys').argv[1])\n"
    )
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"psqe-fallback-{os.getpid()}.pt")
    env = dict(os.environ, PSQE_DISABLE_COMPILED="1")
    subprocess.run([sys.executable, "-c", code, out], check=True, env=env)
    got = torch.load(out)
    os.remove(out)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(-3, 4, (300, 8), generator=g).float(), torch.randint(-3, 4, (500, 8), generator=g).float()
    v, i = psqe.ops.topk_similarity(a, b, 7)
    s = (a @ b.T).reshape(-1)
    p = psqe.ops.greedy_match(s, torch.arange(300).repeat_interleave(500), torch.arange(500).repeat(300), 50)
    assert torch.equal(got["v"], v) and torch.equal(got["i"], i) and torch.equal(got["p"], p)
    assert torch.equal(got["k"], psqe.ops.mic_keep(a, b[:300], True))


def test_missing_library_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.warns(RuntimeWarning, match="not installed; using the pure-PyTorch reference"):
        assert _library.load() is None


def test_torch_mismatch_says_how_to_rebuild(monkeypatch):
    if importlib.util.find_spec("psqe._C") is None:
        pytest.skip("psqe._C is not built here")
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    with pytest.raises(ImportError, match=r"(?s)built against torch .* but torch 0\.0\.1 is running.*--no-build-isolation"):
        _library.load()


@pytest.mark.parametrize("module", [psqe.ops, psqe.matching])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_cuda_tensors_fall_back_to_the_oracle_without_cuda_kernels(monkeypatch):
    """A library built without CUDA kernels sends CUDA tensors to the oracle, with one warning."""
    import types
    import warnings

    import psqe.ops as ops

    if ops.backend() != "compiled":
        pytest.skip("needs the compiled library")
    fake_cuda = types.SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.setattr(ops, "_BUILD_INFO", {**ops._BUILD_INFO, "cuda": "0"})
    monkeypatch.setattr(ops, "_WARNED_DEVICES", set())
    with pytest.warns(UserWarning, match="built without CUDA kernels"):
        assert ops._compiled_for(fake_cuda) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops._compiled_for(fake_cuda) is False  # warned once
    assert ops._compiled_for(torch.zeros(1)) is True
    monkeypatch.setattr(ops, "_BUILD_INFO", {**ops._BUILD_INFO, "cuda": "1"})
    assert ops._compiled_for(fake_cuda) is True
