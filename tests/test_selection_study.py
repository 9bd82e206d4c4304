"""bench/selection_study.py's analysis: the ``mnn`` scores and their gold-link count, the picks, the rank
correlation, the tolerance pick, ``--from-json``."""
from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from psqe.align import AlignData
from psqe.align.selection import label_free_scores
from psqe.data.synthetic import make_pair

PATH = Path(__file__).resolve().parents[1] / "bench" / "selection_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("selection_study", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstring_examples(study):
    result = doctest.testmod(study)
    assert result.attempted > 0 and result.failed == 0


def brute_mnn_pairs(joint, data, used):
    """Dense oracle: the mutual cosine top-1 pairs among the free entities."""
    taken = set(used.flatten().tolist())
    left = [i for i in range(data.n1) if i not in taken]
    right = [j for j in range(data.n1, joint.shape[0]) if j not in taken]
    j = F.normalize(joint, dim=1)
    sim = j[left] @ j[right].t()
    best_r, best_l = sim.argmax(1), sim.argmax(0)
    return [(left[a], right[int(best_r[a])]) for a in range(len(left)) if int(best_l[best_r[a]]) == a]


def brute_mnn_gold(joint, data, used):
    """The dense oracle's pair count, and how many of them are gold links."""
    pairs, gold = brute_mnn_pairs(joint, data, used), set(map(tuple, data.links.tolist()))
    return len(pairs), sum(p in gold for p in pairs)


@pytest.mark.parametrize("copied", [True, False])
def test_mnn_scores_against_a_dense_oracle(study, copied):
    data = AlignData.from_pair(make_pair(200, seed=2))
    g = torch.Generator().manual_seed(0)
    joint = torch.randn(data.n1 + data.n2, 16, generator=g)
    if copied:  # every free gold pair becomes mutual nearest: the count is the free gold links
        joint[data.links[:, 1]] = joint[data.links[:, 0]] + 0.01 * torch.randn(data.links.shape[0], 16, generator=g)
    used = data.links[:50]
    got = study.mnn_scores(joint, data, used)
    count, right = brute_mnn_gold(joint, data, used)
    assert {k: got[k] for k in ("mnn", "mnn_rate", "mnn_cos")} == label_free_scores(joint, data.n1, used)
    assert got["mnn"] == count and got["mnn_correct"] == right and got["mnn_precision"] == pytest.approx(right / count)
    if copied:
        assert right == data.links.shape[0] - 50
    else:
        assert right < 10  # random embeddings: almost no gold pair is mutual nearest


def test_picks_and_rank_correlation_against_scipy(study):
    g = torch.Generator().manual_seed(4)
    a = torch.randint(0, 6, (40,), generator=g).tolist()  # many ties
    b = (torch.tensor(a) + torch.randint(0, 4, (40,), generator=g)).tolist()
    assert study.rank_correlation(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(study.rank_correlation([1], [2])) and math.isnan(study.rank_correlation([1, 1], [1, 2]))
    with pytest.raises(ValueError, match="lengths differ"):
        study.rank_correlation([1, 2], [1])
    hist = [{"epoch": e, "c": c, "t": t} for e, c, t in ((4, 1, 0.1), (9, 3, 0.5), (14, 3, 0.6), (19, 2, 0.4))]
    chosen = study.picks(hist, ("c", "t"), "t")
    assert chosen == {"c": {"epoch": 9, "t": 0.5}, "t": {"epoch": 14, "t": 0.6},  # ties: the first, as fit keeps
                      "final": {"epoch": 19, "t": 0.4}, "oracle": {"epoch": 14, "t": 0.6}}
    with pytest.raises(ValueError, match="history is empty"):
        study.picks([], ("c",), "t")


def history(mnn, test):
    return [{"epoch": 20 * i + 19, "val_mrr": 0.5, "val_hits@1": 0.4, "mnn": m, "mnn_cos": 0.6,
             "test_hits@1": t} for i, (m, t) in enumerate(zip(mnn, test))]


def test_tolerant_pick_is_the_earliest_within_the_tolerance(study):
    h = history([900, 990, 1000, 1000, 995], [0.5, 0.7, 0.6, 0.55, 0.5])
    assert study.tolerant_pick(h, "mnn", 0.0)["epoch"] == 59  # the first of the ties, as fit selects
    assert study.tolerant_pick(h, "mnn", 0.01)["epoch"] == 39  # 990 >= 0.99 * 1000
    assert study.tolerant_pick(h, "mnn", 0.2)["epoch"] == 19


def test_from_json_rewrites_the_summary_without_training(study, tmp_path):
    (tmp_path / "mclea-psqe.json").write_text(json.dumps(history([900, 990, 1000], [0.5, 0.7, 0.6])))
    args = ["--from-json", "--out", str(tmp_path)]
    assert study.main(args + ["--methods", "psqe,multimodal"]) == 0
    text = (tmp_path / "selection.md").read_text()
    assert "| psqe | 0.6000 (ep 60) | 0.7000 (ep 40) | 0.7000 (ep 40) |" in text  # within 0.5% / 1% / 2%
    assert "oracle diagnostics" not in text  # the history has no gold-link counts
    with pytest.raises(SystemExit):
        study.main(args + ["--methods", "uvp"])  # no history for it
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path), "--dataset", "DBP15K/zh_en"])  # a training run needs the data


def test_run_one_records_each_check_from_the_plain_run(study):
    """run_one on the synthetic pair: every check carries the held-out seeds' ranks, the label-free scores,
    their gold count and the test H@1; the final check's scores are those of the trained model itself."""
    from psqe.align import build_aligner, embed, evaluate, fit
    from psqe.align.metrics import clean_split

    pair = make_pair(200, seed=4)
    data = AlignData.from_pair(pair)
    split = clean_split(pair.links, pair.links[:60], val_ratio=0.2, seed=0).to_pair_index(data)
    hist = study.run_one("mclea", data, split, 6, 3, 7)
    assert [r["epoch"] for r in hist] == [2, 5]
    assert {"val_mrr", "val_hits@1", "mnn", "mnn_rate", "mnn_cos", "mnn_correct", "test_hits@1"} <= set(hist[0])
    model, config = build_aligner("mclea", data, seed=7, epochs=6)  # the same run without the study's checks
    torch.manual_seed(7)
    fit(model, data, split.train, dataclasses.replace(config, seed=7), progress=False)
    out = embed(model, data)
    scores = label_free_scores(out["joint"], data.n1, split.train, split.val)
    assert {k: hist[-1][k] for k in ("mnn", "mnn_rate", "mnn_cos")} == scores
    assert hist[-1]["test_hits@1"] == pytest.approx(evaluate(out, split, data)["hits@1"])
    assert 0 < hist[-1]["mnn_correct"] <= hist[-1]["mnn"]


def test_mnn_scores_with_added_pairs_against_a_dense_oracle(study):
    """``added``: the count of the model's own pairs, the rest, and a second pass over the entities no pair
    (given or added) uses, each against the brute-force mutual-nearest oracle."""
    data = AlignData.from_pair(make_pair(200, seed=2))
    g = torch.Generator().manual_seed(1)
    joint = torch.randn(data.n1 + data.n2, 16, generator=g)
    joint[data.links[:, 1]] = joint[data.links[:, 0]] + 0.3 * torch.randn(data.links.shape[0], 16, generator=g)
    used = data.links[:50]
    # held out: kg1 entities of the seeds (already used) with other kg2 entities, so the two pools differ in size
    held = torch.stack([data.links[:5, 0], data.links[100:105, 1]], dim=1)
    wrong = torch.stack([data.links[60:70, 0], data.links[70:80, 1]], dim=1)  # added, but not gold links
    added = torch.cat([data.links[50:60], wrong])
    got = study.mnn_scores(joint, data, used, held, added=added)
    count, right = brute_mnn_gold(joint, data, torch.cat([used, held]))
    assert got["mnn"] == count and got["mnn_correct"] == right
    assert got["mnn_added"] == label_free_scores(joint, data.n1, used, held, added=added)["mnn_added"] > 0
    assert got["mnn_own"] == count - got["mnn_added"] and got["mnn_added"] <= got["added"]
    rest, _ = brute_mnn_gold(joint, data, torch.cat([used, held, added]))
    free_left, free_right = data.n1 - 50 - 20, data.n2 - 50 - 5 - 20
    assert free_left != free_right
    assert got["mnn_rest"] == rest and got["mnn_rest_rate"] == pytest.approx(rest / free_left)
    assert got["added"] == 20 and got["added_precision"] == pytest.approx(0.5)
    assert "mnn_added" not in study.mnn_scores(joint, data, used)  # without added: the plain scores


def test_table_adds_the_added_pair_criteria_when_every_history_has_them(study):
    rows = history([900, 1000, 1100], [0.5, 0.7, 0.6])
    for r, own, rest, rate in zip(rows, (900, 800, 700), (850, 750, 650), (0.2, 0.3, 0.1)):
        r.update(mnn_added=r["mnn"] - own, mnn_own=own, mnn_rest=rest, mnn_rest_rate=rate, added=1,
                 added_precision=0.9)
    text = study.table({"psqe": rows})
    assert "| mnn_own pick | mnn_rest_rate pick |" in text
    # mnn: the last check; mnn_own: the first; mnn_rest_rate: the second
    assert "| psqe | 0.5000 (ep 20) | 0.5000 (ep 20) | 0.6000 (ep 60) | 0.5000 (ep 20) | 0.5000 (ep 20) " \
           "| 0.7000 (ep 40) | 0.6000 (ep 60) | 0.7000 (ep 40) |" in text
    assert "| seeds | val_mrr | val_hits@1 | mnn | mnn_cos | mnn_own | mnn_rest_rate |" in text  # correlations
    assert "| psqe | +nan | +nan | +0.50 | +nan | -0.50 | +0.50 |" in text
    assert "| 40 | 0.7000 | 1000 | 200 | 800 | 750 | 0.3000 | 1 | 0.900 |" in text  # the every-check table
    mixed = study.table({"psqe": rows, "uvp": history([1, 2, 3], [0.1, 0.2, 0.3])})
    assert "mnn_own pick" not in mixed and "`psqe`: every check" in mixed  # uvp's history lacks the criteria


def test_run_one_records_pcmea_pseudo_links(study):
    """With PCMEA the study passes the pseudo-links: from the first accepted ones, ``added`` counts them."""
    from psqe.align.metrics import clean_split

    pair = make_pair(200, seed=4)
    data = AlignData.from_pair(pair)
    split = clean_split(pair.links, pair.links[:60], val_ratio=0.2, seed=0).to_pair_index(data)
    small = dict(graph_dim=16, visual_dim=8, attribute_dim=8, relation_dim=8, momentum_start=2,
                 momentum_every=1, pseudo_every=1, pseudo_persist=1)
    hist = study.run_one("pcmea", data, split, 8, 2, 7, **small)
    assert hist[0]["added"] == 0 and hist[-1]["added"] > 0
    assert all(r["mnn_added"] <= r["added"] for r in hist)
    assert hist[-1]["mnn_added"] > 0  # accepted pseudo-links are mutual neighbours of (nearly) this embedding


def test_mnn_holdout_against_a_dense_oracle(study):
    """``holdout``: the mutual neighbours whose kg1 entity is held out, and the gold ones among them."""
    data = AlignData.from_pair(make_pair(200, seed=2))
    g = torch.Generator().manual_seed(3)
    joint = torch.randn(data.n1 + data.n2, 16, generator=g)
    joint[data.links[:, 1]] = joint[data.links[:, 0]] + 0.3 * torch.randn(data.links.shape[0], 16, generator=g)
    used = data.links[:50]
    held = study.holdout_entities(data, 0.3, 5, used)
    assert torch.equal(held, study.holdout_entities(data, 0.3, 5, used))  # seeded
    assert not torch.equal(held, study.holdout_entities(data, 0.3, 6, used))
    assert held.numel() == int(0.3 * (data.n1 - 50)) and not torch.isin(held, used).any()
    got = study.mnn_scores(joint, data, used, holdout=held)
    mine = [p for p in brute_mnn_pairs(joint, data, used) if p[0] in set(held.tolist())]
    gold = set(map(tuple, data.links.tolist()))
    assert 0 < got["mnn_holdout"] == len(mine) < got["mnn"]
    assert 0 < got["mnn_holdout_correct"] == sum(p in gold for p in mine) <= len(mine)
    with pytest.raises(ValueError, match="fraction must be in"):
        study.holdout_entities(data, 1.0, 0, used)
    with pytest.raises(ValueError, match="holds none out"):  # 0.001 of 150 free entities rounds down to none
        study.holdout_entities(data, 0.001, 0, used)


def test_run_one_holds_entities_out_of_pcmea_pseudo_links(study):
    """Held out: PCMEA pairs none of them, so holding out every free kg1 entity leaves no pseudo-link
    (the same run without it accepts some, test_run_one_records_pcmea_pseudo_links); a model without
    ``exclude`` is refused."""
    from psqe.align.metrics import clean_split
    from psqe.align.selection import free_entities

    pair = make_pair(200, seed=4)
    data = AlignData.from_pair(pair)
    split = clean_split(pair.links, pair.links[:60], val_ratio=0.2, seed=0).to_pair_index(data)
    small = dict(graph_dim=16, visual_dim=8, attribute_dim=8, relation_dim=8, momentum_start=2,
                 momentum_every=1, pseudo_every=1, pseudo_persist=1)
    every, _ = free_entities(data.num_entities, data.n1, split.train, split.val)
    hist = study.run_one("pcmea", data, split, 8, 2, 7, every, **small)
    assert all(r["added"] == 0 for r in hist)
    assert all(r["mnn_holdout"] == r["mnn"] for r in hist)  # every free kg1 entity is held out
    some = study.holdout_entities(data, 0.5, 7, split.train, split.val)
    hist = study.run_one("pcmea", data, split, 8, 2, 7, some, **small)
    assert hist[-1]["added"] > 0 and 0 < hist[-1]["mnn_holdout"] < hist[-1]["mnn"]
    with pytest.raises(ValueError, match="no exclude"):
        study.run_one("mclea", data, split, 2, 1, 7, some)


def test_table_adds_mnn_holdout_and_dashes_precision_before_any_pair(study):
    rows = history([900, 1000, 1100], [0.5, 0.7, 0.6])
    for r, added, held in zip(rows, (0, 5, 9), (300, 350, 320)):
        r.update(mnn_added=0, mnn_own=r["mnn"], mnn_rest=r["mnn"], mnn_rest_rate=0.5, added=added,
                 added_precision=0.8 if added else 0.0, mnn_holdout=held, mnn_holdout_correct=held - 10)
    text = study.table({"psqe": rows})
    assert "| mnn_own pick | mnn_rest_rate pick | mnn_holdout pick | final pick |" in text
    assert "| 0.7000 (ep 40) | 0.6000 (ep 60) | 0.7000 (ep 40) |" in text  # mnn_holdout's pick is the best
    assert "| 20 | 0.5000 | 900 | 0 | 900 | 900 | 0.5000 | 0 | - | 300 | 290 |" in text
    assert "| 40 | 0.7000 | 1000 | 0 | 1000 | 1000 | 0.5000 | 5 | 0.800 | 350 | 340 |" in text


def test_main_holds_out_a_share_of_the_entities_no_seed_uses(study, tmp_path, caplog):
    """``main --holdout``: the pool is drawn by the train seed from the kg1 entities that neither the training
    nor the held-out seeds use, and every check records its count; bad ``--holdout`` uses are refused first."""
    import logging

    from loader_files import write_pair_with_features
    from psqe.reproduce.cells import report_clean_split

    pair = make_pair(1000, seed=3)
    folder, features, loaded = write_pair_with_features(pair, tmp_path)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i, method in enumerate(study.METHODS):
        (seeds / f"{method}.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in pair.links[i * 100:i * 100 + 100].tolist()))
    args = ["--dataset", str(folder), "--root", str(tmp_path), "--features", str(features),
            "--seeds", str(seeds), "--methods", "psqe", "--epochs", "4", "--every", "2", "--out", str(tmp_path / "o")]
    with caplog.at_level(logging.INFO, logger="selection_study"):
        assert study.main([*args, "--model", "pcmea", "--holdout", "0.2"]) == 0
    data = AlignData.from_pair(loaded)
    sets = [torch.as_tensor(pair.links[i * 100:i * 100 + 100]) for i in range(3)]
    split = report_clean_split(loaded, sets[2], sets, "val", 42).to_pair_index(data)
    assert split.val.numel() > 0
    size = study.holdout_entities(data, 0.2, 42, split.train, split.val).numel()
    assert f"{size} free kg1 entities held out" in caplog.text
    hist = json.loads((tmp_path / "o" / "pcmea-psqe.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 3] and all(0 < r["mnn_holdout"] < r["mnn"] for r in hist)
    for bad in (["--model", "pcmea", "--holdout", "1.5"], ["--model", "mclea", "--holdout", "0.2"],
                ["--model", "pcmea", "--holdout", "0.2", "--from-json"]):
        with pytest.raises(SystemExit):
            study.main([*args, *bad])
