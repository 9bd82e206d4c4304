"""Writing a :class:`~psqe.seeds.pipeline.SeedResult` to a folder, atomically.

Layout of ``out_dir``: ``seeds.tsv`` (``id1<TAB>id2``, global ids),
``seeds.npy`` (int32 ``[S, 2]``), ``stage_<name>.tsv`` per stage and
``report.json`` (counts, timings, weights, quality, config). Every file is
written to a temporary name and renamed, so a crash never leaves half a file.

>>> import tempfile, torch
>>> from psqe.seeds.pipeline import SeedResult
>>> from psqe.seeds.io import write_result
>>> out = tempfile.mkdtemp()
>>> write_result(SeedResult(seeds=torch.tensor([[0, 5], [1, 6]])), out, {"budget": 2})
>>> open(out + "/seeds.tsv").read()
'0\\t5\\n1\\t6\\n'
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ..data.common import INTEGER_ID, DatasetError, read_text
from ..features._util import atomic_write
from .pipeline import SeedResult


def tsv_text(seeds: torch.Tensor) -> str:
    """``id1<TAB>id2`` lines of a ``[S, 2]`` seed tensor."""
    return "".join(f"{a}\t{b}\n" for a, b in seeds.tolist())


def write_result(result: SeedResult, out_dir: str | Path, config: dict, generators: dict | None = None,
                 before_report=None) -> None:
    """Write seeds, per-stage seeds and the JSON report into ``out_dir``
    (``generators``: generator name -> quality measures, reported beside PSQE's stages;
    ``before_report(out_dir)``: writes further files of the result, e.g. a plot, before the report).

    Each file is written atomically. ``report.json`` marks a finished result: an earlier result's
    report is removed before anything else is written and the new one is written last, so a folder
    with a ``report.json`` never mixes two results, even after a crash halfway. ``stage_*.tsv`` files
    of an earlier result whose stage this result lacks are removed, so the folder holds one result.
    """
    out = Path(out_dir)
    if result.seeds.numel() and int(result.seeds.max()) > np.iinfo(np.int32).max:
        raise ValueError("seed ids exceed int32; seeds.npy cannot hold them")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)
    atomic_write(out / "seeds.tsv", lambda tmp: Path(tmp).write_text(tsv_text(result.seeds)))
    buf = io.BytesIO()
    np.save(buf, result.seeds.numpy().astype(np.int32))
    atomic_write(out / "seeds.npy", lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    for name, seeds in result.stages.items():
        atomic_write(out / f"stage_{name}.tsv", lambda tmp, s=seeds: Path(tmp).write_text(tsv_text(s)))
    for stale in sorted(set(out.glob("stage_*.tsv")) - {out / f"stage_{name}.tsv" for name in result.stages}):
        stale.unlink()
    report = {
        "seeds": int(result.seeds.shape[0]),
        "stages": {name: int(s.shape[0]) for name, s in result.stages.items()},
        "timings_s": result.timings,
        "weights": result.weights,
        "quality": result.quality,
        "generators": generators or {},
        "config": config,
    }
    text = json.dumps(report, indent=2, default=str)
    if before_report is not None:
        before_report(out)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(text))


def read_seeds(path: str | Path, with_lines: bool = False):
    """Seeds from a file ``write_result`` wrote (or any like it): int64 ``[S, 2]`` global ids
    (with ``with_lines``, also where each pair sits, for messages about it: ``"line 3"`` of a text
    file, ``"row 2"`` (0-based) of a ``.npy``).

    ``.npy``: an integer ``[S, 2]`` array. Anything else: text, one pair per
    line, ``id1<TAB>id2`` (spaces also accepted; blank lines skipped). Errors
    name the file and the line; duplicated rows and entities used twice are
    refused (seeds must be one-to-one). Whether the ids are entities of a
    pair is checked by whoever maps them (e.g. ``AlignData.pairs_from_global``).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"seeds file {path} is a folder; give the seeds.tsv or seeds.npy in it")
    if not path.is_file():
        raise FileNotFoundError(f"seeds file {path} does not exist")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"seeds file {path}: not a plain .npy array ({err})") from None
        if array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind not in "iu":
            raise ValueError(f"seeds file {path}: expected an integer [S, 2] array, got {array.dtype} {array.shape}")
        seeds = torch.from_numpy(array.astype(np.int64))
        lines = [f"row {i}" for i in range(seeds.shape[0])]
    else:
        rows, lines = [], []
        try:
            text = read_text(path)  # the dataset files' rules: UTF-8, a byte-order mark skipped, universal line ends
        except DatasetError as err:
            raise ValueError(f"seeds file {path}, line {err.line}: {err.reason}") from None
        for number, line in enumerate(text.split("\n"), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not all(INTEGER_ID.fullmatch(f) for f in fields):
                raise ValueError(f"seeds file {path}, line {number}: expected 'id1<TAB>id2' (two integers), got {line.rstrip()!r}")
            rows.append((int(fields[0]), int(fields[1])))
            lines.append(f"line {number}")
        seeds = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
    if seeds.shape[0] == 0:
        raise ValueError(f"seeds file {path} holds no seed pairs")
    if bool((seeds < 0).any()):
        row = int((seeds < 0).any(1).nonzero()[0, 0])
        raise ValueError(f"seeds file {path}, {lines[row]}: negative entity id {seeds[row].tolist()}")
    for side in (0, 1):
        values, inverse = torch.unique(seeds[:, side], return_inverse=True)
        if values.numel() != seeds.shape[0]:
            first = torch.full((values.numel(),), seeds.shape[0], dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(seeds.shape[0]), "amin")
            row = int((first[inverse] != torch.arange(seeds.shape[0])).nonzero()[0, 0])
            what = "repeats an earlier pair" if bool((seeds[first[inverse[row]]] == seeds[row]).all()) else \
                f"uses entity {int(seeds[row, side])} (column {side + 1}) again"
            raise ValueError(f"seeds file {path}, {lines[row]}: {seeds[row].tolist()} {what} "
                             f"({lines[int(first[inverse[row]])]}); seeds must be one-to-one")
    return (seeds, lines) if with_lines else seeds
