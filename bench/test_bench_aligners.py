"""Training time of each aligner at DBP15K size (issue 5: "training time per aligner recorded").

Each aligner trains a few epochs on DBP15K zh_en with the R2 feature file
(found like bench/test_bench_pipeline.py: ``$PSQE_BENCH_FEATURES`` or
``~/.cache/psqe/bench/DBP15K-zh_en-R2.safetensors``) on the 4,500 legacy
training pairs (30% of the gold links), "w/o surface", in a fresh process.
Recorded in ``extra_info``: seconds per epoch (the first epoch included, so
an upper bound), the projection to the aligner's default epoch count
(``projected_seconds_default_epochs``), and the process's peak RSS.
Only with ``--bench-big`` (minutes per aligner on a 2-core CPU).

``test_batch_rows`` times MEAformer, MCLEA and PCMEA on 1,000 of those
pairs (a reproduce cell's size) with each step computed on its batches'
entities (``psqe``, the default) and with the full pass over every entity
each step (``full-pass``, the authors' way; ``rows_per_batch = False``),
side by side. (PCMEA's momentum encoder and pseudo-labels start at
mid-training, so these first epochs time its MCLEA backbone.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _common import pedantic, record_machine
from test_bench_pipeline import _dataset, _feature_file

#: Epochs timed per aligner (MEAformer's epochs are the slowest).
EPOCHS = {"eva": 3, "mclea": 3, "meaformer": 2, "pcmea": 3}

_CHILD = r"""
import json, sys, time
import torch
from psqe.align import AlignData, build_aligner, fit, legacy_split
from psqe.data import load_dataset
from psqe.features import load_feature_set
import dataclasses
args = json.loads(sys.argv[1])
pair = load_dataset(args["dataset"])
load_feature_set(pair, args["features"])
data = AlignData.from_pair(pair)
split = legacy_split(pair.links, seed=42).to_pair_index(data)
train = split.train if args.get("pairs") is None else split.train[:args["pairs"]]
model, cfg = build_aligner(args["model"], data, seed=0)
if "rows_per_batch" in args:
    model.rows_per_batch = args["rows_per_batch"]
default_epochs = cfg.epochs
cfg = dataclasses.replace(cfg, epochs=args["epochs"])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
result = fit(model, data, train, cfg, progress=False)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
per_epoch = result.seconds / args["epochs"]
print(json.dumps({"model": args["model"], "epochs": args["epochs"], "seconds": result.seconds,
                  "seconds_per_epoch": per_epoch, "default_epochs": default_epochs,
                  "projected_seconds_default_epochs": per_epoch * default_epochs, "peak_rss_mb": peak,
                  "train_pairs": int(train.shape[0]), "threads": torch.get_num_threads(),
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def _run(dataset, features, model: str, **extra) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    args = {"dataset": str(dataset), "features": str(features), "model": model, "epochs": EPOCHS[model], **extra}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{model} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.big
@pytest.mark.parametrize("model", list(EPOCHS))
def test_aligner_epoch_time_dbp15k(benchmark, model):
    dataset, features = _dataset(), _feature_file()
    if dataset is None or features is None:
        pytest.skip("needs DBP15K zh_en ($PSQE_DATA or ../shared/data) and its R2 feature file ($PSQE_BENCH_FEATURES)")
    benchmark.group = "aligner training on DBP15K zh_en R2, 4,500 gold pairs (fresh process)"
    result = pedantic(benchmark, _run, args=(dataset, features, model), rounds=1)
    record_machine(benchmark, dataset=str(dataset), features=str(features), **result)
    assert result["seconds_per_epoch"] > 0


@pytest.mark.big
@pytest.mark.parametrize("impl", ["psqe", "full-pass"])
@pytest.mark.parametrize("model", ["meaformer", "mclea", "pcmea"])
def test_batch_rows(benchmark, model, impl):
    dataset, features = _dataset(), _feature_file()
    if dataset is None or features is None:
        pytest.skip("needs DBP15K zh_en ($PSQE_DATA or ../shared/data) and its R2 feature file ($PSQE_BENCH_FEATURES)")
    benchmark.group = f"{model} on DBP15K zh_en R2, 1,000 pairs: batch rows vs full pass (fresh process)"
    result = pedantic(benchmark, _run, args=(dataset, features, model),
                      kwargs={"pairs": 1000, "rows_per_batch": impl == "psqe"}, rounds=1)
    record_machine(benchmark, dataset=str(dataset), features=str(features), **result)
    assert result["train_pairs"] == 1000 and result["seconds_per_epoch"] > 0
