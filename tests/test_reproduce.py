"""`psqe reproduce` and `psqe align` on a small synthetic pair written as an EVA folder."""
from __future__ import annotations

import json

import pytest
import torch

from loader_files import write_pair_with_features
from psqe.align import pairs_digest
from psqe.cli import main, run
from psqe.data import load_dataset
from psqe.data.synthetic import make_pair
from psqe.seeds.io import read_seeds

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 1200-entity synthetic pair as an EVA folder plus its feature file."""
    root = tmp_path_factory.mktemp("repro")
    pair = make_pair(1200, seed=0)
    folder, features, _ = write_pair_with_features(pair, root)
    return folder, features, pair


ARGS = ["--models", "eva", "--budget", "150", "--epochs", "30", "--psqe-epochs", "5", "--seed", "0"]


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory):
    folder, features, _ = dataset
    out = tmp_path_factory.mktemp("report")
    assert main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(out), *ARGS]) == 0
    return out


def test_report_files_and_numbers(report):
    for name in ("config.json", "table.md", "table.csv", "seed_quality.md", "h1.svg", "seed_distribution.svg",
                 "seeds/uvp.tsv", "seeds/psqe.tsv", "seeds/quality.json", "cells/eva__supervised30.json"):
        assert (report / name).exists(), name
    cells = {p.stem: json.loads(p.read_text()) for p in (report / "cells").glob("*.json")}
    assert set(cells) == {"eva__supervised30", "eva__uvp", "eva__multimodal", "eva__psqe"}
    sup = cells["eva__supervised30"]
    assert sup["train_pairs"] == int(840 * 0.3)
    # trained on 30% gold links, EVA must align far above chance (1/588 test candidates)
    assert sup["legacy"]["hits@1"] > 0.2 and sup["legacy"]["queries"] == 840 - 252
    assert sup["clean"]["candidates"] == 1200 and isinstance(sup["clean"]["queries"], int)
    # one clean test set for every row: the gold links untouched by the 30% split and by every seed set
    from psqe.align import legacy_split
    from psqe.seeds.io import read_seeds

    used = [legacy_split(_links(report), seed=42).train] + [read_seeds(report / "seeds" / f"{m}.tsv")
                                                           for m in ("uvp", "multimodal", "psqe")]
    left = set().union(*(u[:, 0].tolist() for u in used))
    right = set().union(*(u[:, 1].tolist() for u in used))
    expected = [l for l in _links(report).tolist() if l[0] not in left and l[1] not in right]
    assert {c["clean"]["queries"] for c in cells.values()} == {len(expected)}
    assert len({c["clean"]["test_digest"] for c in cells.values()}) == 1
    from psqe.align import pairs_digest

    assert sup["clean"]["test_digest"] == pairs_digest(torch.tensor(expected))
    config = json.loads((report / "config.json").read_text())
    assert config["clean_test"] == {"links": len(expected), "digest": sup["clean"]["test_digest"],
                                    "untouched_by": ["supervised30 split", "uvp", "multimodal", "psqe"]}
    # the clean test is a part of the legacy test
    legacy_test = set(map(tuple, legacy_split(_links(report), seed=42).test.tolist()))
    assert set(map(tuple, expected)) <= legacy_test
    for c in cells.values():  # last-epoch selection: clean is the legacy run, evaluated on the clean test
        assert c["clean"]["selection"] == "final" and c["clean"]["best_epoch"] is None
        assert c["clean"]["shared_run"] == "legacy" and c["clean"]["seconds"] == c["legacy"]["seconds"]
    for c in cells.values():
        assert 0 <= c["legacy"]["hits@1"] <= c["legacy"]["hits@10"] <= 1
    table = (report / "table.md").read_text()
    assert "PSQE seeds give the best H@1 (legacy)" in table
    assert table.count("Type II more precise than Type I") == 1  # a claim on the seeds: not one per protocol
    assert "PSQE seeds give the best H@1 (clean)" in table
    assert "The paper reports no numbers for this dataset." in table and "Paper columns" not in table
    assert f"Clean protocol: {sup['clean']['queries']} test links (digest {sup['clean']['test_digest']}), " \
           "selection final;" in table and "different test sets" not in table
    svg = (report / "h1.svg").read_text()
    assert "(legacy protocol)" in svg and "(clean protocol)" in svg
    quality = json.loads((report / "seeds/quality.json").read_text())
    assert quality["uvp"]["count"] == 150 and quality["uvp"]["precision"] > 0.3


def _links(report):
    """The gold links of the dataset a report folder was made from."""
    return load_dataset(json.loads((report / "config.json").read_text())["config"]["dataset"]).links


def test_resume_skips_finished_cells(report, dataset):
    folder, features, _ = dataset
    before = {p.name: p.stat().st_mtime_ns for p in (report / "cells").glob("*.json")}
    assert main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(report), *ARGS]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (report / "cells").glob("*.json")}
    assert before == after


def test_resume_refuses_a_changed_config(report, dataset, capsys):
    folder, features, _ = dataset
    args = [a if a != "150" else "160" for a in ARGS]
    with pytest.raises(ValueError, match="different budget"):
        main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(report), *args])
    with pytest.raises(ValueError, match="different iterative"):
        main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(report), *ARGS,
              "--iterative"])


def test_folders_written_before_iterative_existed_resume(report, dataset, tmp_path):
    """A config.json without the later 'iterative' field reads as iterative off: the folder resumes, nothing reruns."""
    import shutil

    folder, features, _ = dataset
    old = tmp_path / "old"
    shutil.copytree(report, old)
    saved = json.loads((old / "config.json").read_text())
    del saved["config"]["iterative"]
    (old / "config.json").write_text(json.dumps(saved))
    before = {p.name: p.read_text() for p in (old / "cells").glob("*.json")}
    assert main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(old), *ARGS]) == 0
    assert {p.name: p.read_text() for p in (old / "cells").glob("*.json")} == before
    assert json.loads((old / "config.json").read_text())["config"]["iterative"] is False


def test_train_seed_moves_training_only(report, dataset, tmp_path, capsys):
    """--train-seed reseeds the aligners, not the seed sets; equal to --seed it changes nothing."""
    folder, features, _ = dataset
    base = ["reproduce", "--dataset", str(folder), "--features", str(features), *ARGS, "--seeds", "uvp",
            "--no-supervised", "--protocols", "legacy"]
    before = json.loads((report / "cells" / "eva__uvp.json").read_text())["legacy"]
    assert main([*base, "--out", str(tmp_path / "same"), "--train-seed", "0"]) == 0  # ARGS' --seed
    same = json.loads((tmp_path / "same" / "cells" / "eva__uvp.json").read_text())["legacy"]
    assert _timeless(same) == {**_timeless(before), "commit": same["commit"]}
    other = tmp_path / "other"
    assert main([*base, "--out", str(other), "--train-seed", "1"]) == 0
    assert (other / "seeds" / "uvp.tsv").read_text() == (report / "seeds" / "uvp.tsv").read_text()
    moved = json.loads((other / "cells" / "eva__uvp.json").read_text())["legacy"]
    assert moved["queries"] == before["queries"] and (moved["hits@1"], moved["mrr"]) != (before["hits@1"], before["mrr"])
    assert json.loads((other / "config.json").read_text())["config"]["train_seed"] == 1
    assert "seed 0 (the aligners train with seed 1)." in (other / "table.md").read_text()
    assert "train with seed" not in (tmp_path / "same" / "table.md").read_text()
    from psqe.reproduce.summary import summary_rows

    assert [r["train_seed"] for r in summary_rows([report, other]) if r["protocol"] == "legacy"] == [0, 1]
    assert moved["train_seed"] == 1 and same["train_seed"] == 0  # each entry names its training seed
    with pytest.raises(ValueError, match="different train_seed"):
        main([*base, "--out", str(other), "--train-seed", "2"])
    # a folder made without --train-seed trains with --seed: spelling that seed out is no change
    import shutil

    resumed = shutil.copytree(report, tmp_path / "resumed")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (resumed / "cells").glob("*.json")}
    assert main([*base, "--out", str(resumed), "--train-seed", "0"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (resumed / "cells").glob("*.json")} == mtimes
    assert json.loads((resumed / "config.json").read_text())["config"]["train_seed"] is None
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "bad"), "--train-seed", "-1"])
    assert not (tmp_path / "bad").exists()
    assert "argument --train-seed: must be in [0, 2**32 - 1], got -1" in capsys.readouterr().err


def test_copied_seeds_must_match_the_settings(report, dataset, tmp_path, caplog):
    """A seed set copied from another folder is reused only when made with this run's settings."""
    import shutil

    folder, features, _ = dataset
    quality = json.loads((report / "seeds" / "quality.json").read_text())
    assert quality["uvp"]["made_with"] == {"dataset": str(folder), "setting": "R2", "budget": 150, "seed": 0,
                                           "psqe_epochs": 5, "tie_order": "shuffled", "stage2_seed": 0}
    base = ["reproduce", "--dataset", str(folder), "--features", str(features), "--models", "eva", "--epochs", "30",
            "--psqe-epochs", "5", "--seeds", "uvp", "--no-supervised", "--protocols", "legacy"]
    copy = tmp_path / "copy"
    shutil.copytree(report / "seeds", copy / "seeds")
    with pytest.raises(ValueError, match=r"uvp.tsv was made with budget 150 \(this run: 160\)"):
        main([*base, "--budget", "160", "--seed", "0", "--out", str(copy)])
    with pytest.raises(ValueError, match=r"seed 0 \(this run: 3\)"):
        main([*base, "--budget", "150", "--seed", "3", "--out", str(copy)])
    assert sorted(p.name for p in copy.iterdir()) == ["seeds"]  # refused before anything was written
    # the default Stage II epochs spelled out are the same setting
    from psqe.reproduce import ReproduceConfig
    from psqe.reproduce.cells import _seed_settings

    made = [_seed_settings(ReproduceConfig(dataset="x", models=("eva",), psqe_epochs=e))["psqe_epochs"] for e in (None, 300)]
    assert made == [300, 300]
    # a seed set recorded without a tie order was made when the walks broke ties in file order: refused
    settings = dict(quality["uvp"]["made_with"])
    del quality["uvp"]["made_with"]["tie_order"]
    (copy / "seeds" / "quality.json").write_text(json.dumps(quality))
    with pytest.raises(ValueError, match=r"tie_order 'file' \(this run: 'shuffled'\)"):
        main([*base, "--budget", "150", "--seed", "0", "--out", str(copy)])
    # an entry from before the settings were recorded was not made with shuffled ties either: refused
    del quality["uvp"]["made_with"]
    (copy / "seeds" / "quality.json").write_text(json.dumps(quality))
    with pytest.raises(ValueError, match=r"uvp.tsv was made before seed sets recorded their settings"):
        main([*base, "--budget", "150", "--seed", "0", "--out", str(copy)])
    quality["uvp"]["made_with"] = settings
    (copy / "seeds" / "quality.json").write_text(json.dumps(quality))
    assert main([*base, "--budget", "150", "--seed", "0", "--out", str(copy)]) == 0  # reused as it is
    # PSQE's sets also record Stage II's seed (before it was recorded Stage II drew with 0, whatever --seed);
    # a baseline's set does not depend on it
    psqe_made = dict(settings, seed=3, stage2_seed=3)
    del psqe_made["stage2_seed"]
    from psqe.reproduce.cells import _check_reused

    config = ReproduceConfig(dataset=str(folder), models=("eva",), setting="R2", budget=150, seed=3, psqe_epochs=5)
    with pytest.raises(ValueError, match=r"stage2_seed 0 \(this run: 3\)"):
        _check_reused(copy / "seeds" / "psqe.tsv", {"made_with": psqe_made}, config)
    _check_reused(copy / "seeds" / "psqe.tsv", {"made_with": {**psqe_made, "stage2_seed": 3}}, config)
    _check_reused(copy / "seeds" / "uvp.tsv", {"made_with": psqe_made}, config)
    # nor on Stage II's epochs: a baseline made in a run with other --psqe-epochs is the same set
    _check_reused(copy / "seeds" / "uvp.tsv", {"made_with": {**psqe_made, "psqe_epochs": 9}}, config)
    with pytest.raises(ValueError, match=r"psqe_epochs 9 \(this run: 5\)"):
        _check_reused(copy / "seeds" / "psqe.tsv", {"made_with": {**psqe_made, "stage2_seed": 3, "psqe_epochs": 9}}, config)
    assert (copy / "seeds" / "uvp.tsv").read_text() == (report / "seeds" / "uvp.tsv").read_text()
    assert json.loads((copy / "seeds" / "quality.json").read_text())["uvp"] == quality["uvp"]


def test_a_cell_trained_on_another_seed_set_runs_again(dataset, tmp_path, caplog):
    """A finished cell is reused only for the seeds it trained on: a seed file edited in place (the digest
    differs) or, for a cell from before digests were recorded, a set made again reruns the whole cell."""
    folder, features, _ = dataset
    base = ["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(tmp_path), *ARGS,
            "--seeds", "uvp", "--no-supervised", "--protocols", "legacy"]
    assert main(base) == 0
    path, seeds = tmp_path / "cells" / "eva__uvp.json", tmp_path / "seeds" / "uvp.tsv"
    first = json.loads(path.read_text())
    lines = seeds.read_text().splitlines(keepends=True)
    assert first["seeds_digest"] == pairs_digest(read_seeds(seeds)) and first["train_pairs"] == len(lines)
    seeds.write_text("".join(lines[:-10]))  # another seed set under the same name
    with caplog.at_level("WARNING", logger="psqe.reproduce"):
        assert main(base) == 0
    again = json.loads(path.read_text())
    assert f"digest {first['seeds_digest']}, now {pairs_digest(read_seeds(seeds))}" in caplog.text
    assert again["train_pairs"] == len(lines) - 10 and again["previous_seeds"]["legacy"] == first["legacy"]
    # a cell written before digests were recorded, its seed set removed (as a refusal says) and made again
    seeds.write_text("".join(lines))
    path.write_text(json.dumps({k: v for k, v in first.items() if k != "seeds_digest"}))
    quality = json.loads((tmp_path / "seeds" / "quality.json").read_text())
    del quality["uvp"]
    (tmp_path / "seeds" / "quality.json").write_text(json.dumps(quality))
    seeds.unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="psqe.reproduce"):
        assert main(base) == 0
    assert seeds.read_text() == "".join(lines)  # made again: the same seeds as at first
    assert "its seed set was made again in this run" in caplog.text
    remade = json.loads(path.read_text())
    assert remade["legacy"]["hits@1"] == first["legacy"]["hits@1"] and remade["train_pairs"] == len(lines)
    # nothing changed since: the next resume reuses the cell
    stamp = path.stat().st_mtime_ns
    assert main(base) == 0
    assert path.stat().st_mtime_ns == stamp


def test_resume_adds_a_protocol(dataset, tmp_path):
    """A resume with more protocols runs only the missing ones; the finished ones stay as they were."""
    folder, features, _ = dataset
    base = ["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(tmp_path), *ARGS,
            "--seeds", "uvp", "--no-supervised"]
    assert main([*base, "--protocols", "legacy"]) == 0
    cell_path = tmp_path / "cells" / "eva__uvp.json"
    first = json.loads(cell_path.read_text())
    assert "clean" not in first and "| eva | uvp | 150 |" in (tmp_path / "table.md").read_text()
    assert "clean_test" not in json.loads((tmp_path / "config.json").read_text())  # not computed for legacy alone
    assert main([*base, "--protocols", "legacy,clean"]) == 0
    both = json.loads(cell_path.read_text())
    # legacy is evaluated again from the run clean shares: same numbers, that run's time, nothing under previous
    assert _timeless(both["legacy"]) == _timeless(first["legacy"]) and "previous" not in both
    assert both["clean"]["shared_run"] == "legacy" and both["legacy"]["seconds"] == both["clean"]["seconds"]
    assert both["clean"]["candidates"] == 1200 and both["clean"]["hits@1"] > 0.05  # chance is 1/1200
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert config["protocols"] == ["legacy", "clean"]
    stamp = cell_path.stat().st_mtime_ns
    assert main([*base, "--protocols", "legacy"]) == 0  # nothing to run; the folder still holds both
    assert cell_path.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "config.json").read_text())["config"]["protocols"] == ["legacy", "clean"]
    row = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| eva | uvp")][0]
    assert f"{both['clean']['hits@1']:.3f}" in row


def _timeless(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "seconds"}


def test_resume_reruns_stale_clean_entries(dataset, tmp_path):
    """A clean entry from another test set or selection is computed again; legacy numbers are checked, not lost."""
    folder, features, _ = dataset
    base = ["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(tmp_path), *ARGS,
            "--no-supervised"]
    path = tmp_path / "cells" / "eva__uvp.json"
    assert main([*base, "--seeds", "uvp"]) == 0
    first = json.loads(path.read_text())
    # an entry written before the common test set (no digest, no selection), in a folder whose config.json
    # predates clean_selection, runs again, to the same numbers
    stale = {**first, "clean": {k: v for k, v in first["clean"].items() if k not in ("test_digest", "selection")}}
    path.write_text(json.dumps(stale))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["config"]["clean_selection"], saved["clean_test"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert main([*base, "--seeds", "uvp"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["config"]["clean_selection"] == "final"
    again = json.loads(path.read_text())
    assert _timeless(again["legacy"]) == _timeless(first["legacy"]) and "previous" not in again
    assert _timeless(again["clean"]) == _timeless(first["clean"])  # same numbers; a new run's own time
    # a second seed set in the folder shrinks the common test set: uvp's clean entry runs again on it
    assert main([*base, "--seeds", "uvp,multimodal"]) == 0
    grown = json.loads(path.read_text())
    assert grown["clean"]["test_digest"] != first["clean"]["test_digest"]
    assert grown["clean"]["queries"] < first["clean"]["queries"]
    assert _timeless(grown["legacy"]) == _timeless(first["legacy"])
    other = json.loads((tmp_path / "cells" / "eva__multimodal.json").read_text())
    assert other["clean"]["test_digest"] == grown["clean"]["test_digest"]
    # fewer --seeds on resume keep the test set (the folder still holds multimodal's seeds): nothing runs
    stamp = path.stat().st_mtime_ns
    assert main([*base, "--seeds", "uvp"]) == 0
    assert path.stat().st_mtime_ns == stamp
    # selection on held-out seeds: a run of its own, with a best epoch
    assert main([*base, "--seeds", "uvp", "--clean-selection", "val"]) == 0
    val = json.loads(path.read_text())
    assert val["clean"]["selection"] == "val" and "shared_run" not in val["clean"]
    assert val["clean"]["best_epoch"] in range(30) and val["clean"]["test_digest"] == grown["clean"]["test_digest"]
    assert val["legacy"] == grown["legacy"]  # not run again: only the clean entry was stale
    # back to the last epoch: legacy is evaluated again with it; a changed number is kept under "previous"
    path.write_text(json.dumps({**val, "legacy": {**val["legacy"], "hits@1": 0.1234}}))
    assert main([*base, "--seeds", "uvp"]) == 0
    back = json.loads(path.read_text())
    assert _timeless(back["legacy"]) == _timeless(first["legacy"]) and back["previous"]["legacy"]["hits@1"] == 0.1234
    assert _timeless(back["clean"]) == _timeless(grown["clean"])


def test_a_refused_first_run_leaves_its_folder_free(dataset, tmp_path):
    """A first run refused on its features (after config.json was written) does not lock the folder: the
    same folder then takes the right --features; features this folder built at another seed are refused."""
    import copy

    from loader_files import write_pair_with_features
    from psqe.data.synthetic import make_pair

    folder, features, _ = dataset
    _, wrong, _ = write_pair_with_features(make_pair(1100, seed=1), tmp_path / "other")
    out = tmp_path / "out"
    argv = ["reproduce", "--dataset", str(folder), "--models", "eva", "--budget", "150", "--epochs", "2",
            "--seeds", "uvp", "--no-supervised", "--protocols", "legacy", "--seed", "0", "--out", str(out)]
    with pytest.raises(ValueError, match="entity ids differ"):
        main([*argv, "--features", str(wrong)])
    assert not (out / "config.json").exists()
    assert main([*argv, "--features", str(features)]) == 0
    # a feature file reproduce built in its folder records its seed; another --seed may not reuse it
    from psqe.features import load_feature_set, save_feature_set
    from psqe.reproduce import ReproduceConfig
    from psqe.reproduce.cells import load_pair

    pair = copy.deepcopy(dataset[2])
    built = tmp_path / "built"
    built.mkdir()
    save_feature_set(pair, built / "features.safetensors", {"setting": "R2", "seed": 0})
    with pytest.raises(ValueError, match=r"features.safetensors was built with seed 0, this run's is 42"):
        load_pair(ReproduceConfig(dataset=str(folder), models=("eva",), seed=42), built)
    assert load_feature_set(copy.deepcopy(dataset[2]), built / "features.safetensors")["seed"] == 0


def test_summary_leaves_out_a_cell_of_an_older_seed_set(report, tmp_path, caplog):
    """A resume that made a seed set again reruns only the models it names: the summary leaves out another
    model's cell that trained on the older set, and says so."""
    import shutil

    from psqe.reproduce.summary import summary_rows

    folder = tmp_path / "f"
    shutil.copytree(report, folder)
    uvp = folder / "seeds" / "uvp.tsv"
    uvp.write_text("".join(uvp.read_text().splitlines(keepends=True)[10:]))  # the set made again, smaller
    with caplog.at_level("WARNING", logger="psqe.reproduce.summary"):
        rows = summary_rows([folder])
    assert all(r["type1"] is None for r in rows) and all(r["type2"] is not None for r in rows)
    assert "eva__uvp.json trained on another uvp" in caplog.text


def test_table_says_when_cells_come_from_several_commits():
    from psqe.reproduce.report import _commit_note

    a = {"model": "eva", "seeds": "uvp", "legacy": {"commit": "aaaaaaaaaaaaaaaa"}, "clean": {"commit": "aaaaaaaaaaaaaaaa"}}
    b = {"model": "eva", "seeds": "psqe", "legacy": {"commit": "bbbbbbbbbbbbbbbb"}}
    assert _commit_note([a, dict(a, seeds="multimodal")]) == ""
    assert _commit_note([a, b]) == "The cells were trained by 2 code commits (aaaaaaaaaaaa: eva / uvp; bbbbbbbbbbbb: eva / psqe).\n\n"


def test_h1_plot_draws_no_bar_where_no_number_is():
    from psqe.plot import grouped_bars_svg

    svg = grouped_bars_svg([("H@1", ["eva", "mclea"], {"uvp": [0.5, None], "psqe": [0.6, 0.7]})])
    assert "uvp mclea" not in svg and "uvp eva: 0.5000" in svg and "psqe mclea: 0.7000" in svg


def test_summary_rows_carry_the_cells_numbers(report, tmp_path):
    from psqe.reproduce.summary import summary_markdown, summary_rows

    rows = {r["protocol"]: r for r in summary_rows([report])}
    assert set(rows) == {"legacy", "clean"}
    cells = {p.stem.split("__")[1]: json.loads(p.read_text()) for p in (report / "cells").glob("eva__*.json")}
    for protocol, row in rows.items():
        h1 = {s: c[protocol]["hits@1"] for s, c in cells.items()}
        assert (row["supervised30"], row["type1"], row["type2"], row["psqe"]) == (
            h1["supervised30"], h1["uvp"], h1["multimodal"], h1["psqe"])
        assert row["psqe_minus_type1"] == pytest.approx(h1["psqe"] - h1["uvp"], abs=5e-4)
        assert row["psqe_pairs"] == cells["psqe"]["train_pairs"] and row["epochs"] == 30
        assert row["paper_delta"] is None  # a synthetic pair is none of the paper's datasets
        assert row["test_links"] == cells["psqe"][protocol]["queries"] == cells["uvp"][protocol]["queries"]
    # a missing cell leaves its columns empty rather than guessed
    partial = tmp_path / "partial"
    (partial / "cells").mkdir(parents=True)
    (partial / "config.json").write_text((report / "config.json").read_text())
    (partial / "cells" / "eva__uvp.json").write_text((report / "cells" / "eva__uvp.json").read_text())
    row = summary_rows([partial])[0]
    assert row["psqe"] is None and row["psqe_minus_type1"] is None and row["type1"] == cells["uvp"]["legacy"]["hits@1"]
    assert "| partial | eva | legacy | 30 | 0 | 588 |  | " in summary_markdown([row])
    # epochs come from the cells (a run at the model's default has none in config.json), the iterative half named
    saved = json.loads((report / "config.json").read_text())
    saved["config"].update(epochs=None, iterative=True)
    (partial / "config.json").write_text(json.dumps(saved))
    assert summary_rows([partial])[0]["epochs"] == "30 (iterative from 15)"
    # clean entries on different test sets are flagged, not compared silently
    mixed = json.loads((report / "cells" / "eva__psqe.json").read_text())
    mixed["clean"] = {**mixed["clean"], "test_digest": "0" * 16, "queries": 1}
    (partial / "cells" / "eva__psqe.json").write_text(json.dumps(mixed))
    clean_row = [r for r in summary_rows([partial]) if r["protocol"] == "clean"][0]
    assert clean_row["test_links"] == "differs"
    # a clean selection other than the last epoch is named in the protocol column
    for path in (partial / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        path.write_text(json.dumps({**cell, "clean": {**cell["clean"], "selection": "mnn"}}))
    assert [r["protocol"] for r in summary_rows([partial])] == ["legacy", "clean (mnn)"]
    # ... and a run that recorded its last epoch too gives that a plain clean row first
    for path in (partial / "cells").glob("*.json"):
        cell = json.loads(path.read_text())
        last = {"hits@1": round(cell["clean"]["hits@1"] - 0.01, 4), "hits@10": 0.5, "mrr": 0.4}
        path.write_text(json.dumps({**cell, "clean": {**cell["clean"], "best_epoch": 7, "last_epoch": last}}))
    rows = summary_rows([partial])
    assert [r["protocol"] for r in rows] == ["legacy", "clean", "clean (mnn)"]
    assert rows[1]["psqe"] == round(rows[2]["psqe"] - 0.01, 4) and rows[1]["test_links"] == rows[2]["test_links"]
    with pytest.raises(ValueError, match="no config.json"):
        summary_rows([tmp_path])
    # a margin of 4 links in 10,000 is shown, not rounded to +0.000
    tiny = {**row, "psqe": 0.2329, "type1": 0.2128, "type2": 0.2325, "psqe_minus_type1": 0.0201,
            "psqe_minus_type2": 0.0004}
    assert "| +0.020 | +0.0004 |" in summary_markdown([tiny])
    # seed sets beyond the Table 1 / 2 ones (ablations, psqe-fixed) are listed with their pairs, not dropped
    assert all(r["other_seed_sets"] is None for r in summary_rows([report]))
    fixed = {**json.loads((report / "cells" / "eva__psqe.json").read_text()), "seeds": "psqe-fixed", "train_pairs": 77}
    (partial / "cells" / "eva__psqe-fixed.json").write_text(json.dumps(fixed))
    legacy = summary_rows([partial])[0]
    assert legacy["other_seed_sets"] == f"psqe-fixed {fixed['legacy']['hits@1']:.3f} (77 pairs)"
    assert summary_markdown([legacy]).rstrip().endswith(f"| psqe-fixed {fixed['legacy']['hits@1']:.3f} (77 pairs) |")


def test_align_command(dataset, tmp_path, capsys):
    folder, features, pair = dataset
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[:300].tolist()))
    out = tmp_path / "metrics.json"
    assert main(["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features),
                 "--epochs", "30", "--protocols", "clean", "--out", str(out)]) == 0
    cell = json.loads(out.read_text())
    assert cell["train_pairs"] == 300 and cell["clean"]["hits@1"] > 0.2 and "legacy" not in cell
    assert json.loads(capsys.readouterr().out) == cell  # the same JSON on stdout
    run_ = cell["run"]  # the file says how it was made
    assert run_["dataset"] == str(folder) and run_["epochs"] == 30 and run_["features"] == str(features)
    assert run_["seeds_file"] == str(seeds) and run_["seed"] == 42 and run_["protocols"] == ["clean"]
    # the 30% gold split stays out of the clean test; --clean-exclude keeps another seed set out too
    from psqe.align import legacy_split

    gold = legacy_split(pair.links, seed=42).train
    untouched = ~torch.isin(pair.links[:, 0], torch.cat([gold[:, 0], pair.links[:300, 0]])) & \
        ~torch.isin(pair.links[:, 1], torch.cat([gold[:, 1], pair.links[:300, 1]]))
    assert cell["clean"]["queries"] == int(untouched.sum())
    other = tmp_path / "Other Seeds.tsv"  # a path's case is kept
    other.write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[300:400].tolist()))
    assert main(["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features),
                 "--epochs", "30", "--protocols", "clean", "--clean-exclude", str(other), "--out", str(out)]) == 0
    both = json.loads(out.read_text())
    gone = untouched & ~torch.isin(pair.links[:, 0], pair.links[300:400, 0])
    assert both["clean"]["queries"] == int(gone.sum()) < cell["clean"]["queries"]
    common = ["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features), "--epochs", "1"]
    with pytest.raises(SystemExit):
        main([*common, "--protocols", "legacy", "--clean-exclude", str(other)])
    assert "--clean-exclude shapes the clean test set" in capsys.readouterr().err
    other.write_text("0\t999999\n")
    with pytest.raises(ValueError, match="--clean-exclude file .*Other Seeds.tsv"):
        main([*common, "--clean-exclude", str(other)])
    seeds.write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[:3].tolist()))
    with pytest.raises(ValueError, match="leave none to validate on"):
        main([*common, "--clean-selection", "val"])


def test_label_free_clean_selection_shares_the_run(dataset, tmp_path):
    """--clean-selection mnn: one run; legacy keeps its last epoch, clean scores the epoch the label-free
    score picked, as a run stopped there scores it (EVA's constant lr makes the first epochs alike)."""
    folder, features, pair = dataset
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[:300].tolist()))
    base = ["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features)]
    outs = {name: tmp_path / f"{name}.json" for name in ("final", "mnn", "stopped")}
    assert main([*base, "--epochs", "30", "--out", str(outs["final"])]) == 0
    assert main([*base, "--epochs", "30", "--clean-selection", "mnn", "--out", str(outs["mnn"])]) == 0
    final, mnn = (json.loads(outs[k].read_text()) for k in ("final", "mnn"))
    assert mnn["clean"]["selection"] == "mnn" and mnn["clean"]["shared_run"] == "legacy"
    assert _timeless(mnn["legacy"]) == {**_timeless(final["legacy"]), "commit": mnn["legacy"]["commit"]}
    best = mnn["clean"]["best_epoch"]
    assert best in range(29) and mnn["legacy"]["best_epoch"] is None  # an earlier epoch than the last
    assert mnn["clean"]["test_digest"] == final["clean"]["test_digest"]
    # the same run's last epoch is scored too, as a run kept to its end scores it
    assert mnn["clean"]["last_epoch"] == {k: final["clean"][k] for k in ("hits@1", "hits@10", "mrr")}
    assert "last_epoch" not in final["clean"] and "last_epoch" not in mnn["legacy"]
    history = mnn["clean"]["selection_history"]  # every check's count; the pick is the first epoch of the most
    assert [h["epoch"] for h in history] == list(range(0, 30, 1))  # 30 epochs // 20 checks: every epoch
    counts = [h["mnn"] for h in history]
    assert best == counts.index(max(counts)) and all(h["mnn_added"] == 0 for h in history)  # EVA adds no pairs
    assert "selection_history" not in final["clean"]
    assert main([*base, "--epochs", str(best + 1), "--protocols", "clean", "--out", str(outs["stopped"])]) == 0
    stopped = json.loads(outs["stopped"].read_text())["clean"]
    keys = ("hits@1", "hits@10", "mrr", "r2l_hits@1", "queries", "candidates")
    assert {k: mnn["clean"][k] for k in keys} == {k: stopped[k] for k in keys}
    assert mnn["clean"]["mrr"] != final["clean"]["mrr"]  # the selected model is not the last one


def test_align_iterative_adds_mutual_neighbours(dataset, tmp_path, capsys):
    """--iterative: the schedule, then as many epochs again adding mutual nearest neighbours (EVA's iterative run)."""
    folder, features, pair = dataset
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[:300].tolist()))
    out = tmp_path / "cell.json"
    argv = ["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features),
            "--epochs", "15", "--protocols", "legacy", "--out", str(out)]
    assert main([*argv, "--iterative"]) == 0
    cell = json.loads(out.read_text())["legacy"]
    # 15 epochs, then 15 more checking every epoch; a cycle of 10 persistent checks merged once
    assert cell["epochs"] == 30
    added = cell["added_pairs"]
    assert added["count"] > 0 and added["precision"] > 0.5  # mutual neighbours on the synthetic pair: mostly gold
    assert main(argv) == 0
    assert "added_pairs" not in json.loads(out.read_text())["legacy"]  # off by default
    with pytest.raises(SystemExit):
        main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(tmp_path / "r"),
              "--models", "pcmea", "--iterative"])
    assert "PCMEA's pseudo-label calibration takes the place of iterative learning" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, message", [
    ("0\t999999\n", "999999"),                  # not an entity of kg2
    ("0\t1300\n0\t1301\n", "one-to-one"),        # kg1 entity twice
    ("0,1300\n", "expected 'id1<TAB>id2'"),      # wrong format
    ("\n0\t999999\n", "seeds.tsv line 2 "),     # named by its line, the blank one counted
])
def test_align_rejects_bad_seeds(dataset, tmp_path, capsys, content, message):
    folder, features, _ = dataset
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text(content)
    argv = ["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features), "--epochs", "1",
            "--out", str(tmp_path / "cell.json")]
    with pytest.raises(ValueError, match=message):
        main(argv)
    assert run(argv) == 2  # the console script: one line naming the file, no traceback, nothing written
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"psqe: error: seeds file {seeds}") and message in err[-1]
    assert not any("Traceback" in line for line in err) and not (tmp_path / "cell.json").exists()


def test_unknown_model_is_a_clear_error(dataset, tmp_path, capsys):
    folder, features, _ = dataset
    with pytest.raises(SystemExit):
        main(["align", str(folder), "--seeds", str(tmp_path / "s.tsv"), "--model", "transe", "--features", str(features)])
    assert "unknown model(s) ['transe']" in capsys.readouterr().err


def test_clean_note_flags_mixed_test_sets():
    from psqe.reproduce.report import _clean_note

    new = {"clean": {"queries": 10, "test_digest": "aa", "selection": "final"}}
    old = {"clean": {"queries": 12.0, "best_epoch": 9}}  # before the common test set: own test, selection val, a float count
    note = _clean_note([new, old, {"legacy": {}}])
    assert "10 test links (digest aa), selection final" in note and "12 test links (digest None), selection val" in note
    assert "different test sets" in note
    assert "different" not in _clean_note([new, new]) and _clean_note([{"legacy": {}}]) == ""
    assert "last epoch" not in note
    picked = {"model": "mclea", "seeds": "psqe", "clean": {**new["clean"], "selection": "mnn", "hits@1": 0.2868,
                                                           "best_epoch": 149, "last_epoch": {"hits@1": 0.2512}}}
    # best_epoch is fit's 0-based index: printed as the epoch people count (150 of 150 is the last)
    assert "selected epoch against the run's last epoch: mclea / psqe epoch 150: 0.287 against 0.251." in _clean_note([picked])
    # the seed sets the clean test was made without, as config.json records them
    assert "nor the seed sets uvp, psqe touch" in _clean_note([new], ["supervised30 split", "uvp", "psqe"])
    assert "nor any seed set of this report touches" in _clean_note([new])


def test_cells_record_the_code_commit(report):
    """Each entry names the commit that computed it; an installed copy outside a checkout gives None."""
    import subprocess
    from pathlib import Path

    import psqe.reproduce.cells as cells

    folder = Path(cells.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=folder, capture_output=True,
                              text=True, check=True).stdout.strip()
        inside = (Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True,
                                      text=True, check=True).stdout.strip()) / "psqe").resolve() == folder
    except (OSError, subprocess.CalledProcessError):
        inside = False
    commit = cells.code_commit()
    if inside:
        assert commit is not None and commit.rstrip("+") == head
    else:
        assert commit is None
    entry = json.loads((report / "cells" / "eva__uvp.json").read_text())["legacy"]
    # read once when the run starts: config.json and every cell name the code the process loaded
    assert json.loads((report / "config.json").read_text())["versions"]["commit"] == entry["commit"]
    if inside:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=folder,
                               capture_output=True, text=True, check=True).stdout.strip()
        assert entry["commit"] == head + ("+" if dirty else "")
    else:
        assert entry["commit"] is None


def test_folder_seed_sets_counts_finished_non_empty_sets(tmp_path):
    from psqe.reproduce import _folder_seed_sets

    (tmp_path / "seeds").mkdir()
    for method in ("uvp", "multimodal", "psqe"):
        (tmp_path / "seeds" / f"{method}.tsv").write_text("1\t2\n3\t4\n")
    finished = {"multimodal": {}}  # psqe: interrupted
    found = _folder_seed_sets(tmp_path, {"uvp": torch.zeros(0, 2, dtype=torch.long)}, finished)
    assert list(found) == ["multimodal"] and found["multimodal"].tolist() == [[1, 2], [3, 4]]
    mine = torch.tensor([[5, 6]])
    assert list(_folder_seed_sets(tmp_path, {"psqe": mine}, finished)) == ["multimodal", "psqe"]


def test_claims_give_tiny_margins_in_links():
    """A margin under 0.001 H@1 is shown to 4 decimals with the test links it stands for; 'held' is strict."""
    from psqe.reproduce.report import claims

    def cell(seeds, h1):
        return {"model": "meaformer", "seeds": seeds, "clean": {"hits@1": h1, "queries": 9329}}

    lines = claims([cell("uvp", 0.2128), cell("multimodal", 0.2325), cell("psqe", 0.2329)], {}, ("clean",))
    assert lines == ["meaformer: PSQE seeds give the best H@1 (clean): held (PSQE 0.233; uvp 0.213 (+0.020), "
                     "multimodal 0.233 (+0.0004, about 4 of 9,329 test links))"]
    tie = claims([cell("uvp", 0.2128), cell("psqe", 0.2128)], {}, ("clean",))
    assert "not held" in tie[0] and "(+0.000)" in tie[0]


@pytest.mark.parametrize("dataset, budget", [
    ("DWY15K/V1", 5000), ("DWY15K/dbp_wd_15k_V2", 5000), ("/data/DWY15K/dbp_wd_15k_V1/mapping/0_3", 5000),
    ("dbp_wd_15k_V2", 5000), ("DBP15K/zh_en", 1000), ("ja_en", 1000), ("DWY15K/OEA_D_W_15K_V1", 1000)])
def test_budget_defaults_to_the_papers(dataset, budget):
    """The paper's unsup_k: 5000 on DWY15K (EVA's dbp_wd_15k splits), 1000 on DBP15K and where it has none."""
    from psqe.reproduce import ReproduceConfig

    assert ReproduceConfig(dataset).budget == budget
    assert ReproduceConfig(dataset, budget=321).budget == 321


@pytest.mark.parametrize("budget", [0, -5, 1.5, True, "1000"])
def test_bad_budget_is_refused(budget):
    from psqe.reproduce import ReproduceConfig

    with pytest.raises(ValueError, match=r"budget must be a whole number >= 1, got"):
        ReproduceConfig("DBP15K/zh_en", budget=budget)


def test_paper_numbers_for_table_2(tmp_path):
    """DWY15K rows carry the paper's Table 2 (no PCMEA there), DBP15K rows Table 1, OpenEA's D-W sample none."""
    from psqe.reproduce import paper_entry
    from psqe.reproduce.summary import summary_rows

    table, rows = paper_entry("DWY15K/V1")
    assert table == "Table 2" and rows["meaformer"] == {"base": (.928, .983, .950), "psqe": (.954, .984, .966)}
    assert "pcmea" not in rows and paper_entry("DWY15K/V2")[1]["mclea"]["psqe"] == (.921, .977, .943)
    assert paper_entry("DBP15K/ja_en")[0] == "Table 1" and paper_entry("zh_en")[1]["eva"]["base"][0] == .783
    assert paper_entry("DWY15K/OEA_D_W_15K_V1") is None
    for name, model, delta in (("DWY15K/V1", "eva", 0.035), ("DWY15K/dbp_wd_15k_V2", "mclea", 0.025),
                               ("DWY15K/V1", "pcmea", None), ("DBP15K/zh_en", "pcmea", 0.057)):
        folder = tmp_path / f"{name.replace('/', '_')}-{model}"
        (folder / "cells").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"config": {"dataset": name, "setting": "R2", "epochs": 5}}))
        (folder / "cells" / f"{model}__psqe.json").write_text(json.dumps(
            {"model": model, "seeds": "psqe", "train_pairs": 10, "legacy": {"hits@1": 0.5}}))
        assert summary_rows([folder])[0]["paper_delta"] == delta, (name, model)


def test_report_sets_table_2_beside_dwy15k_rows(tmp_path):
    from types import SimpleNamespace

    from psqe.reproduce import ReproduceConfig, paper_entry
    from psqe.reproduce.report import write_report

    config = ReproduceConfig("DWY15K/V1", models=("eva",), protocols=("legacy",))
    cells = [{"model": "eva", "seeds": s, "train_pairs": 5000, "legacy": {"hits@1": h, "hits@10": 0.9, "mrr": 0.6}}
             for s, h in (("uvp", 0.41), ("multimodal", 0.40), ("psqe", 0.45))]
    write_report(tmp_path, config, SimpleNamespace(name="DWY15K/dbp_wd_15k_V1"), cells, {}, None, {},
                 paper_entry(config.dataset))
    table = (tmp_path / "table.md").read_text()
    assert "Budget 5000;" in table and "Paper columns: Table 2 (" in table
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| eva |")}
    assert rows["uvp"].endswith("| 0.880 | 0.965 | 0.914 | 0.000 |") and rows["psqe"].endswith("| 0.915 | 0.971 | 0.937 | 0.000 |")
    assert rows["multimodal"].endswith("|  |  |  | 0.000 |")


def test_ablation_seed_sets_leave_one_modality_out(dataset, tmp_path):
    """Table 3's seed sets: PSQE's generator with one modality's weight removed, kept and scored like the rest."""
    from psqe.seeds.config import PSQEConfig
    from psqe.seeds.io import read_seeds
    from psqe.seeds.pipeline import generate_seeds

    folder, features, pair = dataset
    out = tmp_path / "ablation"
    args = ["--models", "eva", "--budget", "150", "--epochs", "10", "--psqe-epochs", "5", "--seed", "0",
            "--no-supervised", "--protocols", "legacy"]
    assert main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(out),
                 "--seeds", "psqe,psqe-no-visual,psqe-no-relation", *args]) == 0
    full = PSQEConfig(budget=150, seed=0).replace(tuning={"epochs": 5})
    for method, left_out in (("psqe-no-visual", "visual"), ("psqe-no-relation", "relation")):
        weights = {m: w for m, w in full.weights.items() if m != left_out}
        expected = generate_seeds(pair.kg1, pair.kg2, full.replace(weights=weights), links=pair.links).seeds
        assert torch.equal(read_seeds(out / "seeds" / f"{method}.tsv"), expected), method
    assert not torch.equal(read_seeds(out / "seeds" / "psqe-no-visual.tsv"), read_seeds(out / "seeds" / "psqe.tsv"))
    quality = json.loads((out / "seeds" / "quality.json").read_text())
    assert set(quality) == {"psqe", "psqe-no-visual", "psqe-no-relation"} and "stage3" in quality["psqe-no-visual"]["stages"]
    assert "cluster_tv" in quality["psqe-no-visual"]  # scored on PSQE's own Stage I clusters, like every set
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    h1 = {c["seeds"]: c["legacy"]["hits@1"] for c in cells.values()}
    assert set(h1) == {"psqe", "psqe-no-visual", "psqe-no-relation"}
    table = (out / "table.md").read_text()
    drops = ", ".join(f"{m} {h1[m]:.3f} ({h1[m] - h1['psqe']:+.3f})" for m in ("psqe-no-visual", "psqe-no-relation"))
    assert f"eva: PSQE without the visual modality loses the most H@1 (legacy): " in table and drops in table
    assert "| eva | psqe-no-visual | " in table


def test_ablation_of_an_absent_modality_is_refused(dataset, tmp_path):
    import copy

    from loader_files import write_pair_with_features

    pair = copy.deepcopy(dataset[2])  # the module's pair stays whole
    for drop, name in (("attribute", "no-attribute"), ("visual", "relation-only")):
        for kg in (pair.kg1, pair.kg2):
            kg.features.pop(drop), kg.present.pop(drop)
        folder, features, _ = write_pair_with_features(pair, tmp_path / name)
        argv = ["reproduce", "--dataset", str(folder), "--features", str(features), "--models", "eva", "--budget",
                "150", "--no-supervised", "--out", str(tmp_path / name / "out")]
        if drop == "attribute":
            with pytest.raises(ValueError, match=r"seed set psqe-no-attribute: the seed generator reads no 'attribute' "
                                                 r"modality on .* \(it reads relation, visual\), so psqe-no-attribute"):
                main([*argv, "--seeds", "psqe,psqe-no-attribute"])
        else:
            with pytest.raises(ValueError, match="'relation' is the only modality the seed generator reads"):
                main([*argv, "--seeds", "psqe-no-relation"])
        assert not (tmp_path / name / "out" / "seeds" / "psqe.tsv").exists()  # refused before any seeds
    assert sorted(dataset[2].kg1.features) == ["attribute", "relation", "visual"]


def test_report_sets_table_3_beside_ja_en_ablations(tmp_path):
    from types import SimpleNamespace

    from psqe.reproduce import ReproduceConfig, paper_entry
    from psqe.reproduce.report import write_report

    assert "psqe-no-visual" not in paper_entry("DBP15K/zh_en")[1]["eva"]  # Table 3 is JA-EN only
    config = ReproduceConfig("DBP15K/ja_en", models=("mclea",), seeds=("psqe", "psqe-no-visual"), protocols=("legacy",))
    cells = [{"model": "mclea", "seeds": s, "train_pairs": 1000, "legacy": {"hits@1": h, "hits@10": 0.9, "mrr": 0.6}}
             for s, h in (("psqe", 0.45), ("psqe-no-visual", 0.30))]
    write_report(tmp_path, config, SimpleNamespace(name="DBP15K/ja_en"), cells, {}, None, {}, paper_entry(config.dataset))
    table = (tmp_path / "table.md").read_text()
    assert "Paper columns: Table 1 ('base' beside uvp, '+PSQE' beside psqe) and Table 3 beside the psqe-no-* rows" in table
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| mclea |")}
    assert rows["psqe-no-visual"].endswith("| 0.668 |  | 0.735 | 0.000 |") and rows["psqe"].endswith("| 0.879 | 0.964 | 0.911 | 0.000 |")
    assert ("mclea: PSQE without the visual modality loses the most H@1 (legacy): held "
            "(PSQE 0.450; psqe-no-visual 0.300 (-0.150))") in table


def test_fixed_size_seed_set(dataset, tmp_path):
    """Table 6's seed set: PSQE cut to the budget, trained and claimed against Type I like PSQE's."""
    from psqe.seeds.config import PSQEConfig
    from psqe.seeds.io import read_seeds
    from psqe.seeds.pipeline import generate_seeds

    folder, features, pair = dataset
    out = tmp_path / "fixed"
    assert main(["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(out), "--models",
                 "eva", "--budget", "150", "--epochs", "10", "--psqe-epochs", "5", "--seed", "0", "--no-supervised",
                 "--protocols", "legacy", "--seeds", "uvp,psqe,psqe-fixed"]) == 0
    cfg = PSQEConfig(budget=150, seed=0, fixed_size=True).replace(tuning={"epochs": 5})
    expected = generate_seeds(pair.kg1, pair.kg2, cfg, links=pair.links)
    fixed, full = read_seeds(out / "seeds" / "psqe-fixed.tsv"), read_seeds(out / "seeds" / "psqe.tsv")
    assert full.shape[0] > 150 and fixed.shape == (150, 2) and torch.equal(fixed, expected.seeds)
    quality = json.loads((out / "seeds" / "quality.json").read_text())
    assert quality["psqe-fixed"]["count"] == 150 and "fixed_size" in quality["psqe-fixed"]["stages"]
    h1 = {p.stem.split("__")[1]: json.loads(p.read_text())["legacy"]["hits@1"] for p in (out / "cells").glob("*.json")}
    table = (out / "table.md").read_text()
    assert (f"eva: PSQE seeds cut to the budget (psqe-fixed) give the best H@1 (legacy): "
            f"{'held' if h1['psqe-fixed'] > h1['uvp'] else 'not held'} (psqe-fixed {h1['psqe-fixed']:.3f}; uvp {h1['uvp']:.3f}") in table


def test_report_sets_table_6_beside_meaformer_fixed(tmp_path):
    from types import SimpleNamespace

    from psqe.reproduce import ReproduceConfig, paper_entry
    from psqe.reproduce.report import write_report

    assert "psqe-fixed" not in paper_entry("DBP15K/zh_en")[1]["eva"] and paper_entry("DWY15K/V1")[0] == "Table 2"
    config = ReproduceConfig("DBP15K/zh_en", models=("meaformer",), seeds=("psqe-fixed",), protocols=("legacy",))
    cells = [{"model": "meaformer", "seeds": "psqe-fixed", "train_pairs": 1000,
              "legacy": {"hits@1": 0.5, "hits@10": 0.9, "mrr": 0.6}}]
    write_report(tmp_path, config, SimpleNamespace(name="DBP15K/zh_en"), cells, {}, None, {}, paper_entry(config.dataset))
    table = (tmp_path / "table.md").read_text()
    assert "Paper columns: Table 1 ('base' beside uvp, '+PSQE' beside psqe) and Table 6 beside psqe-fixed (H@1 only)" in table
    assert "| meaformer | psqe-fixed | 1000 | 0.500 | 0.900 | 0.600 |  |  |  | 0.842 |  |  | 0.000 |" in table
