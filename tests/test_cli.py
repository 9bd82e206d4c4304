"""The psqe command line."""
from __future__ import annotations

import json

import pytest

from psqe.cli import main


def test_demo_reports_real_seeds(capsys):
    assert main(["demo", "--entities", "3000", "--seeds", "300", "--seed", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == 300 and report["exact_greedy"]
    # Greedy unimodal seeds on this pair are ~70-90% right; a broken top-k or
    # walk gives ~0 (1 in 3000 by chance).
    assert report["precision"] > 0.6
    assert 0 < report["after_mic"] <= 300


def test_demo_is_deterministic(capsys):
    main(["demo", "--entities", "2000", "--seeds", "100", "--seed", "3"])
    first = json.loads(capsys.readouterr().out)
    main(["demo", "--entities", "2000", "--seeds", "100", "--seed", "3"])
    second = json.loads(capsys.readouterr().out)
    for key in ("seeds", "precision", "after_mic", "precision_after_mic"):
        assert first[key] == second[key]


def test_bad_arguments_name_the_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--seeds", "0"])
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] in ("compiled", "reference")
