"""Which label-free signal picks the epoch when an aligner trains on pseudo-seeds?

Trains one aligner on each seed set of a report folder, with 10% of the seeds
held out (as ``--clean-selection val`` does), and every ``--every`` epochs
records (``TrainResult.val_history``):

- the held-out seeds' MRR and H@1 (``val_*``: the selection ``psqe`` offers now);
- through ``fit``'s ``monitor`` (``fit`` restores nothing, so the run is the
  plain one): the label-free scores of
  :func:`psqe.align.selection.label_free_scores` over the entities neither
  the training nor the held-out seeds use (``mnn``, ``mnn_cos``: what
  ``select_metric="mnn"`` selects on), the report's clean test H@1
  (``test_hits@1``: the oracle, never a criterion) and, against the gold
  links, how many of the ``mnn`` pairs are right (``mnn_correct``,
  ``mnn_precision``: why ``mnn`` picks well or badly, never a criterion),
  all from one mutual-nearest pass per check. For a model that adds pairs
  itself (PCMEA's pseudo-links, which the count's free entities include), also
  the criteria ``mnn_own`` and ``mnn_rest_rate`` that leave those pairs out
  (``mnn_scores``), tabled with the others, and a table of every check.
- with ``--holdout F`` (a model with ``exclude``: PCMEA): a random fraction
  ``F`` of the free kg1 entities is kept out of the model's own pairs, and
  ``mnn_holdout`` counts the ``mnn`` pairs whose kg1 entity is one of them
  (a fixed pool that no pseudo-link can take, unlike ``mnn_own``'s; see
  ``holdout_entities``), with ``mnn_holdout_correct`` against the gold links.

Writes ``OUT/<model>-<method>.json`` (the history) after each run and
``OUT/selection.md``: per seed set, the test H@1 at the epoch each criterion
picks, at the last epoch and at the best, each criterion's rank
correlation with test H@1 over the run, the test H@1 at the earliest check
whose ``mnn`` comes within 0.5%, 1% or 2% of the run's highest (a rule
``fit`` does not offer: at 1% it missed the best epoch by more than 0.005 in
two of four runs it was not chosen on, bench/results/README.md stop 23;
see ``tolerant_pick``), and the ``mnn`` pairs'
precision at the first check, the ``mnn`` pick, the best epoch and the last.
``--from-json`` rewrites ``selection.md`` from the histories in ``--out``
without training (only ``--methods`` and ``--model`` then matter).

Usage (seeds: a folder with ``uvp.tsv``, ``multimodal.tsv``, ``psqe.tsv``, e.g.
``bench/results/seeds/DBP15K-zh_en-R2``)::

    python bench/selection_study.py --dataset DBP15K/zh_en --root DATA --features F.safetensors \\
        --seeds bench/results/seeds/DBP15K-zh_en-R2 --model mclea --epochs 500 --every 25 --out DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from psqe.align import ALIGNERS, AlignData, build_aligner, embed, evaluate, fit
from psqe.align.selection import count_among, free_entities, mutual_nearest
from psqe.data import load_dataset
from psqe.features import load_feature_set
from psqe.features._util import atomic_write
from psqe.reproduce.cells import report_clean_split
from psqe.seeds.io import read_seeds

log = logging.getLogger("selection_study")
METHODS = ("uvp", "multimodal", "psqe")
CRITERIA = ("val_mrr", "val_hits@1", "mnn", "mnn_cos")
#: Criteria of models that add pairs themselves (``mnn_scores(..., added=)``); tabled when every history has them.
ADDED_CRITERIA = ("mnn_own", "mnn_rest_rate")
#: The criterion of ``--holdout`` runs; tabled when every history has it.
HOLDOUT_CRITERIA = ("mnn_holdout",)
TARGET = "test_hits@1"
TOLERANCES = (0.005, 0.01, 0.02)


def tolerant_pick(history: list[dict], key: str, tol: float) -> dict:
    """The earliest evaluation whose ``key`` is at least ``(1 - tol)`` times the run's highest.

    >>> h = [{"epoch": 19, "mnn": 90}, {"epoch": 39, "mnn": 99}, {"epoch": 59, "mnn": 100}]
    >>> tolerant_pick(h, "mnn", 0.0)["epoch"], tolerant_pick(h, "mnn", 0.01)["epoch"], tolerant_pick(h, "mnn", 0.1)["epoch"]
    (59, 39, 19)
    """
    top = max(r[key] for r in history)
    return next(r for r in history if r[key] >= (1 - tol) * top)


def picks(history: list[dict], criteria: tuple[str, ...], target: str) -> dict[str, dict]:
    """What selecting by each of ``criteria`` over ``history`` (a study history) would give.

    For each criterion: the evaluation with its highest value (the first of
    ties, as :func:`psqe.align.fit` selects) and ``target`` there. Also
    ``"final"`` (the last evaluation) and ``"oracle"`` (the best ``target``,
    which no label-free run can know). Ties resolve to the earliest epoch.

    >>> h = [{"epoch": 9, "mnn": 5, "h1": 0.2}, {"epoch": 19, "mnn": 9, "h1": 0.4}, {"epoch": 29, "mnn": 7, "h1": 0.3}]
    >>> picks(h, ("mnn",), "h1")
    {'mnn': {'epoch': 19, 'h1': 0.4}, 'final': {'epoch': 29, 'h1': 0.3}, 'oracle': {'epoch': 19, 'h1': 0.4}}
    """
    if not history:
        raise ValueError("picks: the history is empty (was eval_every set?)")

    def at(i: int) -> dict:
        return {"epoch": history[i]["epoch"], target: history[i][target]}

    def best(key: str) -> int:
        return max(range(len(history)), key=lambda i: (history[i][key], -i))

    return {**{c: at(best(c)) for c in criteria}, "final": at(len(history) - 1), "oracle": at(best(target))}


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties get their mean rank); nan below 2 values.

    >>> rank_correlation([1, 2, 3, 4], [10, 20, 30, 25])
    0.8
    """
    if len(a) != len(b):
        raise ValueError(f"rank_correlation: lengths differ ({len(a)} and {len(b)})")
    if len(a) < 2:
        return float("nan")

    def ranks(x) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float64)
        below, equal = (t[:, None] > t[None, :]).sum(1), (t[:, None] == t[None, :]).sum(1)
        return below.double() + 0.5 * (equal.double() - 1)

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / den if den else float("nan")


def holdout_entities(data, fraction: float, seed: int, *used) -> Tensor:
    """A random ``fraction`` (rounded down) of the kg1 entities in none of ``used`` (pair-index tables), sorted.

    The same ``seed`` gives the same entities.

    >>> from psqe.data.synthetic import make_pair
    >>> data = AlignData.from_pair(make_pair(50, seed=0))
    >>> h = holdout_entities(data, 0.2, 0, data.links[:10])
    >>> h.numel() == int(0.2 * (data.n1 - 10)), bool((h < data.n1).all()), bool(torch.isin(h, data.links[:10]).any())
    (True, True, False)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_entities: fraction must be in (0, 1), got {fraction}")
    left, _ = free_entities(data.num_entities, data.n1, *used)
    size = int(fraction * left.numel())
    if size == 0:
        raise ValueError(f"holdout_entities: a fraction of {fraction} of the {left.numel()} free kg1 entities "
                         "holds none out; raise it")
    g = torch.Generator().manual_seed(seed)
    return left[torch.randperm(left.numel(), generator=g)[:size]].sort().values


def mnn_scores(joint, data, *used, added=None, holdout=None) -> dict:
    """:func:`psqe.align.selection.label_free_scores` (``mnn``, ``mnn_rate``, ``mnn_cos``) and how many of
    those mutual nearest neighbours are gold links (``mnn_correct``, ``mnn_precision``), from one pass.

    A pair whose kg1 entity has no gold partner counts as wrong. ``added``: the
    ``[A, 2]`` pairs training itself added so far (PCMEA's pseudo-links), whose
    entities the count keeps free. With it, three more numbers:

    - ``mnn_added`` (as ``label_free_scores`` gives it) and ``mnn_own`` =
      ``mnn - mnn_added``: the mutual neighbours that are *not* the model's
      own pairs (a candidate criterion: ``mnn`` rises with every pseudo-link);
    - ``mnn_rest``, ``mnn_rest_rate``: a second pass over the entities in no
      ``used`` pair *and* no added pair (a candidate criterion: its rate is
      over a pool that shrinks as pairs are added);
    - ``added_precision``: the added pairs that are gold links (an oracle
      diagnostic, never a criterion).

    ``holdout``: kg1 pair indices the model never pairs itself
    (:func:`holdout_entities`); with it, ``mnn_holdout`` counts the mutual
    neighbours whose kg1 entity is one of them (a candidate criterion) and
    ``mnn_holdout_correct`` those that are gold links (an oracle diagnostic).
    """
    left, right = free_entities(joint.shape[0], data.n1, *used, device=joint.device)
    l, r, cos = mutual_nearest(joint, left, right)
    partner = torch.full((joint.shape[0],), -1, dtype=torch.long, device=joint.device)
    partner[data.links[:, 0].to(joint.device)] = data.links[:, 1].to(joint.device)
    count, correct = int(l.numel()), int((partner[l] == r).sum())
    out = {"mnn": count, "mnn_rate": count / max(left.numel(), 1), "mnn_cos": float(cos.mean()) if count else 0.0,
           "mnn_correct": correct, "mnn_precision": correct / max(count, 1)}
    if holdout is not None:
        held = torch.isin(l, holdout.to(joint.device))
        out["mnn_holdout"] = int(held.sum())
        out["mnn_holdout_correct"] = int((partner[l[held]] == r[held]).sum())
    if added is None:
        return out
    added = added.to(joint.device).long()
    width = joint.shape[0]
    out["mnn_added"] = count_among(l, r, added, width)
    out["mnn_own"] = count - out["mnn_added"]
    rest_l, rest_r = free_entities(width, data.n1, *used, added, device=joint.device)
    out["mnn_rest"] = int(mutual_nearest(joint, rest_l, rest_r)[0].numel())
    out["mnn_rest_rate"] = out["mnn_rest"] / max(rest_l.numel(), 1)
    out["added"] = int(added.shape[0])
    out["added_precision"] = int((partner[added[:, 0]] == added[:, 1]).sum()) / max(added.shape[0], 1)
    return out


def run_one(model_name, data, split, epochs, every, seed, holdout=None, **model_config) -> list[dict]:
    """Train on ``split.train`` (pair index), recording the criteria and the test H@1 every ``every`` epochs.

    ``holdout``: kg1 pair indices handed to the model's ``exclude`` before
    training (so it never pairs them) and scored as ``mnn_holdout``. Only the
    model's own pairs skip them: iterative learning (``il=True`` in
    ``model_config``) is not told of them.
    ``model_config``: fields of the model's config, as :func:`psqe.align.build_aligner` takes them."""
    model, config = build_aligner(model_name, data, seed=seed, epochs=epochs, **model_config)
    if holdout is not None:
        if not hasattr(model, "exclude"):
            raise ValueError(f"--holdout: {model_name} adds no pairs of its own (it has no exclude)")
        model.exclude(holdout)
    # fit records the held-out seeds' ranks; nothing is restored, so the run is the plain run
    config = dataclasses.replace(config, eval_every=every, restore_best=False, seed=seed)

    def monitor(epoch, m, d):
        out = embed(m, d)
        test = evaluate(out, split, d)
        added = m.extra_train_pairs() if hasattr(m, "extra_train_pairs") else None  # PCMEA's pseudo-links
        return {TARGET: test["hits@1"], "test_mrr": test["mrr"],
                **mnn_scores(out["joint"], d, split.train, split.val, added=added, holdout=holdout)}

    torch.manual_seed(seed)
    result = fit(model, data, split.train, config, val_pairs=split.val, monitor=monitor)
    # fit's own validation keys carry no prefix; name them apart from the test's
    return [{("val_" + k if k in ("mrr", "hits@1", "hits@10") else k): v for k, v in row.items()}
            for row in result.val_history]


def table(histories: dict[str, list[dict]]) -> str:
    """The Markdown summary of ``histories`` ({method: history})."""
    criteria = CRITERIA + tuple(c for c in ADDED_CRITERIA + HOLDOUT_CRITERIA
                                if all(c in h[0] for h in histories.values()))
    cols = (*criteria, "final", "oracle")
    lines = ["| seeds | " + " | ".join(f"{c} pick" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, hist in histories.items():
        chosen = picks(hist, criteria, TARGET)
        lines.append(f"| {method} | " + " | ".join(f"{chosen[c][TARGET]:.4f} (ep {chosen[c]['epoch'] + 1})"
                                                  for c in cols) + " |")
    lines += ["", "Rank correlation with test H@1 over the run (Spearman):", "",
              "| seeds | " + " | ".join(criteria) + " |", "|---" * (len(criteria) + 1) + "|"]
    for method, hist in histories.items():
        target = [r[TARGET] for r in hist]
        lines.append(f"| {method} | " + " | ".join(f"{rank_correlation([r[c] for r in hist], target):+.2f}"
                                                  for c in criteria) + " |")
    lines += ["", "The earliest check whose `mnn` is within a tolerance of the run's highest (test H@1 there):", "",
              "| seeds | " + " | ".join(f"within {t:.1%}" for t in TOLERANCES) + " |", "|---" * (len(TOLERANCES) + 1) + "|"]
    for method, hist in histories.items():
        lines.append(f"| {method} | " + " | ".join(
            f"{r[TARGET]:.4f} (ep {r['epoch'] + 1})" for r in (tolerant_pick(hist, "mnn", t) for t in TOLERANCES)) + " |")
    diagnosed = {m: h for m, h in histories.items() if "mnn_correct" in h[0]}  # not in older histories
    if diagnosed:
        lines += ["", "The `mnn` pairs against the gold links (oracle diagnostics):", "",
                  "| seeds | at | epoch | test H@1 | mnn | right | precision |", "|---" * 7 + "|"]
    for method, hist in diagnosed.items():
        chosen = picks(hist, ("mnn",), TARGET)
        row_at = {r["epoch"]: r for r in hist}
        for at, row in (("first check", hist[0]), ("mnn pick", row_at[chosen["mnn"]["epoch"]]),
                        ("best", row_at[chosen["oracle"]["epoch"]]), ("last", hist[-1])):
            lines.append(f"| {method} | {at} | {row['epoch'] + 1} | {row[TARGET]:.4f} | {row['mnn']} | "
                         f"{row['mnn_correct']} | {row['mnn_precision']:.3f} |")
    for method, hist in histories.items():
        if "added" not in hist[0]:
            continue
        held = "mnn_holdout" in hist[0]
        lines += ["", f"`{method}`: every check, with the pairs the model added (their precision: an oracle "
                  "diagnostic; none before the first):", "", "| epoch | test H@1 | mnn | mnn_added | mnn_own | "
                  "mnn_rest | mnn_rest_rate | added | added precision |"
                  + (" mnn_holdout | its right ones |" if held else ""), "|---" * (11 if held else 9) + "|"]
        lines += [f"| {r['epoch'] + 1} | {r[TARGET]:.4f} | {r['mnn']} | {r['mnn_added']} | {r['mnn_own']} | "
                  f"{r['mnn_rest']} | {r['mnn_rest_rate']:.4f} | {r['added']} | "
                  + (f"{r['added_precision']:.3f} |" if r["added"] else "- |")
                  + (f" {r['mnn_holdout']} | {r['mnn_holdout_correct']} |" if held else "")
                  for r in hist]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="required unless --from-json")
    p.add_argument("--root", help="required unless --from-json")
    p.add_argument("--features", type=Path, help="required unless --from-json")
    p.add_argument("--seeds", type=Path, help="folder with the report's seed sets; required unless --from-json")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--model", default="mclea")
    p.add_argument("--epochs", type=int, default=None, help="default: the model's own schedule")
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--train-seed", type=int, default=42)
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of the free kg1 entities the model never pairs itself, scored as mnn_holdout "
                        "(models with exclude: pcmea)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--from-json", action="store_true", help="rewrite OUT/selection.md from OUT's histories only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.from_json:
        if args.holdout is not None:
            p.error("--holdout shapes a training run; --from-json trains nothing")
        histories = {}
        for method in args.methods.split(","):
            path = args.out / f"{args.model}-{method}.json"
            if path.exists():
                histories[method] = json.loads(path.read_text())
            else:
                log.warning("--from-json: no %s; %s is left out of the summary", path, method)
        if not histories:
            p.error(f"--from-json: no {args.model}-<method>.json for --methods {args.methods} in {args.out}")
        summary = table(histories)
        atomic_write(args.out / "selection.md", lambda tmp: Path(tmp).write_text(summary))
        return 0
    missing = [f"--{k}" for k in ("dataset", "root", "features", "seeds") if getattr(args, k) is None]
    if missing:
        p.error(f"{', '.join(missing)} required (only --from-json runs without them)")
    if args.every < 1:
        p.error(f"--every must be >= 1, got {args.every}")
    if args.holdout is not None and not 0 < args.holdout < 1:
        p.error(f"--holdout must be in (0, 1), got {args.holdout}")
    known = ALIGNERS.get(args.model.lower())
    if args.holdout is not None and known is not None and not hasattr(known[0], "exclude"):
        p.error(f"--holdout: {args.model} adds no pairs of its own to keep them from (no exclude); use pcmea")
    pair = load_dataset(args.dataset, root=args.root)
    load_feature_set(pair, args.features)
    data = AlignData.from_pair(pair)
    seed_sets = {m: read_seeds(args.seeds / f"{m}.tsv") for m in METHODS}  # all three define the common test
    histories = {}
    for method in args.methods.split(","):
        if method not in seed_sets:
            p.error(f"--methods: unknown seed set {method!r}; known: {', '.join(METHODS)}")
        split = report_clean_split(pair, seed_sets[method], list(seed_sets.values()), "val", args.train_seed)
        split = split.to_pair_index(data)
        log.info("%s on %s: %d training seeds, %d held out, %d test links", args.model, method,
                 split.train.shape[0], split.val.shape[0], split.test.shape[0])
        held = None
        if args.holdout is not None:
            held = holdout_entities(data, args.holdout, args.train_seed, split.train, split.val)
            log.info("%d free kg1 entities held out of the model's own pairs", held.numel())
        histories[method] = run_one(args.model, data, split, args.epochs, args.every, args.train_seed, held)
        text = json.dumps(histories[method], indent=1)
        atomic_write(args.out / f"{args.model}-{method}.json", lambda tmp: Path(tmp).write_text(text))
        summary = table(histories)
        atomic_write(args.out / "selection.md", lambda tmp: Path(tmp).write_text(summary))
        log.info("\n%s", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
