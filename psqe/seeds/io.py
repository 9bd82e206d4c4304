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

from ..features._util import atomic_write
from .pipeline import SeedResult


def tsv_text(seeds: torch.Tensor) -> str:
    """``id1<TAB>id2`` lines of a ``[S, 2]`` seed tensor."""
    return "".join(f"{a}\t{b}\n" for a, b in seeds.tolist())


def write_result(result: SeedResult, out_dir: str | Path, config: dict, generators: dict | None = None) -> None:
    """Write seeds, per-stage seeds and the JSON report into ``out_dir``
    (``generators``: generator name -> quality measures, reported beside PSQE's stages)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if result.seeds.numel() and int(result.seeds.max()) > np.iinfo(np.int32).max:
        raise ValueError("seed ids exceed int32; seeds.npy cannot hold them")
    atomic_write(out / "seeds.tsv", lambda tmp: Path(tmp).write_text(tsv_text(result.seeds)))
    buf = io.BytesIO()
    np.save(buf, result.seeds.numpy().astype(np.int32))
    atomic_write(out / "seeds.npy", lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    for name, seeds in result.stages.items():
        atomic_write(out / f"stage_{name}.tsv", lambda tmp, s=seeds: Path(tmp).write_text(tsv_text(s)))
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
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(text))
