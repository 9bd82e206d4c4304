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


def test_seeds_command_writes_every_file(tmp_path):
    """`psqe seeds` on a tiny EVA-layout folder with a saved feature file."""
    import numpy as np


    from psqe.data import load_dataset
    from psqe.features import save_feature_set
    from test_pipeline import planted_pair

    kg1, kg2, links = planted_pair(n=300)
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "ent_ids_1").write_text("".join(f"{i}\ta{i}\n" for i in kg1.ids.tolist()))
    (folder / "ent_ids_2").write_text("".join(f"{i}\tb{i}\n" for i in kg2.ids.tolist()))
    (folder / "triples_1").write_text("".join("\t".join(map(str, t)) + "\n" for t in kg1.triples.tolist()))
    (folder / "triples_2").write_text("".join("\t".join(map(str, t)) + "\n" for t in kg2.triples.tolist()))
    (folder / "ill_ent_ids").write_text("".join(f"{a}\t{b}\n" for a, b in links.tolist()))
    pair = load_dataset(folder)
    for kg, src in ((pair.kg1, kg1), (pair.kg2, kg2)):
        for m in src.features:
            kg.set_feature(m, src.features[m][src.to_local(kg.ids)])
    save_feature_set(pair, tmp_path / "f.safetensors")
    config = tmp_path / "cfg.json"
    config.write_text('{"budget": 50, "n_clusters": 2, "eta": 0.5, "tuning": {"epochs": 5, "batch_size": 32}}')
    out = tmp_path / "out"
    assert main(["seeds", str(folder), "--features", str(tmp_path / "f.safetensors"), "--out", str(out), "--config", str(config)]) == 0
    report = json.loads((out / "report.json").read_text())
    seeds = np.load(out / "seeds.npy")
    assert seeds.dtype == np.int32 and seeds.shape == (report["seeds"], 2)
    tsv = [tuple(map(int, line.split("\t"))) for line in (out / "seeds.tsv").read_text().splitlines()]
    assert tsv == [tuple(r) for r in seeds.tolist()]
    assert (out / "stage_stage1.tsv").exists() and report["quality"]["stage3"]["precision"] > 0.6



def test_seeds_command_rejects_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "cfg.json"
    bad.write_text('{"no_such_field": 1}')
    with pytest.raises(SystemExit):
        main(["seeds", str(tmp_path), "--features", "f", "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert "no_such_field" in capsys.readouterr().err
