"""Loader for the EVA / MCLEA / MEAformer layout (DBP15K, DWY15K, Multi-OpenEA).

Files of a dataset folder (ids are global: both graphs share one id space):

==========================  =========  ==================================================
file                        required   content
==========================  =========  ==================================================
``ent_ids_1``, ``ent_ids_2``  yes       ``id<TAB>URI``
``triples_1``, ``triples_2``  yes       ``head<TAB>relation<TAB>tail`` (ids)
``ill_ent_ids``               no [1]_   gold links ``id1<TAB>id2`` (else ``ref_ent_ids``)
``rel_ids_1/2`` or ``rel_ids``  no      ``relation id<TAB>URI``
``training_attrs_1/2``        no        ``URI<TAB>attribute URI<TAB>...`` per entity
``ent_ids_1_trans_goo``       no        ``id<TAB>machine-translated name``
``sup_ent_ids``               no        DWY's 30 % training links (a subset of the gold links)
==========================  =========  ==================================================

.. [1] without either link file the pair loads with ``links=None`` and a warning.

Found next to the folder: the names JSON ``translated_ent_name/dbp_<pair>.json``
(in the folder or one level up, as ``DBP15K/translated_ent_name`` sits beside
``DBP15K/zh_en``) and the image features ``<pair>_GA_id_img_feature_dict.pkl``
(DWY15K: ``dbpedia_wikidata_15k_{norm,dense}_GA_id_img_feature_dict.pkl`` for
``dbp_wd_15k_V1``/``V2``), in the folder or up to three levels up, directly or
under ``pkls/``. Images become modality ``"visual"``; entities without an image
get a zero row with ``present=False`` (the feature layer applies EVA's
N(mean, std) rule). The pickle is read with :mod:`psqe.data.safe_pickle`.

Errors (:class:`~psqe.data.common.DatasetError`, naming file and line): a missing
required file, a malformed line, an entity id twice (in one file or in both), a
triple or link naming an unknown entity, a one-to-many link, bad features.
Warnings (logged and kept in ``pair.warnings``, each with its count): attribute
lines whose URI is not in ``ent_ids_k`` (their attributes are not attached),
repeated attribute lines for one URI (merged), triples whose relation id is not
in the relation file (kept, unnamed), entities the names JSON does not cover.

>>> import os, pathlib, tempfile
>>> from psqe.data.eva import load_eva
>>> d = pathlib.Path(tempfile.mkdtemp()) / "xx_en"
>>> d.mkdir()
>>> for f, text in {"ent_ids_1": "0\\thttp://xx/A\\n1\\thttp://xx/B\\n", "ent_ids_2": "2\\thttp://en/A\\n",
...                 "triples_1": "0\\t0\\t1\\n", "triples_2": "", "ill_ent_ids": "0\\t2"}.items():
...     _ = (d / f).write_text(text)
>>> pair = load_eva(d)
>>> pair.kg1.num_entities, pair.kg1.triples.tolist(), pair.links.tolist()
(2, [[0, 0, 1]], [[0, 2]])
>>> pair = load_eva(os.path.join(os.environ["PSQE_DATA"], "DBP15K", "zh_en"))  # doctest: +SKIP
>>> pair.kg1.num_entities, pair.kg2.num_triples, pair.links.shape  # doctest: +SKIP
(19388, 95142, torch.Size([15000, 2]))
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .common import DatasetError, IntTable, LoadedPair, Rows, check_links, first_duplicate, read_rows, read_text, require
from .feature_files import attach_features, read_id_features
from .kg import KnowledgeGraph

LAYOUT = "EVA/MCLEA (ent_ids_1/2, triples_1/2, ill_ent_ids)"


def load_eva(folder: str | Path, name: str | None = None, *, image_features: str | Path | bool | None = None) -> LoadedPair:
    """Load an EVA/MCLEA-layout folder (see the module doc).

    Args:
        folder: the dataset folder (for RSN's ``dbp_wd_15k_V1/mapping/0_3`` nesting
            either the inner or the outer folder).
        name: label of the pair (default: ``"DBP15K/zh_en"`` style from the path).
        image_features: a feature file for modality ``"visual"`` (any format of
            :mod:`psqe.data.feature_files`); None: look for the community pickle;
            False: load no images.
    """
    folder = Path(folder)
    if not (folder / "ent_ids_1").is_file() and (folder / "mapping" / "0_3" / "ent_ids_1").is_file():
        folder = folder / "mapping" / "0_3"
    dataset_dir = folder.parent.parent if folder.parent.name == "mapping" else folder
    files: dict[str, Path] = {}
    ids, uris, ent_rows = [], [], []
    warn_later: list[str] = []
    for k in (1, 2):
        files[f"ent_ids_{k}"] = require(folder, f"ent_ids_{k}", LAYOUT)
        i, u, rows = _read_entities(files[f"ent_ids_{k}"])
        ids.append(i)
        uris.append(u)
        ent_rows.append(rows)
    clash = np.isin(ids[1], ids[0])
    if clash.any():
        r = int(np.flatnonzero(clash)[0])
        first = int(np.flatnonzero(ids[0] == ids[1][r])[0])
        raise ent_rows[1].error(r, f"duplicate entity id {int(ids[1][r])}: also on line {ent_rows[0].line(first)} of ent_ids_1")
    triples = []
    for k in (1, 2):
        repeated = len(uris[k - 1]) - len(set(uris[k - 1]))
        if repeated:
            warn_later.append(f"{repeated} URIs of ent_ids_{k} name two entity ids (attributes go to the later id)")
        files[f"triples_{k}"] = require(folder, f"triples_{k}", LAYOUT)
        triples.append(_read_triples(files[f"triples_{k}"], ids[k - 1], ids[2 - k], k))
    pair = LoadedPair(
        KnowledgeGraph(torch.from_numpy(ids[0]), uris[0], torch.from_numpy(triples[0])),
        KnowledgeGraph(torch.from_numpy(ids[1]), uris[1], torch.from_numpy(triples[1])),
        links=None, name=name or _default_name(dataset_dir), layout="eva", source=folder, files=files)
    for message in warn_later:
        pair.warn(message)
    _attach_relations(pair, folder, triples)
    for k, kg in ((1, pair.kg1), (2, pair.kg2)):
        if (folder / f"training_attrs_{k}").is_file():
            files[f"training_attrs_{k}"] = folder / f"training_attrs_{k}"
            kg.attributes = _read_attributes(pair, files[f"training_attrs_{k}"], uris[k - 1], k)
    link_file = next((folder / f for f in ("ill_ent_ids", "ref_ent_ids") if (folder / f).is_file()), None)
    if link_file is None:
        pair.warn("no ill_ent_ids or ref_ent_ids: loaded without gold links")
    else:
        files["links"] = link_file
        pair.links = torch.from_numpy(_read_links(link_file, ids)[1])
        if (folder / "sup_ent_ids").is_file():
            files["sup_ent_ids"] = folder / "sup_ent_ids"
            pair.splits["sup_ent_ids"] = _read_sup(files["sup_ent_ids"], ids, pair.links)
    _attach_names(pair, folder, dataset_dir.name)
    if (folder / "ent_ids_1_trans_goo").is_file():
        files["ent_ids_1_trans_goo"] = folder / "ent_ids_1_trans_goo"
        pair.translated_names = _read_translated(files["ent_ids_1_trans_goo"], pair)
    if image_features is not False:
        path = Path(image_features) if image_features not in (None, True) else find_image_file(dataset_dir)
        if path is not None:
            files["visual"] = path
            attach_features(pair, "visual", read_id_features(path))
    return pair


def _default_name(dataset_dir: Path) -> str:
    parent = dataset_dir.parent.name
    return f"{parent}/{dataset_dir.name}" if parent.upper().startswith(("DBP", "DWY")) else dataset_dir.name


def _read_entities(path: Path) -> tuple[np.ndarray, list[str], Rows]:
    rows = read_rows(path, 2)
    if not len(rows):
        raise DatasetError("the file lists no entities", path)
    ids = rows.int_column(0)
    dup = first_duplicate(ids)
    if dup is not None:
        raise rows.error(dup[1], f"duplicate entity id {int(ids[dup[1]])} (first on line {rows.line(dup[0])})")
    return ids, rows.column(1), rows


def _read_triples(path: Path, own: np.ndarray, other: np.ndarray, k: int) -> np.ndarray:
    rows = IntTable(path, 3)
    arr = rows.array
    for col in (0, 2):
        ok = np.isin(arr[:, col], own)
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            e = int(arr[r, col])
            hint = f" (it is an entity of kg{3 - k})" if np.isin(e, other) else ""
            raise rows.error(r, f"triple names entity {e}, not in ent_ids_{k}{hint}")
    return arr


def _read_links(path: Path, ids: list[np.ndarray]) -> tuple[IntTable, np.ndarray]:
    rows = IntTable(path, 2)
    arr = rows.array
    if arr.shape[0] == 0:  # an absent file loads without links (warned); an empty one is a broken file
        raise DatasetError("lists no links (expected 'id1<TAB>id2' lines)", path)
    check_links(rows, arr, (ids[0], ids[1]), ("ent_ids_1", "ent_ids_2"))
    return rows, arr


def _read_sup(path: Path, ids: list[np.ndarray], links: torch.Tensor) -> dict[str, torch.Tensor]:
    rows, sup = _read_links(path, ids)
    gold = {(a, b) for a, b in links.tolist()}
    for r, (a, b) in enumerate(sup.tolist()):
        if (a, b) not in gold:
            raise rows.error(r, f"training link ({a}, {b}) is not one of the gold links")
    chosen = {(a, b) for a, b in sup.tolist()}
    rest = [ab for ab in links.tolist() if tuple(ab) not in chosen]
    return {"train": torch.from_numpy(sup), "test": torch.tensor(rest, dtype=torch.long).reshape(-1, 2)}


def _read_relation_file(path: Path) -> dict[int, str]:
    rows = read_rows(path, 2)
    rel = rows.int_column(0)
    dup = first_duplicate(rel)
    if dup is not None:
        raise rows.error(dup[1], f"duplicate relation id {int(rel[dup[1]])} (first on line {rows.line(dup[0])})")
    return dict(zip(rel.tolist(), rows.column(1)))


def _attach_relations(pair: LoadedPair, folder: Path, triples: list[np.ndarray]) -> None:
    per_kg: list[dict[int, str] | None] = [None, None]
    if (folder / "rel_ids").is_file():
        pair.files["rel_ids"] = folder / "rel_ids"
        shared = _read_relation_file(folder / "rel_ids")
        used = [set(np.unique(t[:, 1]).tolist()) for t in triples]
        per_kg = [{r: n for r, n in shared.items() if r in u} for u in used]
        unused = len(set(shared) - used[0] - used[1])
        if unused:
            pair.warn(f"{unused} relations of rel_ids occur in no triple (kept in neither graph's relation_names)")
    for k in (1, 2):
        if (folder / f"rel_ids_{k}").is_file():
            pair.files[f"rel_ids_{k}"] = folder / f"rel_ids_{k}"
            per_kg[k - 1] = _read_relation_file(folder / f"rel_ids_{k}")
    for k, kg, names in ((1, pair.kg1, per_kg[0]), (2, pair.kg2, per_kg[1])):
        if names is None:
            continue
        kg.relation_names = names
        rel = triples[k - 1][:, 1]
        unknown = ~np.isin(rel, np.fromiter(names, dtype=np.int64, count=len(names)))
        if unknown.any():
            pair.warn(f"{int(unknown.sum())} triples of triples_{k} use relation ids missing from the relation file "
                      f"(first: relation {int(rel[unknown][0])}); they are kept without a relation name")


def _read_attributes(pair: LoadedPair, path: Path, uris: list[str], k: int) -> list[list[str]]:
    rows = read_rows(path, (1, None))
    index = {u: i for i, u in enumerate(uris)}
    attrs: list[list[str]] = [[] for _ in uris]
    seen = [False] * len(uris)
    unknown, repeated, first_unknown = 0, 0, None
    for r, fields in enumerate(rows.rows):
        i = index.get(fields[0])
        if i is None:
            unknown += 1
            first_unknown = first_unknown or rows.line(r)
            continue
        repeated += seen[i]
        seen[i] = True
        attrs[i].extend(a for a in fields[1:] if a and a not in attrs[i])
    if unknown:
        pair.warn(f"{unknown} lines of {path.name} name URIs not in ent_ids_{k} (first on line {first_unknown}); "
                  "their attributes are not attached")
    if repeated:
        pair.warn(f"{repeated} lines of {path.name} repeat an entity already listed; their attributes were merged")
    return attrs


def _attach_names(pair: LoadedPair, folder: Path, code: str) -> None:
    candidates = [d / "translated_ent_name" / f"dbp_{code}.json" for d in (folder, folder.parent)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return
    pair.files["names_json"] = path
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON: {e.msg}", path, e.lineno) from None
    if not isinstance(data, list):
        raise DatasetError("expected a JSON list of [entity id, [tokens]]", path)
    tokens: dict[int, list[str]] = {}
    for n, entry in enumerate(data):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and not isinstance(entry[0], bool)
        if not ok or not isinstance(entry[1], list) or not all(isinstance(t, str) for t in entry[1]):
            raise DatasetError(f"entry {n}: expected [entity id, [tokens]], found {str(entry)[:80]}", path)
        if entry[0] in tokens:
            raise DatasetError(f"entry {n}: entity id {entry[0]} appears twice", path)
        tokens[entry[0]] = entry[1]
    keys = torch.tensor(list(tokens), dtype=torch.long)
    stray = ~(pair.kg1.contains(keys) | pair.kg2.contains(keys))
    if bool(stray.any()):
        raise DatasetError(f"{int(stray.sum())} entries name ids of neither graph, e.g. {int(keys[stray][0])}", path)
    missing = pair.num_entities - len(tokens)
    if missing:
        pair.warn(f"{path.name} has no name for {missing} entities (the feature builder names them by "
                  "the last segment of their URI, untranslated)")
    pair.name_tokens = tokens


def _read_translated(path: Path, pair: LoadedPair) -> dict[int, str]:
    rows = read_rows(path, 2)
    ids = rows.int_column(0)
    dup = first_duplicate(ids)
    if dup is not None:
        raise rows.error(dup[1], f"duplicate entity id {int(ids[dup[1]])} (first on line {rows.line(dup[0])})")
    t = torch.from_numpy(ids)
    ok = pair.kg1.contains(t) | pair.kg2.contains(t)
    if not bool(ok.all()):
        r = int((~ok).nonzero()[0, 0])
        raise rows.error(r, f"entity id {int(ids[r])} is in neither ent_ids_1 nor ent_ids_2")
    return dict(zip(ids.tolist(), rows.column(1)))


def image_file_names(dataset_dir: Path) -> list[str]:
    """The community's image-feature file names for a dataset folder."""
    m = re.fullmatch(r"dbp_wd_15k_V([12])", dataset_dir.name)
    if m:
        return [f"dbpedia_wikidata_15k_{'norm' if m.group(1) == '1' else 'dense'}_GA_id_img_feature_dict.pkl"]
    return [f"{dataset_dir.name}_GA_id_img_feature_dict.pkl", f"{dataset_dir.name}_id_img_feature_dict.pkl"]


def find_image_file(dataset_dir: Path) -> Path | None:
    """The first image-feature pickle found in ``dataset_dir`` or up to three
    levels up, directly or under ``pkls/``; None if there is none."""
    dirs = [dataset_dir, *list(dataset_dir.resolve().parents)[:3]]
    for d in dirs:
        for sub in (d, d / "pkls"):
            for fname in image_file_names(dataset_dir):
                if (sub / fname).is_file():
                    return sub / fname
    return None
