"""The cross-report table of every ``psqe reproduce`` folder under ``bench/results/``.

Writes ``bench/results/reproduce-summary.md`` (atomically): per report, model
and protocol, H@1 with 30% gold, Type I, Type II and PSQE seeds, PSQE's
margins and the paper's (``psqe.reproduce.summary``).

Usage::

    python bench/summarize_reproduce.py            # every bench/results/reproduce-*/ folder with cells
    python bench/summarize_reproduce.py DIR [DIR ...] --out FILE
"""
from __future__ import annotations

import argparse
from pathlib import Path

from psqe.features._util import atomic_write
from psqe.reproduce.summary import summary_markdown, summary_rows

RESULTS = Path(__file__).resolve().parent / "results"
HEADER = ("# `psqe reproduce`: PSQE's seeds against Type I and Type II, every report\n\n"
          "Written by `bench/summarize_reproduce.py` from the reports' `cells/*.json`. H@1, left to right. "
          "`psqe_minus_type1` is PSQE's margin over Type I (UVP) seeds, `paper_delta` the paper's Table 1 "
          "(DBP15K) or Table 2 (DWY15K) margin (its '+PSQE' row minus its 'base' row: real images and the models' default epochs there; the offline "
          "feature stand-ins and `epochs` here). R2 reports are far below the paper in absolute terms (no names, "
          "simulated images): compare margins. `test_links`: the test set the row's cells share (legacy: the "
          "10,500 links after the seed-42 split; clean: the gold links that no seed set and no 30%-gold training "
          "link touches, every kg2 entity a candidate, the last epoch; `clean (mnn)`: the epoch the label-free score "
          "picked, `clean (val)`: the best on 10% of the seeds held out). `train_seed`: the seed the aligners "
          "trained with (folders with the same seed sets and another `train_seed` measure the run-to-run "
          "spread). A margin that rounds to zero at 3 decimals is shown to 4. A report without a cell leaves "
          "its column empty. `other_seed_sets`: H@1 of the report's other seed sets (the Table 3 "
          "ablations `psqe-no-*`, Table 6's `psqe-fixed`) and the pairs each trained on.\n\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="report folders (default: bench/results/reproduce-*/)")
    parser.add_argument("--out", type=Path, default=RESULTS / "reproduce-summary.md")
    args = parser.parse_args(argv)
    # by default, every finished report (the superseded "-partial" folder keeps its cells elsewhere)
    folders = args.folders or sorted(p for p in RESULTS.glob("reproduce-*") if any((p / "cells").glob("*.json")))
    text = HEADER + summary_markdown(summary_rows(folders))
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
