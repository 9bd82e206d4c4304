"""Tiny dataset folders written to tmp_path for the loader tests."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np


def _write(path: Path, lines: list[str], trailing_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if trailing_newline and lines else ""), encoding="utf-8")
    return path


def write_eva(folder: Path, n1: int = 6, n2: int = 5, n_links: int = 4, *, link_file: str = "ill_ent_ids",
              trailing_newline: bool = True) -> Path:
    """An EVA/MCLEA folder: kg1 ids 0..n1-1, kg2 ids n1..n1+n2-1, chains of triples,
    links i <-> n1 + i, relation files and kg1 attributes."""
    ids1, ids2 = list(range(n1)), list(range(n1, n1 + n2))
    _write(folder / "ent_ids_1", [f"{i}\thttp://fr.dbpedia.org/resource/E{i}" for i in ids1])
    _write(folder / "ent_ids_2", [f"{i}\thttp://dbpedia.org/resource/E{i}" for i in ids2])
    _write(folder / "triples_1", [f"{a}\t{k % 2}\t{b}" for k, (a, b) in enumerate(zip(ids1, ids1[1:]))])
    _write(folder / "triples_2", [f"{a}\t{2 + k % 2}\t{b}" for k, (a, b) in enumerate(zip(ids2, ids2[1:]))])
    _write(folder / link_file, [f"{i}\t{n1 + i}" for i in range(n_links)], trailing_newline)
    _write(folder / "rel_ids_1", ["0\thttp://fr.dbpedia.org/property/p0", "1\thttp://fr.dbpedia.org/property/p1"])
    _write(folder / "rel_ids_2", ["2\thttp://dbpedia.org/property/p0", "3\thttp://dbpedia.org/property/p1"])
    _write(folder / "training_attrs_1", [f"http://fr.dbpedia.org/resource/E{i}\thttp://a/birth\thttp://a/name" for i in ids1[:3]])
    return folder


def write_dbp_pair(root: Path, code: str = "fr_en", n1: int = 6, n2: int = 5, with_images: tuple[int, ...] = (0, 2, 7)) -> Path:
    """``root/DBP15K/<code>`` with its names JSON one level up and images in ``root/pkls``."""
    folder = write_eva(root / "DBP15K" / code, n1, n2)
    names = [[i, [f"tok{i}", "x"]] for i in range(n1 + n2)]
    (root / "DBP15K" / "translated_ent_name").mkdir(parents=True, exist_ok=True)
    (root / "DBP15K" / "translated_ent_name" / f"dbp_{code}.json").write_text(json.dumps(names))
    if with_images:
        (root / "pkls").mkdir(exist_ok=True)
        images = {i: np.full(4, float(i), dtype=np.float32) for i in with_images}
        (root / "pkls" / f"{code}_GA_id_img_feature_dict.pkl").write_bytes(pickle.dumps(images))
    return folder


def write_openea(folder: Path, *, folds: int = 2) -> Path:
    """An OpenEA v1.1 folder: 4 + 4 entities (one of each side only in attr_triples), 3 links."""
    _write(folder / "rel_triples_1", ["http://d/a\thttp://d/r1\thttp://d/b", "http://d/b\thttp://d/r2\thttp://d/c"])
    _write(folder / "rel_triples_2", ["http://w/Q1\thttp://w/P1\thttp://w/Q2", "http://w/Q3\thttp://w/P1\thttp://w/Q1"])
    _write(folder / "attr_triples_1", ["http://d/a\thttp://d/name\tA", "http://d/d\thttp://d/name\tD\tmore",
                                       "http://d/a\thttp://d/name\tA2", "http://d/c\thttp://d/born"])
    _write(folder / "attr_triples_2", ["http://w/Q4\thttp://w/label\tq4"])
    _write(folder / "ent_links", ["http://d/a\thttp://w/Q1", "http://d/b\thttp://w/Q2", "http://d/c\thttp://w/Q3"])
    for k in range(1, folds + 1):
        _write(folder / "721_5fold" / str(k) / "train_links", ["http://d/a\thttp://w/Q1"])
        _write(folder / "721_5fold" / str(k) / "valid_links", ["http://d/b\thttp://w/Q2"])
        _write(folder / "721_5fold" / str(k) / "test_links", ["http://d/c\thttp://w/Q3"])
    return folder


def replace_line(path: Path, line: int, text: str) -> None:
    """Replace 1-based ``line`` of ``path`` (appending when it is one past the end)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if line == len(lines) + 1:
        lines.append(text)
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pair_folder(pair, folder: Path) -> Path:
    """An EVA-layout folder holding a :class:`psqe.data.KGPair`'s entities, triples, relation names (the
    pair's, else ``http://r/<id>``) and links."""
    for k, kg in ((1, pair.kg1), (2, pair.kg2)):
        _write(folder / f"ent_ids_{k}", [f"{i}\t{name}" for i, name in zip(kg.ids.tolist(), kg.names)])
        _write(folder / f"triples_{k}", ["\t".join(map(str, t)) for t in kg.triples.tolist()])
        used = sorted(set(kg.triples[:, 1].tolist()))
        _write(folder / f"rel_ids_{k}", [f"{r}\t{kg.relation_names.get(r, f'http://r/{r}')}" for r in used])
    _write(folder / "ill_ent_ids", [f"{a}\t{b}" for a, b in pair.links.tolist()])
    return folder


def write_pair_with_features(pair, root: Path):
    """``pair`` as an EVA folder ``root/toy`` plus its features (``root/features.safetensors``).

    Returns the folder, the feature file and the pair as loaded from the folder (features attached)."""
    from psqe.data import load_dataset
    from psqe.features import save_feature_set

    folder = write_pair_folder(pair, root / "toy")
    loaded = load_dataset(folder)
    for kg, src in ((loaded.kg1, pair.kg1), (loaded.kg2, pair.kg2)):
        order = src.to_local(kg.ids)
        for m in src.features:
            kg.set_feature(m, src.features[m][order], src.present[m][order])
    save_feature_set(loaded, root / "features.safetensors")
    return folder, root / "features.safetensors", loaded
