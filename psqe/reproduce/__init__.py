"""``psqe reproduce``: the paper's Table 1 (DBP15K) or Table 2 (DWY15K) on one dataset and setting, as a
resumable report folder.

Cells: every aligner trained on every seed set (``uvp`` = Type I, EVA's
unsupervised visual pivoting; ``multimodal`` = Type II; ``psqe``) plus the
supervised reference (30% gold links, the community's split). Each cell is
trained and evaluated under the legacy protocol (all seeds for training, the
final epoch, test = gold links after the seed-42 shuffle's first 30%,
candidates = the test pairs' right entities) and, with ``"clean"`` in
``protocols``, tested on the report's common clean test set against every
kg2 entity: the gold links that neither the 30% gold split nor *any* of the
report's seed sets touches (one test set for every row, a subset of the
legacy test). ``clean_selection="final"`` (default) keeps the last epoch,
so legacy and clean share one training run; ``"val"`` trains again with 10%
of the seeds held out and restores the epoch that ranks them best. On
DBP15K that picked epoch 10 of 100 in 5 of 6 seed cells: early models
agree best with the features that made the pseudo-seeds, so selecting on
pseudo-seeds rewards under-training (bench/results/README.md). ``"mnn"``
needs no held-out seeds: legacy and clean share the run, and clean scores
the epoch at which the most entities that no seed uses are each other's
nearest neighbour across the graphs (:mod:`psqe.align.selection`), checked
twenty times over the run.

A finished cell is a JSON file under ``cells/``: an interrupted run resumes
where it stopped. A resume runs only what a cell lacks: a protocol it has
not run, or a clean entry from another test set (its ``test_digest``, e.g.
after seed sets were added) or another selection; and the whole cell when
it trained on another seed set than the folder's (its ``seeds_digest``, e.g.
after a refused set was removed and made again; the old entries are kept
under ``previous_seeds``).

The folder::

    config.json           the exact configuration, versions, machine
    features.safetensors  the feature set (reused on resume)
    seeds/<method>.tsv    the seed sets;  seeds/quality.json  their quality
    cells/<model>__<seeds>.json
    table.md, table.csv   H@1 / H@10 / MRR per model and seed set (+ the paper's)
    seed_quality.md       precision, recall, coverage, balance per seed set
    h1.svg, seed_distribution.svg

>>> from psqe.reproduce import PAPER_TABLE1, paper_budget, paper_entry
>>> PAPER_TABLE1["zh_en"]["meaformer"]
{'base': (0.804, 0.923, 0.847), 'psqe': (0.842, 0.947, 0.882)}
>>> paper_entry("DWY15K/V1")[0], paper_budget("DWY15K/V1"), paper_budget("DBP15K/ja_en")
('Table 2', 5000, 1000)
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..features._util import atomic_write
from ..seeds.config import paper_budget

log = logging.getLogger(__name__)

#: PSQE without one modality in every stage (the paper's Table 3): seed set -> the modality it leaves out.
ABLATIONS = {"psqe-no-visual": "visual", "psqe-no-relation": "relation", "psqe-no-attribute": "attribute"}
#: PSQE cut to the budget's size (``PSQEConfig.fixed_size``, the paper's Table 6).
FIXED = "psqe-fixed"
#: The seed sets a report can train on; the first three are its default (the paper's Table 1 / 2).
SEED_METHODS = ("uvp", "multimodal", "psqe", *ABLATIONS, FIXED)
DEFAULT_SEEDS = SEED_METHODS[:3]
SUPERVISED = "supervised30"
#: ReproduceConfig fields a resume may change (every other field must match config.json).
_MAY_CHANGE = ("models", "seeds", "supervised", "protocols", "clean_selection")
#: Fields added after reports were written, with the value those reports ran with.
_ADDED_LATER = {"iterative": False}
#: The paper's Table 1 (H@1, H@10, MRR): each model with its own seeds ("base") and with PSQE's.
PAPER_TABLE1 = {
    "zh_en": {"eva": {"base": (.783, .898, .825), "psqe": (.823, .930, .861)},
              "mclea": {"base": (.792, .906, .834), "psqe": (.835, .940, .874)},
              "meaformer": {"base": (.804, .923, .847), "psqe": (.842, .947, .882)},
              "pcmea": {"base": (.759, .894, .807), "psqe": (.816, .934, .859)}},
    "ja_en": {"eva": {"base": (.861, .946, .892), "psqe": (.873, .955, .904)},
              "mclea": {"base": (.866, .956, .900), "psqe": (.879, .964, .911)},
              "meaformer": {"base": (.872, .960, .905), "psqe": (.892, .968, .921)},
              "pcmea": {"base": (.833, .942, .873), "psqe": (.860, .956, .895)}},
    "fr_en": {"eva": {"base": (.914, .972, .936), "psqe": (.928, .977, .948)},
              "mclea": {"base": (.908, .972, .933), "psqe": (.929, .987, .951)},
              "meaformer": {"base": (.918, .980, .942), "psqe": (.932, .986, .953)},
              "pcmea": {"base": (.904, .974, .930), "psqe": (.917, .981, .941)}},
}
#: The paper's Table 2 (DWY15K; it has no PCMEA row), keyed by the folder names of EVA's split.
PAPER_TABLE2 = {
    "dbp_wd_15k_V1": {"eva": {"base": (.880, .965, .914), "psqe": (.915, .971, .937)},
                      "mclea": {"base": (.903, .975, .932), "psqe": (.912, .975, .937)},
                      "meaformer": {"base": (.928, .983, .950), "psqe": (.954, .984, .966)}},
    "dbp_wd_15k_V2": {"eva": {"base": (.880, .963, .913), "psqe": (.900, .972, .929)},
                      "mclea": {"base": (.896, .970, .926), "psqe": (.921, .977, .943)},
                      "meaformer": {"base": (.917, .981, .944), "psqe": (.939, .984, .957)}},
}
_PAPER_TABLES = (("Table 1", PAPER_TABLE1), ("Table 2", PAPER_TABLE2))
#: The paper's Table 3 (JA-EN): PSQE without one modality, H@1 and MRR (it gives no H@10: None).
PAPER_TABLE3 = {"ja_en": {
    "meaformer": {"psqe-no-relation": (.889, None, .919), "psqe-no-attribute": (.891, None, .921),
                  "psqe-no-visual": (.732, None, .795)},
    "eva": {"psqe-no-relation": (.870, None, .901), "psqe-no-attribute": (.871, None, .902),
            "psqe-no-visual": (.603, None, .667)},
    "mclea": {"psqe-no-relation": (.877, None, .908), "psqe-no-attribute": (.877, None, .909),
              "psqe-no-visual": (.668, None, .735)}}}


#: The paper's Table 6: MEAformer with PSQE's seeds at a fixed size, H@1 only (its base row, .838 / .887 /
#: .929, was trained on seeds of that size too, not on Table 1's, so it is not set beside ``uvp``).
PAPER_TABLE6 = {key: {"meaformer": {FIXED: (h1, None, None)}}
                for key, h1 in (("zh_en", .842), ("ja_en", .892), ("fr_en", .932))}


def paper_entry(dataset: str) -> tuple[str, dict] | None:
    """``(table name, {model: {"base": ..., "psqe": ...}})`` of the paper for a dataset name or folder (its
    short aliases spelled out), or None for a dataset the paper did not report (e.g. OpenEA's D-W sample).
    On DBP15K the models' entries also hold Table 3's rows (JA-EN, under the names of :data:`ABLATIONS`)
    and Table 6's (MEAformer, under :data:`FIXED`)."""
    from ..data.layout import canonical_name

    name = canonical_name(str(dataset))
    for table, rows in _PAPER_TABLES:
        for key, entry in rows.items():
            if key in name:
                extra = [t.get(key, {}) for t in (PAPER_TABLE3, PAPER_TABLE6)]
                return table, {model: {**numbers, **{k: v for t in extra for k, v in t.get(model, {}).items()}}
                               for model, numbers in entry.items()}
    return None


@dataclass(frozen=True)
class ReproduceConfig:
    """What ``psqe reproduce`` runs (every field is written to ``config.json``).

    Attributes:
        dataset: folder or name (``DBP15K/zh_en``) resolved under ``root`` / ``$PSQE_DATA``.
        setting: feature setting ``R1`` / ``R2`` (BENCHMARK-PROTOCOL.md; ``R0`` needs the image pickles).
        models: aligners (names of :data:`psqe.align.ALIGNERS`).
        seeds: seed sets among :data:`SEED_METHODS`: ``uvp`` (Type I), ``multimodal`` (Type II),
            ``psqe``, PSQE without one modality (:data:`ABLATIONS`, the paper's Table 3) and
            PSQE cut to ``budget`` seeds (:data:`FIXED`, its Table 6).
        supervised: also train each model on 30% gold links.
        protocols: ``("legacy", "clean")`` or one of them.
        clean_selection: ``"final"`` (the last epoch), ``"val"`` (best on
            10% of the seeds held out) or ``"mnn"`` (label-free: the most mutual
            nearest neighbours among the entities no seed uses); see the module docstring.
        budget: seed budget of every generator; None: the paper's for the dataset
            (:func:`psqe.seeds.config.paper_budget`: 5000 on DWY15K, else 1000), resolved when the config is made.
        epochs: overrides every aligner's epochs, its schedule scaled to fit
            (:func:`psqe.align.build_aligner`; None: each model's default).
        psqe_epochs: overrides Stage II's tuning epochs (None: 300).
        surface: the aligners' "w/ surface" switch (names and characters).
        iterative: train every aligner its schedule and as many epochs again
            with iterative learning (:func:`psqe.align.build_aligner`; not PCMEA).
        seed: random seed of seeds, features and (unless ``train_seed``) training.
        train_seed: random seed of the aligners' training alone (initialisation,
            batch order, dropout, the clean validation draw); None: ``seed``.
            Two folders over the same seed sets (copy ``seeds/``) that differ
            only here measure how far the numbers move from run to run.
    """

    dataset: str
    setting: str = "R2"
    models: tuple[str, ...] = ("eva", "mclea", "meaformer", "pcmea")
    seeds: tuple[str, ...] = DEFAULT_SEEDS
    supervised: bool = True
    protocols: tuple[str, ...] = ("legacy", "clean")
    clean_selection: str = "final"
    budget: int | None = None
    epochs: int | None = None
    psqe_epochs: int | None = None
    surface: bool = False
    iterative: bool = False
    seed: int = 42
    train_seed: int | None = None
    device: str = "cpu"
    root: str | None = None
    features: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        from ..align import ALIGNERS, NO_ITERATIVE, OWN_PSEUDO_LABELS

        unknown = [m for m in self.models if m not in ALIGNERS]
        if unknown or not self.models:
            raise ValueError(f"reproduce: unknown model(s) {unknown or '(none given)'}; known: {', '.join(sorted(ALIGNERS))}")
        bad = [s for s in self.seeds if s not in SEED_METHODS]
        if bad or not (self.seeds or self.supervised):
            raise ValueError(f"reproduce: unknown seed method(s) {bad or '(none given)'}; known: {', '.join(SEED_METHODS)}")
        from ..align.metrics import PROTOCOLS
        from .cells import CLEAN_SELECTIONS

        if not self.protocols or any(p not in PROTOCOLS for p in self.protocols):
            raise ValueError(f"reproduce: protocols must be among {', '.join(PROTOCOLS)}; got {list(self.protocols)}")

        if self.clean_selection not in CLEAN_SELECTIONS:
            raise ValueError(f"reproduce: clean_selection must be one of {', '.join(CLEAN_SELECTIONS)}, "
                             f"got {self.clean_selection!r}")
        if self.iterative and any(m in OWN_PSEUDO_LABELS for m in self.models):
            raise ValueError(f"reproduce: --iterative: {NO_ITERATIVE} (drop --iterative for pcmea; in reproduce, run it in a report folder of its own)")
        if self.setting not in ("R0", "R1", "R2"):
            raise ValueError(f"reproduce: setting must be R0, R1 or R2, got {self.setting!r}")
        if self.budget is None:
            object.__setattr__(self, "budget", paper_budget(self.dataset))
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"reproduce: budget must be a whole number >= 1, got {self.budget!r}")
        for name in ("epochs", "psqe_epochs", "train_seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"reproduce: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def training_seed(self) -> int:
        """The seed the aligners train with: ``train_seed``, or ``seed`` when that is None."""
        return self.seed if self.train_seed is None else self.train_seed


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _versions() -> dict:
    """The software and machine of a run; ``commit`` is read when the run starts (the code it loaded), and
    every cell of the process records that same one, even if the checkout moves on while it runs."""
    from .. import ops
    from .._pyg import torch_geometric
    from .cells import code_commit
    return {"psqe": __version__, "commit": code_commit(), "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__, "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "backend": ops.backend(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def reproduce(config: ReproduceConfig, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) every cell of ``config`` into ``out``; returns the table rows."""
    from ..align.metrics import PROTOCOLS
    from .cells import (check_seed_files, clean_test, finished_seed_sets, load_pair, make_seeds, run_cell,
                        trained_on_other_seeds)
    from .report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    mine, before = dataclasses.asdict(config), {}
    if saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        previous = {**_ADDED_LATER, **before["config"]}
        if (previous.get("seed") if previous.get("train_seed") is None else previous["train_seed"]) == config.training_seed:
            mine["train_seed"] = previous.get("train_seed")  # the same training seed, however it was spelled
        changed = {k for k in mine if json.dumps(mine[k], default=str) != json.dumps(previous.get(k), default=str)
                   and k not in _MAY_CHANGE}
        if changed:
            raise ValueError(f"reproduce: {out} holds a run with a different {', '.join(sorted(changed))}; "
                             f"use another --out folder (only {' / '.join(_MAY_CHANGE)} may change on resume)")
        # the folder's cells keep every protocol run so far: config.json says so
        mine["protocols"] = list(dict.fromkeys([*previous.get("protocols", []), *config.protocols]))
    check_seed_files(config, out)  # before config.json is written: a refused run leaves the folder as it was
    header = {"config": mine, "versions": _versions(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_json(saved, header)

    try:
        pair, data = load_pair(config, out)
        remade = set(config.seeds) - finished_seed_sets(out)  # made in this run: no finished cell trained on them
        seeds, clusters, quality = make_seeds(config, pair, out)
    except BaseException:
        if not before:  # a first run refused on its data or features (or stopped) does not lock the folder
            saved.unlink(missing_ok=True)
        raise
    others = _folder_seed_sets(out, seeds, quality)
    digest, record = None, before.get("clean_test")
    if "clean" in config.protocols:
        test, digest = clean_test(pair, others.values())
        record = {"links": int(test.shape[0]), "digest": digest, "untouched_by": ["supervised30 split", *others]}
        log.info("clean test: %d gold links untouched by the 30%% gold split and %s (digest %s)", test.shape[0],
                 ", ".join(others) or "no seed set", digest)
    if record is not None:
        _write_json(saved, {**header, "clean_test": record})
    methods = ([SUPERVISED] if config.supervised else []) + list(config.seeds)
    cells = [(model, method) for model in config.models for method in methods]
    rows = []
    bar = tqdm(cells, desc="reproduce", unit="cell", disable=not progress)
    for model, method in bar:
        bar.set_postfix_str(f"{model} / {method}")
        path = out / "cells" / f"{model}__{method}.json"
        cell = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        why = trained_on_other_seeds(cell, seeds.get(method), method in remade)
        if why:
            log.warning("cell %s / %s trained on another seed set (%s): all its entries run again", model, method, why)
            cell = {"previous_seeds": {"why": why, **{p: cell[p] for p in PROTOCOLS if p in cell}}}
        missing = tuple(p for p in config.protocols if _stale(cell.get(p), p, config, digest))
        if missing:
            # legacy shares the training run of a last-epoch clean entry: evaluated again, it is checked
            again = ("legacy",) if "legacy" in cell and "clean" in missing and config.clean_selection != "val" else ()
            fresh = run_cell(config, pair, data, model, method, seeds.get(method), progress, (*again, *missing),
                             clean_exclude=list(others.values()))
            if "clean" in fresh and fresh["clean"]["test_digest"] != digest:  # else every resume would rerun it
                raise RuntimeError(f"reproduce: cell {model} / {method} was scored on test set "
                                   f"{fresh['clean']['test_digest']}, not the folder's {digest}")
            cell = _merge(cell, fresh, model, method)
            _write_json(path, cell)
        else:
            log.info("cell %s / %s: done earlier, reused", model, method)
        rows.append(cell)
    write_report(out, config, pair, rows, seeds, clusters, quality, paper_entry(pair.name or config.dataset))
    return {"rows": rows}


def _folder_seed_sets(out: Path, seeds: dict, finished: dict) -> dict:
    """Every finished, non-empty seed set the folder holds (this run's and earlier runs'; finished: in
    ``finished``, the folder's ``seeds/quality.json`` as :func:`~psqe.reproduce.cells.make_seeds` returns
    it), in :data:`SEED_METHODS` order. All of them stay out of the clean test, so that a resume with
    fewer ``seeds`` keeps the test set."""
    from ..seeds.io import read_seeds

    found = {}
    for method in SEED_METHODS:
        path = out / "seeds" / f"{method}.tsv"
        table = seeds.get(method)
        if table is None and method in finished and path.exists():
            table = read_seeds(path)
        if table is not None and table.shape[0] == 0:
            log.warning("seed set %s (%s) is empty: it leaves nothing out of the clean test", method, path)
            continue
        if table is not None:
            found[method] = table
    return found


def _clean_setup(entry: dict) -> tuple:
    """What a clean entry was computed on: ``(test_digest, selection)`` (None, None before both were recorded)."""
    return entry.get("test_digest"), entry.get("selection")


def _stale(entry: dict | None, protocol: str, config: ReproduceConfig, digest: str) -> bool:
    """Whether a cell's ``protocol`` entry must be (re)computed: absent, or a clean one from another
    test set or selection (entries older than the common test set carry neither)."""
    if entry is None:
        return True
    if protocol == "clean" and _clean_setup(entry) != (digest, config.clean_selection):
        log.info("clean entry from another test set or selection (%s, %s; now %s, %s): run again",
                 entry.get("test_digest"), entry.get("selection"), digest, config.clean_selection)
        return True
    return False


def _merge(cell: dict, fresh: dict, model: str, method: str) -> dict:
    """``cell`` updated with ``fresh``. An entry evaluated again replaces the old one, so that entries from
    one training run (``shared_run``) carry that run's time and commit; when its numbers changed, the old
    entry is kept under ``previous`` (with a warning)."""
    from ..align.metrics import PROTOCOLS

    out = {**cell, **fresh}
    for protocol in PROTOCOLS:
        old, new = cell.get(protocol), fresh.get(protocol)
        if old is None or new is None:
            continue
        if protocol == "clean" and _clean_setup(old) != _clean_setup(new):
            continue  # another test set or selection: replaced on purpose
        if any(old.get(k) != new.get(k) for k in ("hits@1", "hits@10", "mrr", "queries")):
            log.warning("cell %s / %s: %s H@1 %.4f now, %.4f before (kept under 'previous')", model, method,
                        protocol, new["hits@1"], old["hits@1"])
            out["previous"] = {**cell.get("previous", {}), protocol: old}
    return out


def rows_to_csv(rows: list[dict], columns: list[str]) -> str:
    """CSV text of ``rows`` (dicts) with the given columns."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
