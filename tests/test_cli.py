"""The psqe command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from psqe.cli import main, run
from psqe.data import DatasetError

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """One small demo run (3000 entities per side, 300 seeds, 30 epochs), written to a folder."""
    out = tmp_path_factory.mktemp("demo")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["demo", "--entities", "3000", "--seeds", "300", "--epochs", "30", "--seed", "1", "--out", str(out)]) == 0
    return json.loads(buf.getvalue()), out


def test_demo_reports_three_generators(demo_report):
    report, out = demo_report
    gens = report["generators"]
    assert set(gens) == {"psqe", "type1", "type2"}
    assert gens["type1"]["count"] == gens["type2"]["count"] == 300
    # Greedy seeds on the synthetic pair are far above chance (1 in 3000); a
    # broken top-k, walk or pipeline gives ~0.
    for name in gens:
        assert gens[name]["precision"] > 0.4, (name, gens[name])
    assert gens["psqe"]["count"] >= 250
    assert report["psqe_stages"]["stage1"]["count"] <= 300
    # the files next to the report, identical to what was printed
    assert json.loads((out / "report.json").read_text()) == report
    rows = (out / "seeds_psqe.tsv").read_text().splitlines()
    assert len(rows) == gens["psqe"]["count"]
    svg = (out / "seed_distribution.svg").read_text()
    assert svg.startswith("<svg") and "Type I (UVP)" in svg and "Stage I cluster" in svg


def test_demo_is_deterministic(demo_report, tmp_path):
    report, out = demo_report
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        main(["demo", "--entities", "3000", "--seeds", "300", "--epochs", "30", "--seed", "1", "--out", str(tmp_path)])
    again = json.loads(buf.getvalue())
    for name in ("psqe", "type1", "type2"):
        assert again["generators"][name]["precision"] == report["generators"][name]["precision"]
    assert (tmp_path / "seeds_psqe.tsv").read_text() == (out / "seeds_psqe.tsv").read_text()


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seeds", "0"], "--seeds must be >= 1"),
    (["demo", "--entities", "100", "--seeds", "200"], "--seeds 200 exceeds --entities 100"),
    (["demo", "--epochs", "-1"], "--epochs must be >= 0"),
    (["features", "DBP15K/zh_en", "--setting", "R1", "--no-text", "--out", "f.safetensors"],
     "--no-text: R1's visual slot is the text embedding"),
    # the device is checked before any data is read (the dataset named here does not exist)
    (["features", "nowhere", "--setting", "R2", "--out", "f.safetensors", "--device", "bogus"],
     "--device 'bogus': not a device name"),
    (["seeds", "nowhere", "--features", "f.safetensors", "--out", "o", "--device", "meta"],
     "--device 'meta': psqe runs on cpu or cuda"),
    (["demo", "--device", "cuda:x"], "--device 'cuda:x': not a device name"),
    # one seed range for every command (numpy's), checked as the argument is parsed
    (["demo", "--seed", "-1"], "argument --seed: must be in [0, 2**32 - 1], got -1"),
    (["features", "nowhere", "--setting", "R2", "--out", "f", "--seed", str(2**70)], "argument --seed: must be in"),
    (["seeds", "nowhere", "--features", "f", "--out", "o", "--seed", "1e3"], "argument --seed: expected an integer, got '1e3'"),
    (["align", "nowhere", "--seeds", "s.tsv", "--model", "eva", "--seed", "-5"], "argument --seed: must be in"),
])
def test_bad_arguments_name_the_option(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_out_is_checked_before_any_work(tmp_path, capsys):
    """A folder given for a file, a file for a folder, or a place nothing can be written: refused as the
    arguments are read (the datasets named here do not exist, so no work could have started)."""
    a_file, a_folder = tmp_path / "a_file", tmp_path / "a_folder"
    a_file.write_text("x")
    a_folder.mkdir()
    cases = [
        (["features", "nowhere", "--out", str(a_folder)], f"--out {a_folder}: is a folder; expected a file path"),
        (["align", "nowhere", "--seeds", "s.tsv", "--model", "eva", "--out", str(a_folder)], "is a folder"),
        (["seeds", "nowhere", "--features", "f", "--out", str(a_file)], f"--out {a_file}: exists and is not a folder"),
        (["demo", "--out", str(a_file)], "exists and is not a folder"),
        (["reproduce", "--dataset", "nowhere", "--out", str(a_file / "sub")], f"{a_file} is a file, not a folder"),
        (["align", "nowhere", "--seeds", "s.tsv", "--model", "eva", "--train-seed", str(2**40)],
         "argument --train-seed: must be in [0, 2**32 - 1]"),
        (["align", "nowhere", "--seeds", "s.tsv", "--model", "eva", "--protocols", "legacy", "--clean-selection", "val"],
         "--clean-selection val picks the clean protocol's epoch"),
        (["align", "nowhere", "--seeds", "s.tsv", "--model", "foo"], "psqe: error: unknown model(s) ['foo']; known: eva"),
    ]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    cases += [
        (["seeds", "nowhere", "--features", "f", "--out", str(dangling)], "a symbolic link to nothing"),
        (["features", "nowhere", "--out", "-"], "--out -: this command writes files; give a path"),
        (["features", "nowhere", "--setting", "R1", "--simulation-budget", "50", "--out", "f.st"],
         "--simulation-budget 50: a count >= 1, for --setting R2 only"),
    ]
    if Path("/proc/self").is_dir():  # a file system that takes no new files, even for root
        cases.append((["features", "nowhere", "--out", "/proc/psqe-test.safetensors"], "cannot write in /proc"))
        proc = tmp_path / "proc_link"
        proc.symlink_to("/proc/self")  # '..' after a link: the writer meets /proc, not tmp_path
        cases.append((["align", "nowhere", "--seeds", "s", "--model", "eva", "--out", f"{proc}/../x.json"],
                      "cannot write in /proc"))
    for argv, message in cases:
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err, argv
    assert {p.name for p in tmp_path.iterdir()} <= {"a_file", "a_folder", "dangling", "proc_link"}
    assert not any(a_folder.iterdir())


def test_out_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """``--out ~/x``: the check and every writer use the same, expanded, path (not a folder named '~')."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    import io
    from contextlib import redirect_stdout

    with redirect_stdout(io.StringIO()):
        assert main(["demo", "--entities", "300", "--seeds", "20", "--epochs", "1", "--out", "~/demo"]) == 0
    assert (tmp_path / "home" / "demo" / "report.json").is_file() and not (tmp_path / "~").exists()


def test_console_script_names_a_missing_package_and_an_interrupt(monkeypatch, capsys):
    import psqe.cli

    def missing(argv):
        raise ModuleNotFoundError("reading the features needs `pip install safetensors`")
    monkeypatch.setattr(psqe.cli, "main", missing)
    assert run(["seeds"]) == 2
    assert capsys.readouterr().err == "psqe: error: reading the features needs `pip install safetensors`\n"

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(psqe.cli, "main", interrupted)
    assert run(["seeds"]) == 130 and capsys.readouterr().err == "psqe: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        run(["-v", "seeds"])


def test_info(capsys):
    assert main(["info"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] in ("compiled", "reference")


def test_seeds_command_writes_every_file(tmp_path):
    """`psqe seeds` on a tiny EVA-layout folder with a saved feature file."""
    import numpy as np

    from loader_files import write_pair_with_features
    from psqe.data import KGPair
    from psqe.features import save_feature_set
    from test_pipeline import planted_pair

    folder, features, pair = write_pair_with_features(KGPair(*planted_pair(n=300)), tmp_path)
    config = tmp_path / "cfg.json"
    config.write_text('{"budget": 50, "n_clusters": 2, "eta": 0.5, "tuning": {"epochs": 5, "batch_size": 32}}')
    out = tmp_path / "out"
    assert main(["seeds", str(folder), "--features", str(features), "--out", str(out), "--config", str(config),
                 "--visual-precision", "bfloat16"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["tuning"]["visual_precision"] == "bfloat16" and report["config"]["tuning"]["epochs"] == 5
    seeds = np.load(out / "seeds.npy")
    assert seeds.dtype == np.int32 and seeds.shape == (report["seeds"], 2)
    tsv = [tuple(map(int, line.split("\t"))) for line in (out / "seeds.tsv").read_text().splitlines()]
    assert tsv == [tuple(r) for r in seeds.tolist()]
    assert (out / "stage_stage1.tsv").exists() and report["quality"]["stage3"]["precision"] > 0.6
    assert set(report["generators"]) == {"psqe", "type1", "type2"}
    assert report["generators"]["psqe"]["count"] == report["seeds"]
    assert (out / "seed_distribution.svg").read_text().startswith("<svg")
    # a feature file without the relation text slot (`psqe features --no-text`) makes no seeds
    for kg in (pair.kg1, pair.kg2):
        kg.features.pop("relation"), kg.present.pop("relation")
    save_feature_set(pair, tmp_path / "no-text.safetensors")
    with pytest.raises(ValueError, match=r"--features .*no-text\.safetensors: no 'relation' feature on kg1 and kg2"):
        main(["seeds", str(folder), "--features", str(tmp_path / "no-text.safetensors"), "--out", str(tmp_path / "o2")])
    assert not (tmp_path / "o2").exists()
    # --budget overrides the config's budget
    assert main(["seeds", str(folder), "--features", str(features), "--out", str(tmp_path / "o3"),
                 "--config", str(config), "--budget", "30"]) == 0
    report = json.loads((tmp_path / "o3" / "report.json").read_text())
    assert report["config"]["budget"] == 30 and report["generators"]["type1"]["count"] == 30


def test_seeds_budget_defaults_to_the_papers(tmp_path, capsys, caplog):
    """No budget in the config or on the command line: the paper's for the dataset (5000 on DWY15K), said in the
    log; a bad --budget is refused in one line before anything is loaded."""
    import logging

    folder = tmp_path / "dbp_wd_15k_V1"
    bad = tmp_path / "cfg.json"
    bad.write_text('{"eta": 7}')
    with caplog.at_level(logging.INFO, logger="psqe"), pytest.raises(SystemExit):
        main(["seeds", str(folder), "--features", "f", "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert "seed budget 5000: the paper's for" in caplog.text
    with pytest.raises(SystemExit):
        main(["seeds", str(folder), "--features", "f", "--out", str(tmp_path / "o"), "--budget", "0"])
    assert "psqe seeds: PSQEConfig.budget must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, message", [
    ('{"no_such_field": 1}', "no_such_field"),
    ('{"tuning": {"visual_precision": "float8"}}', "visual_precision must be one of"),
    ('{"n_clusters": 2.5}', "PSQEConfig.n_clusters must be an integer, got 2.5"),
    ('{"budget": true}', "PSQEConfig.budget must be an integer, got True"),
    ('{"tuning": 5}', "tuning must be a JSON object of TuningConfig fields"),
    ('{"tuning": {"epochs": 1.5}}', "TuningConfig.epochs must be an integer, got 1.5"),
    ('{"tuning": {"epoch": 10}}', "PSQEConfig.tuning has no field epoch"),
    ('{"device": "tpu"}', "device 'tpu': not a device name"),
])
def test_seeds_command_rejects_a_bad_config(tmp_path, capsys, text, message):
    bad = tmp_path / "cfg.json"
    bad.write_text(text)
    with pytest.raises(SystemExit):
        main(["seeds", str(tmp_path), "--features", "f", "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert message in capsys.readouterr().err


def test_written_files_get_the_usual_mode(demo_report):
    """Atomic writes go through mkstemp (mode 0600); the final files follow the umask like any other."""
    import os

    _, out = demo_report
    mask = os.umask(0)
    os.umask(mask)
    for name in ("report.json", "seeds_psqe.tsv", "seed_distribution.svg"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_console_script_reports_bad_input_in_one_line(tmp_path, capsys):
    """`psqe` (run) ends bad input with one 'psqe: error:' line and status 2; -v keeps the traceback."""
    missing = tmp_path / "no-such-folder"
    argv = ["seeds", str(missing), "--features", str(tmp_path / "f.safetensors"), "--out", str(tmp_path / "out")]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("psqe: error: ") and str(missing) in err and "is not a folder" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetError, match="is not a folder"):
        run(["-v", *argv])
