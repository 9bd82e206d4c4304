"""psqe.features.build: the R1 / R2 feature sets, and the package's docstring examples."""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch

pytest.importorskip("transformers", reason="the text encoder needs transformers (psqe[features])")

from features_data import random_pair, tiny_bert
from psqe.data import KGPair
from psqe.features import build_feature_set, entity_names, load_feature_set, require_seed_slots, save_feature_set
from psqe.features.text import TextEncoder

SMALL_SIM = {"dim": 128, "latent_dim": 16, "budget": 100}
WORDS = ["paris", "france", "banana", "bread", "city", "river"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def pair():
    p = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)
    return p


def names_for(pair, shift: int = 0) -> dict[int, list[str]]:
    out = {}
    for kg in (pair.kg1, pair.kg2):
        for i, gid in enumerate(kg.ids.tolist()):
            out[gid] = [WORDS[(i + shift) % 6], WORDS[(i * 7 + shift) % 6]]
    return out


def build(pair, setting, bert, tmp_path, **kw):
    enc = TextEncoder(bert, cache_dir=tmp_path, progress=False)
    return build_feature_set(pair, setting, text_encoder=enc, seed=0, glove=False, simulation=SMALL_SIM, **kw)


def test_r1(pair, bert, tmp_path):
    summary = build(pair, "R1", bert, tmp_path, names=names_for(pair))
    for kg in (pair.kg1, pair.kg2):
        assert {"visual", "relation", "char", "relation_bag"} <= set(kg.features)
        assert "attribute" not in kg.features and kg.features["visual"].shape == (500, 32)
    assert summary["modalities"]["visual"]["source"].startswith("R1")
    assert summary["absent"]["attribute"] == "no attribute names on kg1 and kg2"
    assert summary["calibration"] is None
    # same name -> same visual vector in R1 (names as pivot)
    enc = TextEncoder(bert, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(pair.kg1.features["visual"][0], enc.encode(["paris paris"])[0])
    a, b = enc.encode(["paris france", "banana bread"])  # and different names differ (each word is in the vocabulary)
    assert float((a - b).abs().max()) > 1e-3


def test_r1_entities_without_a_name_get_evas_draw(pair, bert, tmp_path):
    """R1's visual slot for a nameless entity is missing like an image: EVA's N(mean, std) draw, not a zero row."""
    names = names_for(pair)
    for gid in pair.kg1.ids[:3].tolist():
        names[gid] = []
    build(pair, "R1", bert, tmp_path, names=names)
    visual, present = pair.kg1.features["visual"], pair.kg1.present["visual"]
    assert present.tolist()[:4] == [False, False, False, True]
    assert bool((visual[:3].abs().sum(1) > 0).all()) and not torch.equal(visual[0], visual[1])
    named = torch.cat([visual[3:], pair.kg2.features["visual"]])
    assert float((visual[:3].mean(0) - named.mean(0)).abs().max()) < 4 * float(named.std(0).max())


def test_r2_keeps_names_out_of_the_seed_slots(pair, bert, tmp_path):
    summary = build(pair, "R2", bert, tmp_path, names=names_for(pair))
    cal = summary["calibration"]
    assert "SIMULATED" in summary["modalities"]["visual"]["source"] and "simulated" in cal["kind"]
    assert abs(cal["type1_precision"] - 0.75) <= 0.03 and cal["noise_scale"] > 0
    seed_slots = {k: pair.kg1.features[k].clone() for k in ("visual", "relation")}
    char = pair.kg1.features["char"].clone()
    build(pair, "R2", bert, tmp_path, names=names_for(pair, shift=1), noise_scale=cal["noise_scale"])
    for k, v in seed_slots.items():
        assert torch.equal(pair.kg1.features[k], v), f"names leaked into {k}"
    assert not torch.equal(pair.kg1.features["char"], char)  # the aligners' name features do change
    assert pair.kg1.features["visual"].shape == (500, 128)


def test_without_text_the_aligners_inputs_are_the_same(pair, bert, tmp_path, monkeypatch):
    """text=False loads no text model and leaves out the text slots; every other table is the one a
    build with the text encoder gives (same seed and noise scale)."""
    with_text = build(pair, "R2", bert, tmp_path, noise_scale=0.5)
    tables = {(side, k): (kg.features[k].clone(), kg.present[k].clone())
              for side, kg in ((1, pair.kg1), (2, pair.kg2)) for k in kg.features}
    fresh = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)

    def no_model(*args, **kwargs):
        raise AssertionError("text=False loaded a text encoder")

    monkeypatch.setattr("psqe.features.build.TextEncoder", no_model)
    summary = build_feature_set(fresh, "R2", seed=0, glove=False, simulation=SMALL_SIM, noise_scale=0.5, text=False)
    for side, kg in ((1, fresh.kg1), (2, fresh.kg2)):
        assert {k for s, k in tables if s == side} - set(kg.features) == {"relation"}
        for k in kg.features:
            assert torch.equal(kg.features[k], tables[side, k][0]) and torch.equal(kg.present[k], tables[side, k][1])
    assert summary["text_model"] is None and with_text["text_model"] is not None
    assert summary["absent"]["relation"] == summary["absent"]["attribute"] == "no text encoder (text=False)"
    assert summary["calibration"]["noise_scale"] == with_text["calibration"]["noise_scale"] == 0.5
    with pytest.raises(ValueError, match="not for R1"):
        build_feature_set(fresh, "R1", glove=False, text=False)
    # no seeds from such a feature set: the seed generator would weigh its visual slot alone
    require_seed_slots(pair, "with text")
    with pytest.raises(ValueError, match=r"f\.safetensors: no 'relation' feature on kg1 and kg2 \(a feature file built with --no-text"):
        require_seed_slots(fresh, "f.safetensors")


def test_attributes_when_both_graphs_have_them(pair, bert, tmp_path):
    for kg in (pair.kg1, pair.kg2):
        kg.attributes = [[f"http://x/attr_{i % 5}"] if i % 3 else [] for i in range(kg.num_entities)]
    summary = build(pair, "R1", bert, tmp_path)
    assert summary["modalities"]["attribute"]["dim"] == 32
    assert pair.kg1.present["attribute"].tolist() == [bool(i % 3) for i in range(500)]
    assert summary["modalities"]["attribute_bag"]["dim"] == 5


def test_glove_file_and_errors(pair, bert, tmp_path):
    glove = tmp_path / "g.txt"
    glove.write_text("paris 1 0\nfrance 0 1\n")
    enc = TextEncoder(bert, cache_dir=tmp_path, progress=False)
    summary = build_feature_set(pair, "r1", text_encoder=enc, glove=glove, names=names_for(pair), bags=False)
    assert summary["modalities"]["name"]["dim"] == 2 and "relation_bag" not in summary["modalities"]
    with pytest.raises(ValueError, match="gold links"):
        build_feature_set(KGPair(pair.kg1, pair.kg2), "R2", text_encoder=enc)
    with pytest.raises(ValueError, match="setting must be one of"):
        build_feature_set(pair, "R3", text_encoder=enc)
    fresh = random_pair(n=50, links=40, triples=100, seed=4)
    with pytest.raises(ValueError, match="R0 needs loaded image features"):
        build_feature_set(fresh, "R0", text_encoder=enc)
    fresh.kg1.set_feature("visual", torch.ones(50, 4))
    fresh.kg2.set_feature("visual", torch.ones(50, 4))
    summary = build_feature_set(fresh, "R0", text_encoder=enc, glove=False)
    assert summary["modalities"]["visual"]["coverage"] == [1.0, 1.0]
    assert summary["modalities"]["visual"]["source"].startswith("R0: loaded image features")
    assert bool((fresh.kg1.features["visual"] == 1).all())  # every entity has an image: nothing replaced


def test_r0_replaces_missing_images_by_evas_rule(tmp_path):
    """Entities without an image get a draw from N(mean, std) of the present rows (both graphs together),
    not zero rows; the presence mask still says which rows are real; the same seed gives the same rows."""
    from loader_files import write_dbp_pair

    from psqe.data import load_dataset

    tables = []
    for seed in (0, 0, 1):
        pair = load_dataset(write_dbp_pair(tmp_path / f"s{len(tables)}", with_images=(0, 2, 7)))
        build_feature_set(pair, "R0", text=False, glove=False, seed=seed)
        tables.append(torch.cat([pair.kg1.features["visual"], pair.kg2.features["visual"]]))
    present = torch.cat([pair.kg1.present["visual"], pair.kg2.present["visual"]])
    ids = torch.cat([pair.kg1.ids, pair.kg2.ids])
    assert sorted(ids[present].tolist()) == [0, 2, 7] and int((~present).sum()) == 8
    table = tables[0]
    assert torch.equal(table[present], torch.stack([torch.full((4,), float(i)) for i in ids[present].tolist()]))
    missing = table[~present]
    assert not bool((missing == 0).all(1).any())  # no zero rows left
    mean, std = 3.0, float(torch.tensor([0.0, 2.0, 7.0]).std(unbiased=False))
    assert abs(float(missing.mean()) - mean) < 3 * std and float(missing.std()) > 0.5  # drawn, not constant
    assert torch.equal(tables[0], tables[1]) and not torch.equal(tables[0], tables[2])


def test_save_and_load_feature_set(pair, bert, tmp_path):
    summary = build(pair, "R2", bert, tmp_path, noise_scale=0.5)
    save_feature_set(pair, tmp_path / "f.safetensors", summary)
    fresh = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)
    assert load_feature_set(fresh, tmp_path / "f.safetensors")["setting"] == "R2"
    assert set(fresh.kg2.features) == set(pair.kg2.features)
    for name in pair.kg1.features:
        assert torch.equal(fresh.kg1.features[name], pair.kg1.features[name])
        assert torch.equal(fresh.kg2.present[name], pair.kg2.present[name])
    other = random_pair(n=400, links=300, triples=1000, seed=3)
    with pytest.raises(ValueError, match="entity ids differ"):
        load_feature_set(other, tmp_path / "f.safetensors")
    with pytest.raises(FileNotFoundError, match="feature file"):
        load_feature_set(other, tmp_path / "none.safetensors")


def test_a_file_for_another_setting_or_pair_is_refused(pair, bert, tmp_path):
    """A file names the setting, the graphs and the gold links it was built from: loading it into a run of
    another setting, or into another pair with the same entity ids, is an error that attaches nothing."""
    summary = build(pair, "R2", bert, tmp_path, noise_scale=0.5)
    assert summary["seed"] == 0 and summary["psqe"]
    path = tmp_path / "f.safetensors"
    save_feature_set(pair, path, summary)
    fresh = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)
    with pytest.raises(ValueError, match=r"f.safetensors: it holds setting R2 features, not R1: pass --setting R2"):
        load_feature_set(fresh, path, setting="R1")
    assert not fresh.kg1.features
    assert load_feature_set(fresh, path, setting="r2")["setting"] == "R2"
    moved = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)
    moved.kg1.triples[0, 2] = (moved.kg1.triples[0, 2] + 1) % 500  # one triple of kg1 points elsewhere
    with pytest.raises(ValueError, match="built for another pair: the entity ids match, the triples differ"):
        load_feature_set(moved, path)
    relinked = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)
    relinked.links = relinked.links[1:]
    with pytest.raises(ValueError, match="built for another pair: the entity ids match, the gold links differ"):
        load_feature_set(relinked, path)
    assert not moved.kg1.features and not relinked.kg1.features
    unlinked = random_pair(n=500, links=400, triples=2000, relations=12, seed=3)
    unlinked.links = None  # a folder without its link file reads the same features
    assert load_feature_set(unlinked, path)["setting"] == "R2"


def test_a_graph_without_relation_names_has_no_relation_slot(pair, bert, tmp_path, caplog):
    """No relation names on a graph: the relation slot is absent (the seed generator renormalises, and says
    so), not an all-zero table that keeps its weight; seeds may still be made from such a feature set."""
    pair.kg2.relation_names = {}
    with caplog.at_level("WARNING", logger="psqe.features"):
        summary = build(pair, "R2", bert, tmp_path, noise_scale=0.5)
    assert summary["absent"]["relation"] == "no relation names on kg2 (no rel_ids file?)"
    assert "relation modality absent" in caplog.text
    assert all("relation" not in kg.features for kg in (pair.kg1, pair.kg2))
    caplog.clear()
    with caplog.at_level("WARNING", logger="psqe.features"):
        require_seed_slots(pair, "f.safetensors")
    assert "the dataset names no relations" in caplog.text


def test_a_bad_feature_file_is_named_and_attaches_nothing(tmp_path):
    """Corrupt, truncated, foreign or inconsistent files: a ValueError naming the file; the pair keeps its tables."""
    from safetensors.torch import save_file

    pair = random_pair(n=50, links=40, triples=100, relations=3, seed=1)
    pair.kg1.set_feature("visual", torch.ones(50, 4))
    good = {f"kg{k}/ids": kg.ids for k, kg in ((1, pair.kg1), (2, pair.kg2))}
    meta = {"format": "psqe-features-v1"}
    n2 = pair.kg2.num_entities
    cases = {
        "garbage": (b"\xff" * 64, "not a readable safetensors file"),
        "empty": (b"", "not a readable safetensors file"),
        "foreign": ({"x": torch.zeros(2)}, None, "not written by psqe.features.save_feature_set"),
        "no_mask": ({**good, "kg1/relation": torch.zeros(50, 3)}, meta, "table kg1/relation has no kg1/relation.present"),
        "bad_summary": (good, {**meta, "summary": "{not json"}, "Expecting property name"),
        "one_sided": ({**good, "kg1/visual": torch.zeros(50, 4), "kg1/visual.present": torch.ones(50, dtype=torch.bool)},
                      meta, r"table\(s\) \['visual'\] on one graph only"),
        # kg1's table is fine, kg2's has the wrong row count: kg1 must not keep the file's table either
        "half": ({**good, "kg1/visual": torch.zeros(50, 4), "kg1/visual.present": torch.ones(50, dtype=torch.bool),
                  "kg2/visual": torch.zeros(n2 - 1, 4), "kg2/visual.present": torch.ones(n2 - 1, dtype=torch.bool)},
                 meta, r"kg2: feature 'visual': expected shape"),
    }
    for name, case in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if isinstance(case[0], bytes):
            path.write_bytes(case[0])
        else:
            save_file(case[0], str(path), metadata=case[1])
        with pytest.raises(ValueError, match=case[-1]) as info:
            load_feature_set(pair, path)
        assert str(path) in str(info.value), name
        assert set(pair.kg1.features) == {"visual"} and bool((pair.kg1.features["visual"] == 1).all()), name
        assert not pair.kg2.features, name


def test_entity_names_fall_back_to_uris(pair):
    n1, n2 = entity_names(pair)
    assert n1[0] == ["e0"] and len(n2) == 500


@pytest.mark.parametrize("name", ["_util", "text", "image", "surface", "simulated", "build"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"psqe.features.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
