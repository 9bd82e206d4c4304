"""Loaders on the shared data (exact counts) and on small folders written here."""
from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from conftest import DATA
from loader_files import write_dbp_pair, write_eva, write_openea

from psqe.data import DatasetError, KGPair, KnowledgeGraph, LoadedPair, load_dataset
from psqe.data.layout import detect_layout


def shared(rel: str):
    folder = DATA / rel
    if not (folder / "ent_ids_1").is_file():
        pytest.skip(f"shared dataset {rel} not found under {DATA} (set PSQE_DATA to the data folder)")
    return folder


#                  folder, entities kg1/kg2, triples kg1/kg2, links, relations kg1/kg2
SHARED = [
    ("DBP15K/zh_en", (19388, 19572), (70414, 95142), 15000, (1701, 1323)),
    ("DBP15K/ja_en", (19814, 19780), (77214, 93484), 15000, (1299, 1153)),
    ("DWY15K/dbp_wd_15k_V1", (15000, 15000), (38421, 40159), 15000, (253, 144)),
    ("DWY15K/OEA_D_W_15K_V1", (15000, 15000), (38265, 42746), 15000, (248, 169)),
]


@pytest.mark.parametrize("rel,entities,triples,links,relations", SHARED, ids=[s[0] for s in SHARED])
def test_shared_exact_counts(rel, entities, triples, links, relations):
    pair = load_dataset(shared(rel))
    assert isinstance(pair, KGPair) and pair.layout == "eva" and pair.name == rel
    assert (pair.kg1.num_entities, pair.kg2.num_entities) == entities
    assert (pair.kg1.num_triples, pair.kg2.num_triples) == triples
    assert pair.links.dtype == torch.long and tuple(pair.links.shape) == (links, 2)
    assert (len(pair.kg1.relation_names), len(pair.kg2.relation_names)) == relations
    n = sum(entities)
    assert torch.equal(torch.sort(torch.cat([pair.kg1.ids, pair.kg2.ids])).values, torch.arange(n))
    assert pair.kg1.contains(pair.links[:, 0]).all() and pair.kg2.contains(pair.links[:, 1]).all()
    assert pair.warnings == []


@pytest.mark.parametrize("rel,total", [("DBP15K/zh_en", 38960), ("DBP15K/ja_en", 39594)])
def test_names_json_covers_all_entities(rel, total):
    pair = load_dataset(shared(rel))
    assert pair.files["names_json"].name == f"dbp_{rel.split('/')[1]}.json"
    assert len(pair.name_tokens) == total == pair.num_entities
    assert all(pair.tokens_for(pair.kg1)) and all(pair.tokens_for(pair.kg2))
    assert len(pair.translated_names) == pair.kg1.num_entities
    assert pair.name_tokens[0] == (["abdullah", "gul"] if rel.endswith("zh_en") else ["allianz", "riviera"])


def test_dwy_extras():
    pair = load_dataset(shared("DWY15K/dbp_wd_15k_V1"))
    assert pair.files["links"].name == "ref_ent_ids"  # no trailing newline in this file
    sup = pair.splits["sup_ent_ids"]
    assert sup["train"].shape == (4500, 2) and sup["test"].shape == (10500, 2)
    assert pair.kg1.attributes is not None and pair.kg2.attributes is None
    assert sum(1 for a in pair.kg1.attributes if a) == 15000
    oea = load_dataset(shared("DWY15K/OEA_D_W_15K_V1"))
    assert sum(1 for a in oea.kg1.attributes if a) == 14549
    assert oea.files["rel_ids"].name == "rel_ids"


def test_by_name_needs_a_root(monkeypatch):
    shared("DBP15K/zh_en")
    monkeypatch.delenv("PSQE_DATA", raising=False)
    monkeypatch.chdir(DATA.parent)  # names are never resolved against the cwd
    with pytest.raises(DatasetError, match="PSQE_DATA"):
        load_dataset("zh_en")
    assert load_dataset("zh_en", root=DATA).kg1.num_entities == 19388
    monkeypatch.setenv("PSQE_DATA", str(DATA))
    pair = load_dataset("DWY15K/V1")
    assert pair.name == "DWY15K/dbp_wd_15k_V1" and pair.kg2.num_triples == 40159


def test_zh_en_load_time():
    folder = shared("DBP15K/zh_en")
    load_dataset(folder)  # warm the file cache
    start = time.perf_counter()
    load_dataset(folder)
    assert time.perf_counter() - start < 5.0  # about 0.3 s alone; generous for shared CPUs


def test_fr_en_loads_by_format_alone(tmp_path):
    folder = write_dbp_pair(tmp_path, "fr_en")
    assert detect_layout(folder) == "eva"
    for pair in (load_dataset(folder), load_dataset("DBP15K/fr_en", root=tmp_path), load_dataset("fr_en", root=tmp_path)):
        assert pair.name == "DBP15K/fr_en"
        assert (pair.kg1.num_entities, pair.kg2.num_entities, len(pair.links)) == (6, 5, 4)
        assert pair.kg1.attributes[0] == ["http://a/birth", "http://a/name"] and pair.kg1.attributes[5] == []
        assert pair.tokens_for(pair.kg2)[0] == ["tok6", "x"]
        visual, present = pair.kg1.features["visual"], pair.kg1.present["visual"]
        assert present.tolist() == [True, False, True, False, False, False]
        assert visual[2].tolist() == [2.0] * 4 and visual[1].tolist() == [0.0] * 4
        assert pair.kg2.present["visual"].tolist() == [False, True, False, False, False]
    assert load_dataset(folder, image_features=False).kg1.features == {}


def test_dwy_v2_by_format_with_rsn_nesting(tmp_path):
    inner = write_eva(tmp_path / "DWY15K" / "dbp_wd_15k_V2" / "mapping" / "0_3", link_file="ref_ent_ids", trailing_newline=False)
    (tmp_path / "pkls").mkdir()
    (tmp_path / "pkls" / "dbpedia_wikidata_15k_dense_GA_id_img_feature_dict.pkl").write_bytes(
        pickle.dumps({0: np.ones(3), 8: np.zeros(3)}))
    pair = load_dataset("DWY15K/V2", root=tmp_path)
    assert pair.source == inner and pair.name == "DWY15K/dbp_wd_15k_V2"
    assert pair.kg1.present["visual"].sum() == 1 and pair.kg2.present["visual"].tolist()[2]


def test_openea_layout(tmp_path):
    folder = write_openea(tmp_path / "D_W_15K_V1")
    assert detect_layout(folder) == "openea"
    pair = load_dataset(folder)
    assert isinstance(pair, LoadedPair) and pair.layout == "openea" and pair.name == "D_W_15K_V1"
    assert pair.kg1.names == ["http://d/a", "http://d/b", "http://d/c", "http://d/d"]
    assert pair.kg2.names == ["http://w/Q1", "http://w/Q2", "http://w/Q3", "http://w/Q4"]
    assert pair.kg1.ids.tolist() == [0, 1, 2, 3] and pair.kg2.ids.tolist() == [4, 5, 6, 7]
    assert pair.kg1.triples.tolist() == [[0, 0, 1], [1, 1, 2]] and pair.kg2.triples.tolist() == [[4, 2, 5], [6, 2, 4]]
    assert pair.kg1.relation_names == {0: "http://d/r1", 1: "http://d/r2"} and pair.kg2.relation_names == {2: "http://w/P1"}
    assert pair.kg1.attributes == [["http://d/name"], [], ["http://d/born"], ["http://d/name"]]
    assert pair.links.tolist() == [[0, 4], [1, 5], [2, 6]]
    assert sorted(pair.splits) == ["1", "2"]
    assert {k: v.tolist() for k, v in pair.splits["1"].items()} == {"train": [[0, 4]], "valid": [[1, 5]], "test": [[2, 6]]}
    again = load_dataset(folder)  # deterministic ids
    assert torch.equal(again.kg2.triples, pair.kg2.triples) and again.kg2.names == pair.kg2.names
    assert pair.kg1.degrees().tolist() == [1, 2, 1, 0]


def test_no_layout(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError, match="no known dataset layout"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found under"):
        load_dataset("DBP15K/xx_en", root=tmp_path)


def test_empty_graph_lookups():
    # kg.py fix: to_local of no ids used to raise IndexError on a graph without entities
    kg = KnowledgeGraph(torch.zeros(0, dtype=torch.long), [], torch.zeros(0, 3))
    assert kg.to_local(torch.zeros(0, dtype=torch.long)).numel() == 0 and kg.degrees().numel() == 0
