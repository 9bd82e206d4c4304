"""`psqe reproduce` and `psqe align` on a small synthetic pair written as an EVA folder."""
from __future__ import annotations

import json

import pytest

from loader_files import write_pair_folder
from psqe.cli import main
from psqe.data import load_dataset
from psqe.data.synthetic import make_pair
from psqe.features import save_feature_set

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 1200-entity synthetic pair as an EVA folder plus its feature file."""
    root = tmp_path_factory.mktemp("repro")
    pair = make_pair(1200, seed=0)
    folder = write_pair_folder(pair, root / "toy")
    loaded = load_dataset(folder)
    for kg, src in ((loaded.kg1, pair.kg1), (loaded.kg2, pair.kg2)):
        for m in src.features:
            order = src.to_local(kg.ids)
            kg.set_feature(m, src.features[m][order], src.present[m][order])
    save_feature_set(loaded, root / "features.safetensors")
    return folder, root / "features.safetensors", pair


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
    assert sup["clean"]["candidates"] == 1200
    for c in cells.values():
        assert 0 <= c["legacy"]["hits@1"] <= c["legacy"]["hits@10"] <= 1
    table = (report / "table.md").read_text()
    assert "PSQE seeds give the best H@1" in table and "Type II more precise than Type I" in table
    quality = json.loads((report / "seeds/quality.json").read_text())
    assert quality["uvp"]["count"] == 150 and quality["uvp"]["precision"] > 0.3


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


def test_resume_adds_a_protocol(dataset, tmp_path):
    """A resume with more protocols runs only the missing ones; the finished ones stay as they were."""
    folder, features, _ = dataset
    base = ["reproduce", "--dataset", str(folder), "--features", str(features), "--out", str(tmp_path), *ARGS,
            "--seeds", "uvp", "--no-supervised"]
    assert main([*base, "--protocols", "legacy"]) == 0
    cell_path = tmp_path / "cells" / "eva__uvp.json"
    first = json.loads(cell_path.read_text())
    assert "clean" not in first and "| eva | uvp | 150 |" in (tmp_path / "table.md").read_text()
    assert main([*base, "--protocols", "legacy,clean"]) == 0
    both = json.loads(cell_path.read_text())
    assert both["legacy"] == first["legacy"]
    assert both["clean"]["candidates"] == 1200 and both["clean"]["hits@1"] > 0.05  # chance is 1/1200
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert config["protocols"] == ["legacy", "clean"]
    stamp = cell_path.stat().st_mtime_ns
    assert main([*base, "--protocols", "legacy"]) == 0  # nothing to run; the folder still holds both
    assert cell_path.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "config.json").read_text())["config"]["protocols"] == ["legacy", "clean"]
    row = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| eva | uvp")][0]
    assert f"{both['clean']['hits@1']:.3f}" in row


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
    # a missing cell leaves its columns empty rather than guessed
    partial = tmp_path / "partial"
    (partial / "cells").mkdir(parents=True)
    (partial / "config.json").write_text((report / "config.json").read_text())
    (partial / "cells" / "eva__uvp.json").write_text((report / "cells" / "eva__uvp.json").read_text())
    row = summary_rows([partial])[0]
    assert row["psqe"] is None and row["psqe_minus_type1"] is None and row["type1"] == cells["uvp"]["legacy"]["hits@1"]
    assert "| partial | eva | legacy | 30 |  | " in summary_markdown([row])
    with pytest.raises(ValueError, match="no config.json"):
        summary_rows([tmp_path])


def test_align_command(dataset, tmp_path, capsys):
    folder, features, pair = dataset
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[:300].tolist()))
    out = tmp_path / "metrics.json"
    assert main(["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features),
                 "--epochs", "30", "--protocols", "clean", "--out", str(out)]) == 0
    cell = json.loads(out.read_text())
    assert cell["train_pairs"] == 300 and cell["clean"]["hits@1"] > 0.2 and "legacy" not in cell


@pytest.mark.parametrize("content, message", [
    ("0\t999999\n", "999999"),                  # not an entity of kg2
    ("0\t1300\n0\t1301\n", "one-to-one"),        # kg1 entity twice
    ("0,1300\n", "expected 'id1<TAB>id2'"),      # wrong format
])
def test_align_rejects_bad_seeds(dataset, tmp_path, content, message):
    folder, features, _ = dataset
    seeds = tmp_path / "seeds.tsv"
    seeds.write_text(content)
    with pytest.raises((ValueError, KeyError), match=message):
        main(["align", str(folder), "--seeds", str(seeds), "--model", "eva", "--features", str(features), "--epochs", "1"])


def test_unknown_model_is_a_clear_error(dataset, tmp_path, capsys):
    folder, features, _ = dataset
    with pytest.raises(SystemExit):
        main(["align", str(folder), "--seeds", str(tmp_path / "s.tsv"), "--model", "transe", "--features", str(features)])
    assert "unknown model(s) ['transe']" in capsys.readouterr().err
