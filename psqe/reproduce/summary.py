"""One table over many ``psqe reproduce`` folders: does PSQE beat Type I and Type II, per model and setting?

Each folder's ``config.json`` names the dataset, setting, epochs and training seed; its
``cells/*.json`` hold the numbers. A row is one (folder, model, protocol):
H@1 of the 30%-gold reference and of each seed set, PSQE's margin over
Type I (``uvp``) and Type II (``multimodal``), and the paper's Table 1 (DBP15K) or 2 (DWY15K) margin
(its "+PSQE" row minus its "base" row) beside it; ``test_links``: the size of
the test set the row's cells share, or ``"differs"`` when they were scored on
different ones (clean entries from before the common test set); ``other_seed_sets``: H@1 of
every other seed set of the row (the Table 3 ablations, ``psqe-fixed``), with its pairs; ``epochs``:
what the cells trained (with ``--iterative``, where iterative learning
started); ``protocol``: ``clean (val)`` or ``clean (mnn)`` when the clean
cells selected an epoch rather than keeping the last (:func:`_protocol`), preceded by
that run's last epoch as a ``clean`` row when the cells recorded it. A missing
cell leaves its column empty; it is never filled in.

>>> import json, tempfile
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp()) / "report"
>>> (folder / "cells").mkdir(parents=True)
>>> _ = (folder / "config.json").write_text(json.dumps({"config": {"dataset": "DBP15K/zh_en", "setting": "R1", "epochs": 100}}))
>>> for seeds, h1 in (("uvp", 0.80), ("multimodal", 0.75), ("psqe", 0.85)):
...     _ = (folder / "cells" / f"eva__{seeds}.json").write_text(json.dumps(
...         {"model": "eva", "seeds": seeds, "train_pairs": 1000, "legacy": {"hits@1": h1}}))
>>> row = summary_rows([folder])[0]
>>> row["psqe_minus_type1"], row["psqe_minus_type2"], row["paper_delta"]
(0.05, 0.1, 0.04)
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..align.metrics import PROTOCOLS
from . import SUPERVISED, paper_entry
from .report import _margin

log = logging.getLogger(__name__)

COLUMNS = ["report", "model", "protocol", "epochs", "train_seed", "test_links", "supervised30", "type1", "type2",
           "psqe", "psqe_pairs", "psqe_minus_type1", "psqe_minus_type2", "paper_delta", "other_seed_sets"]
_NAMED = {SUPERVISED: "supervised30", "uvp": "type1", "multimodal": "type2", "psqe": "psqe"}


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"reproduce summary: cannot read {path}: {err}") from err


def _paper_delta(dataset: str, model: str) -> float | None:
    entry = (paper_entry(dataset) or (None, {}))[1].get(model)
    return round(entry["psqe"][0] - entry["base"][0], 3) if entry else None


def _count(value) -> int | None:
    return None if value is None else int(value)


def _epochs(trained: set, config: dict):
    """The epochs the cells trained (the model's default when ``--epochs`` was not given), with the
    iterative half named; "differs" when cells disagree."""
    if len(trained) != 1 or None in trained:
        return "differs" if len(trained) > 1 else config.get("epochs")
    epochs = next(iter(trained))
    return f"{epochs} (iterative from {epochs // 2})" if config.get("iterative") else epochs


def _protocol(protocol: str, entries: list[dict]) -> str:
    """The row's protocol, naming a clean selection other than the last epoch (``"differs"`` when cells disagree).

    >>> _protocol("clean", [{"selection": "mnn"}, {"selection": "mnn"}]), _protocol("clean", [{"selection": "final"}])
    ('clean (mnn)', 'clean')
    """
    chosen = {e.get("selection", "final") for e in entries}
    if protocol != "clean" or chosen == {"final"}:
        return protocol
    return f"clean ({chosen.pop() if len(chosen) == 1 else 'differs'})"


def _views(cells: dict) -> list[tuple[str, dict]]:
    """``(protocol, {seed set: entry})`` for each protocol the cells hold; before a clean selection's row,
    the same run's last epoch as a plain clean row when every cell recorded it (``last_epoch``).

    >>> cell = {"clean": {"hits@1": 0.3, "selection": "mnn", "best_epoch": 99, "last_epoch": {"hits@1": 0.2}}}
    >>> [(p, e["psqe"]["hits@1"], _protocol(p, list(e.values()))) for p, e in _views({"psqe": cell})]
    [('clean', 0.2, 'clean'), ('clean', 0.3, 'clean (mnn)')]
    """
    views = []
    for protocol in PROTOCOLS:
        entries = {s: c[protocol] for s, c in cells.items() if protocol in c}
        if entries and all("last_epoch" in e for e in entries.values()):
            views.append((protocol, {s: {**e, **e["last_epoch"], "selection": "final", "best_epoch": None}
                                     for s, e in entries.items()}))
        if entries:
            views.append((protocol, entries))
    return views


def _stale(folder: Path, cell: dict, digests: dict) -> bool:
    """Whether ``cell`` trained on another seed set than the folder's file of that name now holds (a resume
    that made the set again reran only the models it named); such a cell is left out, with a warning.
    ``digests``: the folder's seed-file digests read so far (each file is read once)."""
    path = folder / "seeds" / f"{cell.get('seeds')}.tsv"
    if "seeds_digest" not in cell or not path.is_file():
        return False
    if path not in digests:
        from ..align import pairs_digest
        from ..seeds.io import read_seeds

        digests[path] = pairs_digest(read_seeds(path))
    if digests[path] == cell["seeds_digest"]:
        return False
    log.warning("reproduce summary: %s/cells/%s__%s.json trained on another %s than %s holds now; left out "
                "(resume the folder with --models %s to train it again)", folder.name, cell.get("model"),
                cell.get("seeds"), cell.get("seeds"), path, cell.get("model"))
    return True


def summary_rows(folders) -> list[dict]:
    """A row per (folder, model, protocol) with H@1 per seed set and PSQE's margins (see the module docstring)."""
    rows = []
    for folder in map(Path, folders):
        if not (folder / "config.json").is_file():
            raise ValueError(f"reproduce summary: {folder} has no config.json (not a psqe reproduce folder)")
        config = _load_json(folder / "config.json").get("config", {})
        cells = [_load_json(p) for p in sorted((folder / "cells").glob("*.json"))]
        if not cells:
            raise ValueError(f"reproduce summary: {folder}/cells holds no finished cell")
        digests: dict = {}
        cells = [c for c in cells if not _stale(folder, c, digests)]
        for model in dict.fromkeys(c["model"] for c in cells):
            mine = {c["seeds"]: c for c in cells if c["model"] == model}
            for protocol, entries in _views(mine):
                h1 = {s: e["hits@1"] for s, e in entries.items()}
                tests = {(e.get("queries"), e.get("test_digest")) for e in entries.values()}
                row = {"report": folder.name, "model": model, "protocol": _protocol(protocol, list(entries.values())),
                       "epochs": _epochs({e.get("epochs") for e in entries.values()}, config),
                       "train_seed": config.get("seed") if config.get("train_seed") is None else config["train_seed"],
                       "test_links": _count(next(iter(tests))[0]) if len(tests) == 1 else "differs",
                       "supervised30": h1.get(SUPERVISED), "type1": h1.get("uvp"), "type2": h1.get("multimodal"),
                       "psqe": h1.get("psqe"), "psqe_pairs": mine.get("psqe", {}).get("train_pairs")}
                for other, column in (("type1", "psqe_minus_type1"), ("type2", "psqe_minus_type2")):
                    both = row["psqe"] is not None and row[other] is not None
                    row[column] = round(row["psqe"] - row[other], 4) if both else None
                row["paper_delta"] = _paper_delta(config.get("dataset", folder.name), model)
                row["other_seed_sets"] = "; ".join(f"{s} {h1[s]:.3f} ({mine[s].get('train_pairs')} pairs)"
                                                   for s in sorted(h1) if s not in _NAMED) or None
                rows.append(row)
    return rows


def summary_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (H@1 to three decimals, margins signed, to four where three would
    show zero, empty where a cell is missing)."""
    def fmt(column, value):
        if value is None:
            return ""
        if column.startswith("psqe_minus"):
            return _margin(value)
        if column == "paper_delta":
            return f"{value:+.3f}"
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(c, r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = ["COLUMNS", "summary_markdown", "summary_rows"]
