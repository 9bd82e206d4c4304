"""Markdown tables of a pytest-benchmark JSON: medians and ratios per group.

In every group the entry whose ``impl`` parameter is ``psqe`` is ours; each
other entry gets ``baseline median / psqe median`` (> 1: psqe is faster).
Peak-memory groups show the extra MB measured in the child process, and the
ratio is of those MB instead (times there are whole child processes);
the load average around each measurement tells how busy the (shared) machine
was.

Usage::

    python bench/summarize.py bench/results/cpu-2core-YYYY-MM-DD.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

OURS = "psqe"


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def tables(data: dict) -> str:
    """One markdown table per benchmark group, in the order the groups ran."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"] or "(no group)"].append(bench)
    out = []
    for group, benches in groups.items():
        ours = next((b for b in benches if (b.get("params") or {}).get("impl") == OURS), None)
        memory = any("extra_mb" in b["extra_info"] for b in benches)
        key = "extra MB" if memory else "median"
        head = ("| benchmark | median | min | rounds | " + ("extra peak MB | " if memory else "")
                + f"{key} / {OURS} {key} | load 1m before -> after |")
        out += [f"### {group}", "", head, "|" + "---|" * (head.count("|") - 1)]
        for b in benches:
            median = b["stats"]["median"]
            ratio = "-"
            if ours is not None and b is not ours:
                ratio = (f"{b['extra_info']['extra_mb'] / ours['extra_info']['extra_mb']:.2f}" if memory
                         else f"{median / ours['stats']['median']:.2f}")
            mem = f"{b['extra_info']['extra_mb']:.0f} | " if memory else ""
            info = b["extra_info"]
            load = f"{info.get('loadavg_1m_before', float('nan')):.1f} -> {info.get('loadavg_1m_after', float('nan')):.1f}"
            out.append(f"| {b['name']} | {_fmt_time(median)} | {_fmt_time(b['stats']['min'])} | "
                       f"{b['stats']['rounds']} | {mem}{ratio} | {load} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", type=Path)
    args = parser.parse_args(argv)
    data = json.loads(args.json_file.read_text(encoding="utf-8"))
    sys.stdout.write(tables(data) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
