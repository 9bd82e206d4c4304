"""The report of ``psqe reproduce``: tables (Markdown + CSV), the paper's claims, plots.

Rows are cells (model x seed set). The paper's Table 1 (or 2) numbers sit beside
the rows they correspond to: its "base" row (each model with its own
unsupervised seeds) beside ``uvp``, its "+PSQE" row beside ``psqe``. Our
features are the offline stand-ins of BENCHMARK-PROTOCOL.md, so the
comparison is of deltas, not of absolute values.
"""
from __future__ import annotations

from pathlib import Path

from ..features._util import atomic_write
from ..plot import grouped_bars_svg
from ..seeds.compare import write_distribution_plot
from ..align.metrics import PROTOCOLS
from . import ABLATIONS, FIXED, SUPERVISED, rows_to_csv

COLUMNS = ["model", "seeds", "train_pairs", "legacy_hits@1", "legacy_hits@10", "legacy_mrr", "clean_hits@1",
           "clean_hits@10", "clean_mrr", "paper_hits@1", "paper_hits@10", "paper_mrr", "seconds"]
QUALITY = ["count", "precision", "recall", "entity_coverage", "edge_coverage", "graph_coverage_eq11", "degree_tv",
           "cluster_tv", "seconds"]
_GENERATOR = {"uvp": "type1", "multimodal": "type2", "psqe": "psqe"}


def _flat(cell: dict, paper: dict | None) -> dict:
    row = {"model": cell["model"], "seeds": cell["seeds"], "train_pairs": cell["train_pairs"], "seconds": 0.0}
    for protocol in PROTOCOLS:
        for metric in ("hits@1", "hits@10", "mrr"):
            row[f"{protocol}_{metric}"] = cell.get(protocol, {}).get(metric, "")
        if "shared_run" not in cell.get(protocol, {}):  # one training run counted once
            row["seconds"] += cell.get(protocol, {}).get("seconds", 0.0)
    which = {"uvp": "base", "multimodal": None}.get(cell["seeds"], cell["seeds"])  # the rest by their own name
    numbers = (paper or {}).get(cell["model"], {}).get(which)
    for metric, value in zip(("hits@1", "hits@10", "mrr"), numbers or ()):
        if value is not None:
            row[f"paper_{metric}"] = value
    return row


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) and v <= 1.0 else (f"{v:.0f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _clean_note(cells: list[dict], untouched_by: list[str] | None = None) -> str:
    """One line on the clean test set(s) of ``cells`` (empty without clean entries); ``untouched_by``: what
    the folder's clean test was made without (``config.json``'s ``clean_test``), when known."""
    entries = [c["clean"] for c in cells if "clean" in c]
    if not entries:
        return ""
    sets = sorted({(e.get("queries"), e.get("test_digest"), e.get("selection", "val")) for e in entries}, key=str)
    text = "; ".join(f"{'?' if q is None else int(q)} test links (digest {d}), selection {sel}" for q, d, sel in sets)
    warn = " **Rows are on different test sets: compare with care.**" if len(sets) > 1 else ""
    picked = [f"{c['model']} / {c['seeds']} epoch {c['clean']['best_epoch'] + 1}: {c['clean']['hits@1']:.3f} against "
              f"{c['clean']['last_epoch']['hits@1']:.3f}" for c in cells if "last_epoch" in c.get("clean", {})]
    last = f" Clean H@1 at the selected epoch against the run's last epoch: {'; '.join(picked)}." if picked else ""
    named = [x for x in untouched_by or () if x != "supervised30 split"]
    sets_named = ("any seed set of this report" if untouched_by is None else
                  "the seed sets " + ", ".join(named) if named else "a seed set (none had been made)")
    return (f"Clean protocol: {text}; every kg2 entity a candidate; the test links are those that neither the 30% "
            f"gold split nor {sets_named} {'touch' if named else 'touches'}.{warn}{last}\n\n")


def claims(cells: list[dict], quality: dict, protocols=("legacy",)) -> list[str]:
    """The paper's claims checked on these numbers, each as 'held' / 'not held' with the numbers: the seed
    sets' precision and spread once, then each model's H@1 under each of ``protocols``."""
    out = []
    q1, q2 = quality.get("uvp"), quality.get("multimodal")
    if q1 and q2:
        spread = [k for k in ("degree_tv", "cluster_tv") if k in q1 and k in q2]
        held = q2["precision"] > q1["precision"] and all(q2[k] > q1[k] for k in spread)
        out.append(f"Type II more precise than Type I but spreads worse: {'held' if held else 'not held'} "
                   f"(precision {q2['precision']:.3f} vs {q1['precision']:.3f}; "
                   + ", ".join(f"{k} {q2[k]:.3f} vs {q1[k]:.3f}" for k in spread) + ")")
    for protocol in protocols:
        out += _h1_claims(cells, protocol) + _ablation_claims(cells, protocol)
    return out


def _ablation_claims(cells: list[dict], protocol: str) -> list[str]:
    """Table 3's claim for each model with PSQE's cell and PSQE-without-visual's: leaving the visual modality
    out of the seed generator costs more H@1 than leaving out any other (each drop given)."""
    out = []
    by = {(c["model"], c["seeds"]): c.get(protocol, {}).get("hits@1") for c in cells}
    for model in dict.fromkeys(c["model"] for c in cells):
        full = by.get((model, "psqe"))
        drops = {a: full - by[(model, a)] for a in ABLATIONS if full is not None and by.get((model, a)) is not None}
        if "psqe-no-visual" not in drops:
            continue
        held = drops["psqe-no-visual"] > 0 and all(drops["psqe-no-visual"] > d for a, d in drops.items()
                                                   if a != "psqe-no-visual")
        out.append(f"{model}: PSQE without the visual modality loses the most H@1 ({protocol}): "
                   f"{'held' if held else 'not held'} (PSQE {full:.3f}; "
                   + ", ".join(f"{a} {full - d:.3f} ({_margin(-d)})" for a, d in drops.items()) + ")")
    return out


def _h1_claims(cells: list[dict], protocol: str) -> list[str]:
    out = []
    by = {(c["model"], c["seeds"]): c.get(protocol, {}).get("hits@1") for c in cells}
    for model in dict.fromkeys(c["model"] for c in cells):
        others = {s: by[(model, s)] for s in ("uvp", "multimodal") if by.get((model, s)) is not None}
        for method, what in (("psqe", "PSQE seeds give"), (FIXED, f"PSQE seeds cut to the budget ({FIXED}) give")):
            ours = by.get((model, method))
            if ours is None or not others:
                continue
            held = all(ours > v for v in others.values())
            queries = next(c.get(protocol, {}).get("queries") for c in cells if (c["model"], c["seeds"]) == (model, method))
            out.append(f"{model}: {what} the best H@1 ({protocol}): {'held' if held else 'not held'} "
                       f"({'PSQE' if method == 'psqe' else method} {ours:.3f}; " + ", ".join(f"{s} {v:.3f} ({_margin(ours - v)}{_in_links(ours - v, queries)})"
                                                         for s, v in others.items()) + ")")
    return out


def _in_links(delta: float, queries) -> str:
    """For a non-zero margin under 0.001 H@1, about how many test links it is (H@1 is kept to 4 decimals).

    >>> _in_links(0.0004, 9329), _in_links(0.02, 9329), _in_links(0.0004, None)
    (', about 4 of 9,329 test links', '', '')
    """
    if not queries or not 0 < abs(delta) < 0.001:
        return ""
    return f", about {round(abs(delta) * queries):,} of {int(queries):,} test links"


def _margin(delta: float) -> str:
    """A signed H@1 margin to 3 decimals, or to 4 where 3 would show it as zero.

    >>> _margin(0.0412), _margin(0.0004), _margin(0.0)
    ('+0.041', '+0.0004', '+0.000')
    """
    return f"{delta:+.4f}" if 0 < abs(delta) < 0.0005 else f"{delta:+.3f}"


def _training_seed_note(config) -> str:
    return "" if config.training_seed == config.seed else f" (the aligners train with seed {config.training_seed})"


def _commit_note(cells: list[dict]) -> str:
    """A line when the cells were trained by more than one code commit (a folder resumed after the code moved)."""
    commits = {}
    for c in cells:
        for p in PROTOCOLS:
            if p in c:
                commits.setdefault(str(c[p].get("commit") or "unknown")[:12], []).append(f"{c['model']} / {c['seeds']}")
    if len(commits) < 2:
        return ""
    parts = "; ".join(f"{k}: {', '.join(dict.fromkeys(v))}" for k, v in sorted(commits.items()))
    return f"The cells were trained by {len(commits)} code commits ({parts}).\n\n"


def _untouched_by(out: Path) -> list[str] | None:
    import json

    path = Path(out) / "config.json"
    record = json.loads(path.read_text(encoding="utf-8")).get("clean_test") if path.exists() else None
    return None if not record else list(record.get("untouched_by", [])) or None


def write_report(out: Path, config, pair, cells: list[dict], seeds: dict, clusters, quality: dict,
                 paper: tuple[str, dict] | None) -> None:
    """Write table.md/csv, seed_quality.md, h1.svg and seed_distribution.svg into ``out`` (atomically).

    ``quality``: the folder's seed quality, one entry per finished seed set
    (:func:`~psqe.reproduce.cells.make_seeds`); ``paper``: the paper's table for the dataset
    (:func:`~psqe.reproduce.paper_entry`), or None."""
    table, paper = paper if paper else (None, None)
    rows_of = {r for numbers in (paper or {}).values() for r in numbers}
    extra = "".join(text for present, text in (
        (bool(rows_of & set(ABLATIONS)), " and Table 3 beside the psqe-no-* rows (no H@10 there)"),
        (FIXED in rows_of, f" and Table 6 beside {FIXED} (H@1 only)")) if present)
    paper_text = (f"Paper columns: {table} ('base' beside uvp, '+PSQE' beside psqe){extra}; real images there, the "
                  "offline stand-ins here: compare deltas." if table else "The paper reports no numbers for this dataset.")
    rows = [_flat(c, paper) for c in cells]
    protocols = [p for p in PROTOCOLS if any(p in c for c in cells)]  # those with at least one entry
    qrows = [{"seeds": m, **{k: q.get(k, "") for k in QUALITY}} for m, q in quality.items()]
    text = [f"# psqe reproduce: {pair.name or config.dataset}, setting {config.setting}\n\n",
            f"Budget {config.budget}; epochs {f'{config.epochs} (schedules scaled)' if config.epochs else 'model defaults'}; Stage II epochs "
            f"{config.psqe_epochs or 300}; surface {'on' if config.surface else 'off'}"
            f"{'; iterative learning on (the schedule, then as many epochs again)' if config.iterative else ''}; seed {config.seed}{_training_seed_note(config)}. "
            f"`{SUPERVISED}`: trained on 30% gold links. {paper_text}\n\n",
            _clean_note(cells, _untouched_by(out)), _commit_note(cells), "## Downstream alignment\n\n", _markdown(rows, COLUMNS), "\n## Seed quality\n\n",
            _markdown(qrows, ["seeds"] + QUALITY), "\n## The paper's claims on these numbers\n\n",
            "".join(f"- {c}\n" for c in claims(cells, quality, protocols))]
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text("".join(text), encoding="utf-8"))
    atomic_write(out / "table.csv", lambda tmp: Path(tmp).write_text(rows_to_csv(rows, COLUMNS), encoding="utf-8"))
    atomic_write(out / "seed_quality.md", lambda tmp: Path(tmp).write_text(_markdown(qrows, ["seeds"] + QUALITY)))
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["seeds"] for r in rows))
    panels = []
    for protocol in protocols:
        h1 = {(r["model"], r["seeds"]): r[f"{protocol}_hits@1"] for r in rows}
        series = {m: [None if h1.get((model, m)) is None else float(h1[(model, m)]) for model in models]
                  for m in methods}
        panels.append((f"H@1 ({protocol} protocol) per aligner", models, series))
    svg = grouped_bars_svg(panels,
                           title=f"H@1 per aligner and seed set: {pair.name or config.dataset} {config.setting}", ylabel="H@1")
    atomic_write(out / "h1.svg", lambda tmp: Path(tmp).write_text(svg, encoding="utf-8"))
    if seeds:
        write_distribution_plot(out / "seed_distribution.svg", pair, {_GENERATOR.get(m, m): s for m, s in seeds.items()}, clusters)
