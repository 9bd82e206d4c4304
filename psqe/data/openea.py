"""Loader for the OpenEA v1.1 raw layout (URIs, not ids).

==============================================  ========  ============================================
file                                            required  content
==============================================  ========  ============================================
``rel_triples_1``, ``rel_triples_2``            yes       ``head URI<TAB>relation URI<TAB>tail URI``
``attr_triples_1``, ``attr_triples_2``          no        ``entity URI<TAB>attribute URI<TAB>value``
``ent_links``                                   yes       ``kg1 URI<TAB>kg2 URI``
``721_5fold/<k>/{train,valid,test}_links``      no        the fold splits, same format as ``ent_links``
==============================================  ========  ============================================

Global ids: kg1's entities first, then kg2's, each in order of first appearance
(heads then tails of ``rel_triples_k``, line by line, then the subjects of
``attr_triples_k``); deterministic for a given folder. Relation ids likewise
(``rel_triples_1`` then ``rel_triples_2``; one id per distinct URI). Attribute
values are not kept: ``kg.attributes`` lists each entity's distinct attribute
URIs in file order (an attribute line with an empty value still counts; more
than three fields are a value containing TABs, as in OpenEA's own reader).

The folds are kept in ``pair.splits``: ``{"<k>": {"train", "valid", "test"}}``
with LongTensor ``[L, 2]`` of global ids, keyed by the fold folder's name.

Errors (:class:`~psqe.data.common.DatasetError`, naming file and line): a
missing required file, a malformed line, a link naming a URI that is no
entity of its graph, a one-to-many link, a fold link that is not a gold link.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "rel_triples_1").write_text("a\\tr\\tb\\n")
>>> _ = (d / "rel_triples_2").write_text("x\\ts\\ty\\n")
>>> _ = (d / "ent_links").write_text("a\\tx\\nb\\ty\\n")
>>> pair = load_openea(d)
>>> pair.kg1.ids.tolist(), pair.kg2.ids.tolist(), pair.links.tolist()
([0, 1], [2, 3], [[0, 2], [1, 3]])
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import DatasetError, LoadedPair, check_links, read_rows, require
from .kg import KnowledgeGraph

LAYOUT = "OpenEA v1.1 (rel_triples_1/2, attr_triples_1/2, ent_links)"
FOLD_DIR = "721_5fold"


def load_openea(folder: str | Path, name: str | None = None) -> LoadedPair:
    """Load an OpenEA v1.1 folder (see the module doc)."""
    folder = Path(folder)
    files: dict[str, Path] = {}
    rel_index: dict[str, int] = {}
    graphs: list[KnowledgeGraph] = []
    indexes: list[dict[str, int]] = []
    first_id = 0
    for k in (1, 2):
        files[f"rel_triples_{k}"] = require(folder, f"rel_triples_{k}", LAYOUT)
        index: dict[str, int] = {}
        triples = _read_rel_triples(files[f"rel_triples_{k}"], index, rel_index, first_id)
        attributes = None
        if (folder / f"attr_triples_{k}").is_file():
            files[f"attr_triples_{k}"] = folder / f"attr_triples_{k}"
            attributes = _read_attr_triples(files[f"attr_triples_{k}"], index, first_id)
        if not index:
            raise DatasetError("no entities: the file has no triples and no attr_triples_%d names any" % k, files[f"rel_triples_{k}"])
        used = set(np.unique(triples[:, 1]).tolist())
        relation_names = {i: uri for uri, i in rel_index.items() if i in used}
        graphs.append(KnowledgeGraph(
            torch.arange(first_id, first_id + len(index)), list(index), torch.from_numpy(triples),
            relation_names=relation_names, attributes=attributes))
        indexes.append(index)
        first_id += len(index)
    files["ent_links"] = require(folder, "ent_links", LAYOUT)
    links = _read_links(files["ent_links"], indexes, graphs)
    pair = LoadedPair(graphs[0], graphs[1], torch.from_numpy(links), name=name or folder.name,
                      layout="openea", source=folder, files=files)
    folds = folder / FOLD_DIR
    if folds.is_dir():
        gold = {(a, b) for a, b in links.tolist()}
        fold_dirs = sorted((d for d in folds.iterdir() if d.is_dir()), key=lambda d: (not d.name.isdigit(), d.name.zfill(8)))
        for d in fold_dirs:
            split, seen = {}, {}
            for part in ("train", "valid", "test"):
                path = require(d, f"{part}_links", LAYOUT + f", fold folder {d.name}")
                links_part = _read_links(path, indexes, graphs, gold)
                _check_disjoint(path, links_part, seen, part)
                split[part] = torch.from_numpy(links_part)
            pair.splits[d.name] = split
        files[FOLD_DIR] = folds
    return pair


def _check_disjoint(path: Path, links: np.ndarray, seen: dict[tuple[int, int], str], part: str) -> None:
    """A fold's train, valid and test links share no link (a test link in train_links would leak)."""
    for i, (a, b) in enumerate(links.tolist()):
        other = seen.setdefault((a, b), part)
        if other != part:
            rows = read_rows(path, 2)
            raise rows.error(i, f"link {rows.rows[i][0]!r} -> {rows.rows[i][1]!r} is also in this fold's "
                                f"{other}_links: a fold's train, valid and test links must not overlap")


def _check_names(rows, i: int, fields, what: tuple[str, ...]) -> None:
    """URIs and relation / attribute names are neither empty nor padded: ``"http://d/c "`` would be a new
    entity beside ``http://d/c``, silently."""
    for j, (value, name) in enumerate(zip(fields, what)):
        if not value.strip():
            raise rows.error(i, f"field {j + 1} ({name}) is empty")
        if value != value.strip():
            raise rows.error(i, f"field {j + 1} ({name}) has spaces around it: {value!r}")


def _read_rel_triples(path: Path, index: dict[str, int], rel_index: dict[str, int], first_id: int) -> np.ndarray:
    rows = read_rows(path, 3)
    out = np.empty((len(rows), 3), dtype=np.int64)
    for i, (h, r, t) in enumerate(rows.rows):
        _check_names(rows, i, (h, r, t), ("head", "relation", "tail"))
        hid = index.setdefault(h, first_id + len(index))
        tid = index.setdefault(t, first_id + len(index))
        out[i] = (hid, rel_index.setdefault(r, len(rel_index)), tid)
    return out


def _read_attr_triples(path: Path, index: dict[str, int], first_id: int) -> list[list[str]]:
    rows = read_rows(path, (2, None))
    per_entity: dict[int, dict[str, None]] = {}
    for i, fields in enumerate(rows.rows):
        _check_names(rows, i, fields[:2], ("entity", "attribute"))
        e = index.setdefault(fields[0], first_id + len(index))
        per_entity.setdefault(e, {})[fields[1]] = None
    return [list(per_entity.get(first_id + i, ())) for i in range(len(index))]


def _read_links(path: Path, indexes: list[dict[str, int]], graphs: list[KnowledgeGraph],
                gold: set[tuple[int, int]] | None = None) -> np.ndarray:
    rows = read_rows(path, 2)
    out = np.empty((len(rows), 2), dtype=np.int64)
    for i, fields in enumerate(rows.rows):
        _check_names(rows, i, fields, ("kg1 entity", "kg2 entity"))
        for side in (0, 1):
            e = indexes[side].get(fields[side])
            if e is None:
                other = " (it is an entity of kg%d)" % (2 - side) if fields[side] in indexes[1 - side] else ""
                raise rows.error(i, f"link names {fields[side]!r}, not an entity of kg{side + 1}{other}")
            out[i, side] = e
        if gold is not None and (int(out[i, 0]), int(out[i, 1])) not in gold:
            raise rows.error(i, f"fold link {fields[0]!r} -> {fields[1]!r} is not one of the gold links (ent_links)")
    check_links(rows, out, (graphs[0].ids.numpy(), graphs[1].ids.numpy()), ("kg1", "kg2"))
    return out
