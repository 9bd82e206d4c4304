"""The work of ``psqe reproduce``: the pair with its features, the seed sets, one table cell.

Every step that costs minutes leaves a file in the run folder and is skipped
when that file exists (features, each seed set, each cell).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import subprocess
import time
from pathlib import Path

import torch

from ..features._util import atomic_write
from ..seeds.io import read_seeds, tsv_text

log = logging.getLogger(__name__)

#: How the clean protocol picks the model: the last epoch, the best on ``CLEAN_VAL_RATIO`` of the seeds held
#: out, or the one with the most mutual nearest neighbours among the entities no seed uses (label-free).
CLEAN_SELECTIONS = ("final", "val", "mnn")
#: The share of the seeds ``clean_selection="val"`` holds out for model selection.
CLEAN_VAL_RATIO = 0.1
#: ``clean_selection="mnn"`` checks the label-free score this many times over a run (and at its end).
MNN_CHECKS = 20


def load_pair(config, out: Path):
    """The dataset with its feature set attached (built once, then read from ``out``) and its AlignData."""
    from ..align import AlignData
    from ..data import load_dataset
    from ..features import build_feature_set, load_feature_set, save_feature_set

    pair = load_dataset(config.dataset, root=config.root)
    if pair.links is None:
        raise ValueError(f"reproduce: {config.dataset} has no gold links; nothing can be evaluated")
    path = Path(config.features) if config.features else out / "features.safetensors"
    if path.exists():
        summary = load_feature_set(pair, path, setting=config.setting)
        if not config.features and summary.get("seed", config.seed) != config.seed:  # built here by another run
            raise ValueError(f"reproduce: {path} was built with seed {summary['seed']}, this run's is {config.seed}; "
                             "remove it to build it again, or use another --out folder")
        log.info("features: read %s", path)
    elif config.features:
        raise FileNotFoundError(f"reproduce: feature file {path} does not exist")
    else:
        summary = build_feature_set(pair, config.setting, cache_dir=config.cache_dir, seed=config.seed,
                                    device=config.device)
        save_feature_set(pair, path, summary)
    return pair, AlignData.from_pair(pair, device=config.device)


def _psqe_config(config):
    from ..seeds.config import PSQEConfig

    cfg = PSQEConfig(budget=config.budget, seed=config.seed, device=config.device)
    return cfg.replace(tuning={"epochs": config.psqe_epochs}) if config.psqe_epochs is not None else cfg


#: The seed sets made without PSQE's generator (so without Stage II): method -> ``baseline_seeds`` kind.
BASELINES = {"uvp": "type1", "multimodal": "type2"}

#: The settings a seed set depends on, recorded with it in ``seeds/quality.json`` (``made_with``).
SEED_SETTINGS = ("dataset", "setting", "budget", "seed", "psqe_epochs")


def _seed_settings(config) -> dict:
    """``config``'s ``SEED_SETTINGS``, the Stage II epochs spelled out (None is the default, 300), the
    greedy walks' tie order (``PSQEConfig.tie_order``) and Stage II's seed (``PSQEConfig.stage2_seed``)."""
    cfg = _psqe_config(config)
    return {**{k: getattr(config, k) for k in SEED_SETTINGS}, "psqe_epochs": cfg.tuning.epochs, "tie_order": cfg.tie_order,
            "stage2_seed": cfg.stage2_seed}


def _check_reused(path: Path, entry: dict, config) -> None:
    """Refuse a seed set (e.g. copied from another folder) made with other settings than ``config``'s."""
    made = entry.get("made_with")
    if made is None:  # made before fd584ff: ties fell in file order or by rounding noise, never shuffled
        raise ValueError(f"reproduce: {path} was made before seed sets recorded their settings (and their tie "
                         "order); remove it (and its entry in quality.json) to make it again, or use another "
                         "--out folder")
    mine = _seed_settings(config)
    # recorded since stop 29 / 30; before, every walk broke ties in file order and Stage II drew with seed 0
    made = {"tie_order": "file", "stage2_seed": 0, **made}
    # the baselines run no Stage II: its epochs and seed do not make them
    keys = tuple(k for k in (*SEED_SETTINGS, "tie_order", "stage2_seed")
                 if path.stem not in BASELINES or k not in ("psqe_epochs", "stage2_seed"))
    differ = [f"{k} {made.get(k)!r} (this run: {mine[k]!r})" for k in keys if made.get(k) != mine[k]]
    if differ:
        raise ValueError(f"reproduce: {path} was made with {'; '.join(differ)}; remove it (and its entry in "
                         f"quality.json) to make it again, or use another --out folder")


def check_seed_files(config, out: Path, quality: dict | None = None) -> None:
    """Refuse seed sets in ``out/seeds`` (copied there, say) made with other settings than ``config``'s.

    ``quality``: ``seeds/quality.json`` when the caller has read it already.
    """
    quality_path = out / "seeds" / "quality.json"
    if quality is None:
        quality = json.loads(quality_path.read_text(encoding="utf-8")) if quality_path.exists() else {}
    for method in config.seeds:
        path = out / "seeds" / f"{method}.tsv"
        if path.exists() and method in quality:
            _check_reused(path, quality[method], config)


def _check_ablations(config, pair, cfg) -> None:
    """Refuse, before any seeds are made, an ablation (:data:`~psqe.reproduce.ABLATIONS`) that would make
    PSQE's seeds again (its modality is absent or unweighted) or leave the generator no modality."""
    from . import ABLATIONS

    both = set(pair.kg1.features) & set(pair.kg2.features)
    used = {m for m, w in cfg.weights.items() if w > 0 and m in both}
    for method in config.seeds:
        left_out = ABLATIONS.get(method)
        if left_out is None:
            continue
        if left_out not in used:
            raise ValueError(f"reproduce: seed set {method}: the seed generator reads no {left_out!r} modality on "
                             f"{config.dataset} (it reads {', '.join(sorted(used))}), so {method} would be psqe's "
                             "seeds again; leave it out of --seeds")
        if used == {left_out}:
            raise ValueError(f"reproduce: seed set {method}: {left_out!r} is the only modality the seed generator "
                             f"reads on {config.dataset}; nothing is left without it")


def make_seeds(config, pair, out: Path):
    """Every seed set of ``config`` (global ids), computed once and kept under ``out/seeds``.

    Returns ``({method: seeds}, clusters, quality)``; ``clusters`` are PSQE's
    Stage I labels (kept in ``psqe_clusters.pt``; None when PSQE is not among
    the methods: the plot then shows degree buckets only); ``quality`` is
    ``seeds/quality.json`` as it now stands: one entry per finished seed set
    of the folder, this run's and earlier runs'.
    """
    from ..features import require_seed_slots
    from ..seeds.pipeline import baseline_seeds, generate_seeds, seed_quality
    from . import ABLATIONS, FIXED

    folder = out / "seeds"
    folder.mkdir(exist_ok=True)
    quality_path = folder / "quality.json"
    quality = json.loads(quality_path.read_text(encoding="utf-8")) if quality_path.exists() else {}
    check_seed_files(config, out, quality)
    seeds = {}
    clusters_path = folder / "psqe_clusters.pt"
    clusters = torch.load(clusters_path) if clusters_path.exists() else None
    cfg = _psqe_config(config)
    _check_ablations(config, pair, cfg)
    # PSQE first: its Stage I clusters enter every seed set's cluster balance.
    for method in sorted(config.seeds, key=lambda m: m != "psqe"):
        path = folder / f"{method}.tsv"
        if path.exists() and method in quality:  # checked by check_seed_files
            seeds[method] = read_seeds(path)
            continue
        require_seed_slots(pair, f"reproduce: the features of {config.dataset} ({config.features or 'built here'})")
        start = time.perf_counter()
        if method in ("psqe", FIXED) or method in ABLATIONS:
            mine = cfg.replace(weights={m: w for m, w in cfg.weights.items() if m != ABLATIONS.get(method)},
                               fixed_size=method == FIXED)
            result = generate_seeds(pair.kg1, pair.kg2, mine, links=pair.links)
            seeds[method] = result.seeds
            if method == "psqe":
                clusters = result.clusters
                atomic_write(clusters_path, lambda tmp: torch.save(clusters, tmp))
            stages = {name: {k: q.get(k) for k in ("count", "precision", "recall")} for name, q in result.quality.items()}
        else:
            seeds[method] = baseline_seeds(pair.kg1, pair.kg2, BASELINES[method], cfg)
            stages = {}
        quality[method] = {**seed_quality(pair, seeds[method], clusters), "seconds": round(time.perf_counter() - start, 2),
                           "stages": stages, "made_with": _seed_settings(config)}
        atomic_write(path, lambda tmp, s=seeds[method]: Path(tmp).write_text(tsv_text(s)))
        text = json.dumps(quality, indent=2)
        atomic_write(quality_path, lambda tmp: Path(tmp).write_text(text))
        log.info("seeds %s: %d, precision %.3f", method, seeds[method].shape[0], quality[method].get("precision", float("nan")))
    return seeds, clusters, quality


def finished_seed_sets(out: Path) -> set[str]:
    """The seed sets ``out/seeds`` holds finished (a file and an entry in ``quality.json``), which
    :func:`make_seeds` reads instead of making them."""
    quality = out / "seeds" / "quality.json"
    entries = json.loads(quality.read_text(encoding="utf-8")) if quality.exists() else {}
    return {m for m in entries if (out / "seeds" / f"{m}.tsv").exists()}


def trained_on_other_seeds(cell: dict, table: torch.Tensor | None, remade: bool) -> str | None:
    """Why a finished cell trained on another seed set than ``table`` (None: it did not, or cannot tell).

    A cell records its seeds' digest (``seeds_digest``); one written before that is taken as trained on
    other seeds when its pair count differs or its seed set was made again in this run (``remade``, as
    after removing a refused set). The 30%-gold cells (``table`` None) always train on the same split.
    """
    from ..align import pairs_digest
    from ..align.metrics import PROTOCOLS

    if not any(p in cell for p in PROTOCOLS) or table is None:
        return None
    if "seeds_digest" in cell:
        now = pairs_digest(table)
        return None if cell["seeds_digest"] == now else f"digest {cell['seeds_digest']}, now {now}"
    if cell.get("train_pairs") != table.shape[0]:
        return f"{cell.get('train_pairs')} pairs, now {table.shape[0]}"
    return "its seed set was made again in this run" if remade else None


def clean_selection_ratio(selection: str) -> float:
    """The share of the seeds the clean protocol holds out for model selection: ``CLEAN_VAL_RATIO`` for ``"val"``, else 0.

    >>> clean_selection_ratio("val"), clean_selection_ratio("final"), clean_selection_ratio("mnn")
    (0.1, 0.0, 0.0)
    """
    if selection not in CLEAN_SELECTIONS:
        raise ValueError(f"clean_selection must be one of {CLEAN_SELECTIONS}, got {selection!r}")
    return CLEAN_VAL_RATIO if selection == "val" else 0.0


def report_clean_split(pair, train, seed_sets, selection: str = "final", seed: int = 0):
    """The clean split of one cell of a report: trains on ``train`` and tests on the report's common test set.

    The test holds the gold links that neither the community's 30% gold
    split nor any of ``seed_sets`` (``[S, 2]`` global-id tables: every seed
    set of the report) touches, so every row of a report is scored on the
    same links, a subset of the legacy test set. ``train`` is one of those
    sets (or the 30% gold split) for the test to be the common one;
    ``selection`` says how much of it is held out to select the model
    (:func:`clean_selection_ratio`), drawn with ``seed``.
    """
    from ..align import clean_split, legacy_split

    gold = legacy_split(pair.links, seed=42).train
    return clean_split(pair.links, train, val_ratio=clean_selection_ratio(selection), seed=seed,
                       exclude=[gold, *seed_sets])


def clean_test(pair, seed_sets) -> tuple[torch.Tensor, str]:
    """The common clean test set of a report (:func:`report_clean_split`) and its digest."""
    from ..align import legacy_split, pairs_digest

    test = report_clean_split(pair, legacy_split(pair.links, seed=42).train, list(seed_sets)).test
    return test, pairs_digest(test)


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The git commit of the psqe source that runs (12 hex digits, ``+`` when tracked files under
    ``psqe/`` differ from it), or None outside a git checkout of psqe (an installed wheel)."""
    folder = Path(__file__).resolve().parent.parent
    try:
        run = functools.partial(subprocess.run, cwd=folder, capture_output=True, text=True, timeout=10, check=True)
        top = Path(run(["git", "rev-parse", "--show-toplevel"]).stdout.strip())
        if (top / "psqe" / "reproduce" / "cells.py").resolve() != Path(__file__).resolve():
            return None  # a checkout of something else that happens to hold this installed copy
        head = run(["git", "rev-parse", "--short=12", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "") if head else None


def added_pairs(model, result, num_seeds: int, data) -> dict | None:
    """How many pairs training added to its ``num_seeds`` seeds, and how many are gold links (a diagnostic
    only: gold never enters training). Iterative learning's merged pairs and PCMEA's accepted
    pseudo-links (``extra_train_pairs``) count, as they stand when training ends (even when a
    validation-selected earlier epoch was restored); None when none were added or there are no gold links.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> data = SimpleNamespace(links=torch.tensor([[0, 3], [1, 4]]))
    >>> run = SimpleNamespace(train_pairs=torch.tensor([[0, 3], [1, 5], [1, 4]]))
    >>> added_pairs(torch.nn.Module(), run, 1, data)
    {'count': 2, 'gold': 1, 'precision': 0.5}
    """
    parts = [] if result.train_pairs is None else [result.train_pairs[num_seeds:].cpu()]
    extra = getattr(model, "extra_train_pairs", None)
    if extra is not None:
        parts.append(extra().cpu())
    if not parts or data.links is None:
        return None
    pairs = torch.cat(parts)
    if pairs.shape[0] == 0:
        return None
    gold = data.links.cpu()
    width = int(max(gold.max(), pairs.max())) + 1
    hits = int(torch.isin(pairs[:, 0] * width + pairs[:, 1], gold[:, 0] * width + gold[:, 1]).sum())
    return {"count": int(pairs.shape[0]), "gold": hits, "precision": round(hits / pairs.shape[0], 4)}


def run_cell(config, pair, data, model_name: str, method: str, seeds: torch.Tensor | None, progress: bool,
             protocols: tuple[str, ...] | None = None, clean_exclude=()) -> dict:
    """Train ``model_name`` on one seed set (or 30% gold) and evaluate it under ``protocols`` (default: ``config``'s).

    The clean test excludes the 30% gold split and ``clean_exclude`` (the
    seed sets of the report) besides this cell's own training pairs
    (:func:`report_clean_split`). Protocols without a validation split (legacy, and
    clean with ``config.clean_selection`` ``"final"`` or ``"mnn"``) train the same model
    on the same pairs, so they share one training run (``shared_run``): with
    ``"mnn"`` legacy scores its last epoch and clean the epoch with the most
    mutual nearest neighbours among the entities no seed uses (checked every
    twentieth of the run; :mod:`psqe.align.selection`).

    Each protocol's entry holds the metrics of :func:`psqe.align.evaluate`,
    ``seconds``, ``epochs``, ``best_epoch``, ``train_seed`` (the seed it trained
    with), ``commit`` (:func:`code_commit`),
    ``added_pairs`` (:func:`added_pairs`) when training added pairs, and for
    clean ``selection`` and ``test_digest``; a clean entry that loaded a selected
    epoch from a run kept to its end (``"mnn"``) also holds ``last_epoch``: H@1,
    H@10 and MRR of that run's last epoch on the same test, and
    ``selection_history``: the label-free count at each check (``epoch``,
    ``mnn``, and ``mnn_added``, how many of those pairs training added
    itself: :func:`psqe.align.selection.label_free_scores`).
    """
    from ..align import build_aligner, embed, evaluate, fit, legacy_split, pairs_digest

    legacy = legacy_split(pair.links, seed=42)
    train = legacy.train if seeds is None else seeds
    cell = {"model": model_name, "seeds": method, "train_pairs": int(train.shape[0]), "seeds_digest": pairs_digest(train)}
    splits = {}
    for protocol in config.protocols if protocols is None else protocols:
        if protocol == "legacy":
            splits[protocol] = legacy_split(pair.links, seed=42, seeds=seeds)
        else:
            splits[protocol] = report_clean_split(pair, train, clean_exclude, config.clean_selection, config.training_seed)
    if "clean" in splits and config.clean_selection == "val" and splits["clean"].val.numel() == 0:
        raise ValueError(f"clean_selection='val' holds out {CLEAN_VAL_RATIO:.0%} of the seeds, and {method}'s {train.shape[0]} "
                         "leave none to validate on; use clean_selection='final'")
    runs = {}  # protocols that train alike share a run: the key is the validation split
    for protocol, split in splits.items():
        runs.setdefault("final" if split.val.numel() == 0 else protocol, []).append(protocol)
    for group in runs.values():
        first = splits[group[0]].to_pair_index(data)
        indexed = {p: first if p == group[0] else splits[p].to_pair_index(data) for p in group}
        model, train_config = build_aligner(model_name, data, surface=config.surface, seed=config.training_seed,
                                            epochs=config.epochs, iterative=config.iterative)
        changes = {"seed": config.training_seed, "device": config.device}
        label_free = "clean" in group and config.clean_selection == "mnn"
        if first.val.numel():
            changes["eval_every"] = max(1, train_config.epochs // 10)
        elif label_free:  # legacy (if in the group) keeps the last epoch, clean the selected one
            changes.update(eval_every=max(1, train_config.epochs // MNN_CHECKS), select_metric="mnn", restore_best=False)
        train_config = dataclasses.replace(train_config, **changes)
        torch.manual_seed(config.training_seed)
        result = fit(model.to(config.device), data, first.train, train_config,
                     val_pairs=first.val if first.val.numel() else None, progress=progress)
        embeddings = embed(model, data)
        added = added_pairs(model, result, first.train.shape[0], data)  # one per training run
        for protocol in sorted(group, key=lambda p: p == "clean"):  # clean last: it may load the selected epoch
            selected = protocol == "clean" and config.clean_selection != "final"
            last = None
            if selected and result.best_state is not None:
                last = evaluate(embeddings, indexed[protocol], data)  # the last epoch too: one run gives both
                model.load_state_dict(result.best_state)
                embeddings = embed(model, data)
            metrics = evaluate(embeddings, indexed[protocol], data)
            entry = {**{k: v if isinstance(v, int) else round(float(v), 4) for k, v in metrics.items()},
                     "seconds": round(result.seconds, 1), "epochs": train_config.epochs,
                     "best_epoch": result.best_epoch if selected else None, "train_seed": config.training_seed,
                     "commit": code_commit()}
            if protocol == "clean":
                entry.update(selection=config.clean_selection, test_digest=pairs_digest(splits[protocol].test))
            if last is not None:
                entry["last_epoch"] = {k: round(float(last[k]), 4) for k in ("hits@1", "hits@10", "mrr")}
            if selected and train_config.select_metric == "mnn":
                entry["selection_history"] = [{k: h[k] for k in ("epoch", "mnn", "mnn_added")}
                                              for h in result.val_history]
            if protocol != group[0]:
                entry["shared_run"] = group[0]  # the same trained model as that protocol's
            if added is not None:
                entry["added_pairs"] = added
            cell[protocol] = entry
            log.info("%s / %s (%s): H@1 %.3f H@10 %.3f MRR %.3f in %.0f s", model_name, method, protocol,
                     metrics["hits@1"], metrics["hits@10"], metrics["mrr"], result.seconds)
    return cell
