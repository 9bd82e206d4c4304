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
``test_many_batches`` times steps of many batches (MCLEA on the 4,500
pairs; PCMEA's second half, momentum encoder on and 10,000 pseudo-links
batched with 1,000 pairs, its periodic encoder moves and checks not timed;
and MEAformer's one-batch steps, which should not change):
each batch a view of one gather per output, MCLEA's ICL and IAL terms
from one product and its joint ICL and IAL target from another, against
stop 24's step (the IAL target a product of its own; MCLEA) and the step
before stop 24 (each batch and loss term indexing the step's rows, IAL's
three products apart), side by side.

Each runs on the CPU and, where a GPU and psqe's CUDA build are (marker
``cuda``), on the GPU: ``CUDA_EPOCHS`` epochs there, so that the first
epoch's start-up (CUDA context, kernel loading) weighs little.
``test_meaformer_schedule_cuda`` trains MEAformer for its whole default
schedule (250 epochs, 4,500 pairs) on the GPU: issue 5's "MEAformer in
minutes on a GPU".

On a GPU machine, which has no text model, ``bench/device_check.sh``
builds the feature file with ``psqe features --no-text``: the aligners' inputs
are the same, only the seed generator's text slots are left out.
``PSQE_BENCH_RECORD=FILE`` appends each run's numbers to FILE as a JSON line
as soon as the run ends (pytest-benchmark writes its JSON only at the end of
the session, and a time limit may cut that).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _common import pedantic, record_machine
from test_bench_pipeline import _dataset, _feature_file

#: Epochs timed per aligner on the CPU (MEAformer's epochs are the slowest).
EPOCHS = {"eva": 3, "mclea": 3, "meaformer": 2, "pcmea": 3}
#: Epochs timed per aligner on a GPU.
CUDA_EPOCHS = 20
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

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
model, cfg = build_aligner(args["model"], data, seed=0, **args.get("config", {}))
if "rows_per_batch" in args:
    model.rows_per_batch = args["rows_per_batch"]
if args.get("pseudo"):  # PCMEA's second half: the momentum encoder on, pseudo-links batched with the pairs
    model._momentum_step(data, first=True)
    model.pseudo_links = split.test[:args["pseudo"]].clone()
if args.get("before"):  # an earlier step, patched in: "stop23" or "stop24"
    import psqe.align.train as train_mod
    from psqe.align.encoders import icl_terms
    from psqe.align.losses import contrastive_loss, ial_loss, ial_target, icl_ial_losses
    from psqe.align.mclea import MCLEA
    def joint_icl(self, out, pairs):  # the joint ICL alone: before stop 25 the IAL target took its own product
        joint = out["joint"]
        if getattr(self, "momentum_active", False):
            target = self.momentum_joint[self._entities(out, pairs)[:, 1]]
            return contrastive_loss(joint[pairs[:, 0]], target, tau=self.config.ucl_tau)
        return contrastive_loss(joint[pairs[:, 0]], joint[pairs[:, 1]], tau=self.config.tau)
    def terms_stop24(self, out, pairs):  # each modality's ICL and IAL from one product, the target once a batch
        cfg, (left, right), joint = self.config, pairs.t(), out["joint"]
        log_q = ial_target(joint[left], joint[right], cfg.tau2)
        icl, ial = zip(*(icl_ial_losses(out[m][left], out[m][right], log_q, cfg.tau, cfg.tau2, cfg.zoom)
                         for m in self.modalities))
        return self.icl_weighting(list(icl)) + cfg.zoom * self.ial_weighting(list(ial))
    def terms_stop23(self, out, pairs):  # separate terms, IAL three products of its own per modality
        cfg, (left, right), joint = self.config, pairs.t(), out["joint"]
        icl = self.icl_weighting(icl_terms(out, self.modalities, pairs, cfg.tau))
        return icl + cfg.zoom * self.ial_weighting([ial_loss(out[m][left], out[m][right], joint[left], joint[right],
                                                             tau=cfg.tau2, zoom=cfg.zoom) for m in self.modalities])
    terms = terms_stop23 if args["before"] == "stop23" else terms_stop24
    MCLEA.loss = lambda self, out, pairs: joint_icl(self, out, pairs) + terms(self, out, pairs)
    if args["before"] == "stop23":  # each batch and loss term indexed the step's rows
        train_mod._batch_views = lambda out, group: ((out, b) for b in group)
default_epochs = cfg.epochs
epochs = default_epochs if args["epochs"] is None else args["epochs"]
cfg = dataclasses.replace(cfg, epochs=epochs, device=args["device"])
try:  # reset the peak RSS (some kernels refuse it: the peak then includes loading)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
result = fit(model, data, train, cfg, progress=False)
if args["device"] == "cuda":
    torch.cuda.synchronize()
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
per_epoch = result.seconds / epochs
gpu = args["device"] == "cuda"
print(json.dumps({"model": args["model"], "device": args["device"], "epochs": epochs, "seconds": result.seconds,
                  "seconds_per_epoch": per_epoch, "default_epochs": default_epochs,
                  "projected_seconds_default_epochs": per_epoch * default_epochs, "peak_rss_mb": peak,
                  "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
                  "amp": cfg.amp and gpu, "final_loss": result.losses[-1] if result.losses else None,
                  "train_pairs": int(train.shape[0]), "threads": torch.get_num_threads(),
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def _inputs():
    """``(dataset, feature file)``, or skip saying what is missing."""
    dataset, features = _dataset(), _feature_file()
    if dataset is None or features is None:
        pytest.skip("needs DBP15K zh_en ($PSQE_DATA or ../shared/data) and its R2 feature file ($PSQE_BENCH_FEATURES)")
    return dataset, features


def _run(dataset, features, model: str, device: str = "cpu", **extra) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    args = {"dataset": str(dataset), "features": str(features), "model": model, "device": device,
            "epochs": EPOCHS[model] if device == "cpu" else CUDA_EPOCHS, **extra}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{model} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if os.environ.get("PSQE_BENCH_RECORD"):  # each run's numbers as soon as it ends (a killed session writes no JSON)
        with open(os.environ["PSQE_BENCH_RECORD"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"args": {k: v for k, v in args.items() if k != "dataset"}, **result}) + "\n")
    return result


@pytest.mark.big
@pytest.mark.parametrize("model", list(EPOCHS))
@pytest.mark.parametrize("device", DEVICES)
def test_aligner_epoch_time_dbp15k(benchmark, model, device):
    dataset, features = _inputs()
    benchmark.group = f"aligner training on DBP15K zh_en R2, 4,500 gold pairs, {device} (fresh process)"
    result = pedantic(benchmark, _run, args=(dataset, features, model, device), rounds=1)
    record_machine(benchmark, dataset=str(dataset), features=str(features), **result)
    assert result["seconds_per_epoch"] > 0


@pytest.mark.big
@pytest.mark.parametrize("impl", ["psqe", "full-pass"])
@pytest.mark.parametrize("model", ["meaformer", "mclea", "pcmea"])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_rows(benchmark, model, impl, device):
    dataset, features = _inputs()
    benchmark.group = f"{model} on DBP15K zh_en R2, 1,000 pairs, {device}: batch rows vs full pass (fresh process)"
    result = pedantic(benchmark, _run, args=(dataset, features, model, device),
                      kwargs={"pairs": 1000, "rows_per_batch": impl == "psqe"}, rounds=1)
    record_machine(benchmark, dataset=str(dataset), features=str(features), **result)
    assert result["train_pairs"] == 1000 and result["seconds_per_epoch"] > 0


#: Many batches in one step: MCLEA on the 4,500 legacy pairs (9 batches of 512), PCMEA in its second half
#: on 1,000 pairs plus 10,000 pseudo-links (22 batches; its ja_en R2 run at 1,000 epochs ended with 11,032).
#: MEAformer (a step per batch, 1,000 pairs): one batch a step, where the views must cost nothing.
MANY_BATCHES = {"mclea": {}, "pcmea": {"pairs": 1000, "pseudo": 10000, "config": {"momentum_start": 10**6}},
                "meaformer": {"pairs": 1000}}


@pytest.mark.big
@pytest.mark.parametrize("impl", ["psqe", "stop-24", "stop-23"])
@pytest.mark.parametrize("model", list(MANY_BATCHES))
def test_many_batches(benchmark, model, impl):
    """This step (``psqe``) against the step of stop 24 (MCLEA's IAL target a product of its own:
    ``stop-24``, MCLEA only, where it differs) and the one before stop 24 (per-batch indexing, separate
    terms: ``stop-23``), side by side."""
    if impl == "stop-24" and model != "mclea":
        pytest.skip(f"{model}'s step is stop 24's (PCMEA's second half contrasts the joint with the momentum encoder)")
    dataset, features = _inputs()
    benchmark.group = f"{model} on DBP15K zh_en R2, cpu: this step vs earlier ones"
    before = None if impl == "psqe" else impl.replace("-", "")
    result = pedantic(benchmark, _run, args=(dataset, features, model, "cpu"),
                      kwargs={**MANY_BATCHES[model], "before": before}, rounds=1)
    record_machine(benchmark, dataset=str(dataset), features=str(features), **result)
    assert result["seconds_per_epoch"] > 0


@pytest.mark.big
@pytest.mark.cuda
def test_meaformer_schedule_cuda(benchmark):
    dataset, features = _inputs()
    benchmark.group = "MEAformer's whole schedule (250 epochs) on DBP15K zh_en R2, 4,500 gold pairs, cuda"
    result = pedantic(benchmark, _run, args=(dataset, features, "meaformer", "cuda"), kwargs={"epochs": None},
                      rounds=1)
    record_machine(benchmark, dataset=str(dataset), features=str(features), **result)
    assert result["epochs"] == result["default_epochs"] == 250 and result["seconds"] > 0
