"""Every docstring example in the package runs (the docstrings are the first documentation)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import psqe

MODULES = sorted(m.name for m in pkgutil.walk_packages(psqe.__path__, "psqe.") if not m.name.endswith("._C"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
