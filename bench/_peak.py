"""Peak-memory measurement of one op call, in a fresh Python process.

The peak is the kernel's high-water mark of the process's resident set
(``VmHWM`` in ``/proc/self/status``), read in a fresh interpreter
(``python -c``). Not ``getrusage().ru_maxrss``: that one survives
fork + exec, so a child of the pytest process starts with pytest's own peak
(measured: 6.9 GB after the greedy benchmarks' dense matrices) and every
reading below it is lost.

The child imports torch and psqe and makes a tiny warm-up call of the op
(code pages and thread pools are loaded once per process, not per call),
draws the inputs in place (no transient copy), then resets the high-water
mark to the current RSS (``echo 5 > /proc/self/clear_refs``; when that is not
allowed the readings stay an upper bound) and calls the op once. The op's
extra memory is ``VmHWM`` after the call minus ``VmRSS`` after the inputs: an
upper bound on what the call needed beyond its inputs, outputs included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psqe

_CHILD = r"""
import json, sys, time
import torch
import psqe.ops as ops

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def unit_rows(n, d, seed):
    x = torch.empty(n, d).normal_(generator=torch.Generator().manual_seed(seed))
    return x.div_(x.norm(dim=1, keepdim=True))

def call(op, a, b, p):
    if op == "topk":
        return ops.topk_similarity(a, b, p["k"])
    if op == "mic":
        return ops.mic_keep(a, b, p["both"])
    if op == "dense_mic":  # the baseline: the whole s x s matrix
        m = a @ b.T
        d = m.diagonal()
        keep = d >= m.max(1).values
        return keep & (d >= m.max(0).values) if p["both"] else keep
    raise ValueError(op)

p = json.loads(sys.argv[1])
torch.set_num_threads(p["threads"])
call(p["op"], unit_rows(64, p["d"], 0), unit_rows(64, p["d"], 1), p)  # warm-up
rss_start = status_mb("VmRSS")
a = unit_rows(p["n"], p["d"], p["seed"])
b = unit_rows(p["m"], p["d"], p["seed"] + 1)
peak_inputs, rss_inputs = status_mb("VmHWM"), status_mb("VmRSS")
reset = reset_peak()
t0 = time.perf_counter()
out = call(p["op"], a, b, p)
seconds = time.perf_counter() - t0
peak_call = status_mb("VmHWM")
print(json.dumps({
    "rss_start_mb": rss_start, "peak_after_inputs_mb": peak_inputs,
    "rss_after_inputs_mb": rss_inputs, "peak_reset": reset, "peak_after_call_mb": peak_call,
    "inputs_mb": (a.nbytes + b.nbytes) / 2**20,
    "extra_mb": peak_call - rss_inputs, "op_seconds": seconds,
}))
"""


def peak_memory(op: str, n: int, m: int, d: int, threads: int, seed: int = 0, **params) -> dict:
    """Run ``op`` once on ``[n, d]`` x ``[m, d]`` unit rows in a fresh process.

    Args:
        op: ``"topk"`` (needs ``k=``), ``"mic"`` or ``"dense_mic"`` (need ``both=``).
        n, m, d: input sizes. threads: ``torch.set_num_threads`` in the child.

    Returns:
        The child's readings in MiB (``extra_mb``: peak growth of the call
        beyond the inputs) and ``op_seconds``, plus the parameters.
    """
    args = dict(op=op, n=n, m=m, d=d, threads=threads, seed=seed, **params)
    env = dict(os.environ)
    # The child must import the same psqe (and compiled library) as we do.
    root = str(Path(psqe.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {**args, **json.loads(done.stdout.strip().splitlines()[-1])}
