"""``psqe.generate_seeds`` on DBP15K zh_en with the paper's settings: time per stage and peak memory.

Issue 4's target: at most 180 s on the 2-core CPU machine with 300 Stage II
epochs (the paper: 75 s + 502 s + 5 s on an A100). Input: the real zh_en
graphs (19,388 + 19,572 entities) from ``../shared/data`` (or ``$PSQE_DATA``),
default :class:`psqe.PSQEConfig` (budget 1000, K = 5, 300 epochs, batch 2000),
no gold links given (the production call; seed precision per stage is
computed afterwards, untimed, and stored in ``extra_info``).

Features, said in every record (``features``):

- the real R2 feature set when a file from ``psqe features DBP15K/zh_en
  --setting R2 --out F`` is found (``$PSQE_BENCH_FEATURES`` or
  ``~/.cache/psqe/bench/DBP15K-zh_en-R2.safetensors``): SIMULATED visual
  2048-d (R2 uses the gold links to simulate images) and relation 384-d text
  features; zh_en has no attribute names, so that modality is absent;
- otherwise random stand-in features of the same shapes (seeded). Stage II's
  cost depends only on shapes and the Stage I seeds' receptive field, but
  Stage I/III work and all seed counts differ from real features.

Each case runs in a fresh process (its own threads, environment and
``VmHWM``); the timed value is that process, the pipeline's own seconds are
in ``extra_info`` (``seconds_generate_seeds``, per stage ``timings``, Stage II
training alone ``seconds_stage2_training`` and ``seconds_per_epoch``,
``cpu_seconds``: process CPU time of the call), with ``peak_rss_mb``
(``VmHWM`` reset after loading, so: the call's peak resident set, inputs
included). Cases (``impl``):

- ``psqe``: torch's default threads (2 here);
- ``psqe-bf16``: ``TuningConfig(visual_precision="bfloat16")``: the visual
  encoder's products in bfloat16 (AMX on this CPU), not the paper's setting;
- ``psqe-passive``: the same with ``OMP_WAIT_POLICY=PASSIVE``: on a shared
  machine, OpenMP threads that spin while waiting for a core another job
  holds make 2 threads slower than 1 (measured with one other job running:
  2.7 s per epoch active, 1.3 s passive, 1.3 s with 1 thread);
- ``psqe-1thread``: ``torch.set_num_threads(1)``;
- ``psqe-torch-gat``: ``PSQE_GAT_KERNEL=off``: Stage II's attention layers
  through torch sparse ops instead of the compiled layer kernels
  (:mod:`psqe.seeds.attention_layer`), the path before them.

The full 300 epochs run only with ``--bench-big`` (several minutes each);
the normal run times ``SHORT_EPOCHS`` epochs and projects 300 from the
measured per-epoch time (``projected_seconds_300_epochs``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _common import pedantic, record_machine

import psqe

EPOCHS = 300
SHORT_EPOCHS = 5
TARGET_SECONDS = 180.0
_ROOT = Path(psqe.__file__).resolve().parents[1]


def _dataset() -> Path | None:
    for root in (os.environ.get("PSQE_DATA"), _ROOT.parent / "shared" / "data"):
        if root and (Path(root) / "DBP15K" / "zh_en" / "triples_1").is_file():
            return Path(root) / "DBP15K" / "zh_en"
    return None


def _feature_file() -> Path | None:
    for path in (os.environ.get("PSQE_BENCH_FEATURES"), "~/.cache/psqe/bench/DBP15K-zh_en-R2.safetensors"):
        if path and Path(path).expanduser().is_file():
            return Path(path).expanduser()
    return None


_CHILD = r"""
import json, os, sys, time
import torch
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
import psqe
from psqe.seeds import stage2_train

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")

pair = psqe.load_dataset(args["dataset"])
kg1, kg2 = pair.kg1, pair.kg2
if args["features"]:
    from psqe.features import load_feature_set
    load_feature_set(pair, args["features"])
    source = f"R2 feature file {args['features']} (visual SIMULATED from gold links; relation text)"
else:
    g = torch.Generator().manual_seed(0)
    for kg in (kg1, kg2):
        kg.set_feature("visual", torch.randn(kg.num_entities, 2048, generator=g).abs_())
        kg.set_feature("relation", torch.randn(kg.num_entities, 384, generator=g))
    source = "random stand-in features of R2's shapes (visual 2048-d, relation 384-d, no attribute)"
cfg = psqe.PSQEConfig().replace(tuning={"epochs": args["epochs"], **args["tuning"]})

fit_seconds = []
_fit = stage2_train.fit
def timed_fit(*a, **k):
    t = time.perf_counter()
    out = _fit(*a, **k)
    fit_seconds.append(time.perf_counter() - t)
    return out
stage2_train.fit = timed_fit
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    peak_reset = True
except OSError:
    peak_reset = False
rss_before = status_mb("VmRSS")
load_before = os.getloadavg()[0]
cpu = time.process_time()
t = time.perf_counter()
result = psqe.generate_seeds(kg1, kg2, cfg)
seconds = time.perf_counter() - t
cpu = time.process_time() - cpu
peak = status_mb("VmHWM")
quality = {}
if pair.links is not None:  # precision against the gold links (global ids), untimed
    gold = set(map(tuple, pair.links.tolist()))
    for name, seeds in result.stages.items():
        hits = sum(tuple(p) in gold for p in seeds.tolist())
        quality[name] = {"count": int(seeds.shape[0]), "precision": round(hits / max(seeds.shape[0], 1), 4)}
per_epoch = fit_seconds[0] / max(args["epochs"], 1) if fit_seconds else float("nan")
print(json.dumps({
    "features": source, "epochs": args["epochs"], "threads": torch.get_num_threads(),
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "tuning_overrides": args["tuning"],
    "seconds_generate_seeds": seconds, "cpu_seconds": cpu, "timings": result.timings,
    "seconds_stage2_training": fit_seconds[0] if fit_seconds else None, "seconds_per_epoch": per_epoch,
    "projected_seconds_300_epochs": seconds + (300 - args["epochs"]) * per_epoch,
    "peak_rss_mb": peak, "rss_before_call_mb": rss_before, "peak_reset": peak_reset,
    "loadavg_1m_child_start": load_before, "seeds": int(result.seeds.shape[0]), "quality": quality,
}))
"""

CASES = {  # impl -> (threads, extra environment, TuningConfig overrides)
    "psqe": (None, {}, {}),
    "psqe-bf16": (None, {}, {"visual_precision": "bfloat16"}),
    "psqe-passive": (None, {"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "psqe-1thread": (1, {}, {}),
    "psqe-torch-gat": (None, {"PSQE_GAT_KERNEL": "off"}, {}),
}


def _run(dataset: Path, features: Path | None, epochs: int, impl: str) -> dict:
    threads, extra_env, tuning = CASES[impl]
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    args = {"dataset": str(dataset), "features": str(features) if features else None, "epochs": epochs,
            "threads": threads, "tuning": tuning}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"generate_seeds child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _case(benchmark, impl: str, epochs: int) -> dict:
    dataset = _dataset()
    if dataset is None:
        pytest.skip("DBP15K zh_en not found under $PSQE_DATA or ../shared/data (needs DBP15K/zh_en/triples_1)")
    features = _feature_file()
    benchmark.group = f"generate_seeds DBP15K zh_en, {epochs} Stage II epochs (fresh process)"
    result = pedantic(benchmark, _run, args=(dataset, features, epochs, impl), rounds=1)
    record_machine(benchmark, dataset=str(dataset), target_seconds=TARGET_SECONDS, **result)
    assert result["seeds"] > 0
    return result


@pytest.mark.parametrize("impl", ["psqe", "psqe-bf16"])
def test_generate_seeds_zh_en_short(benchmark, impl):
    """A few epochs: per-stage times and the per-epoch cost, projected to 300 epochs."""
    _case(benchmark, impl, SHORT_EPOCHS)


@pytest.mark.big
@pytest.mark.parametrize("impl", list(CASES))
def test_generate_seeds_zh_en_300_epochs(benchmark, impl):
    """The paper's settings: 300 epochs. The 180 s target is reported, not asserted:
    on this shared machine the time depends on other jobs' load (``loadavg`` in ``extra_info``)."""
    result = _case(benchmark, impl, EPOCHS)
    benchmark.extra_info["meets_target"] = result["seconds_generate_seeds"] <= TARGET_SECONDS
