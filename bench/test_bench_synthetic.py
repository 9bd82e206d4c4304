"""The synthetic pair generator: time and peak memory from 10k to 1M entities per side.

Target (issue 3): 1M entities per side in under a minute on a 2-core CPU.
Each size runs in a fresh process so its peak RSS (``VmHWM``) is its own;
the timed callable is the whole child (interpreter start and imports
included, reported separately as ``seconds_make_pair``).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _common import pedantic, record_machine

_CHILD = r"""
import json, sys, time
import torch
from psqe.data.synthetic import make_pair
n = int(sys.argv[1])
t = time.perf_counter()
pair = make_pair(n, seed=0)
seconds = time.perf_counter() - t
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps({"seconds_make_pair": seconds, "peak_rss_mb": peak, "links": int(pair.links.shape[0]),
                  "triples": [pair.kg1.num_triples, pair.kg2.num_triples], "threads": torch.get_num_threads()}))
"""


def _run(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n", [
    10_000, 100_000,
    pytest.param(1_000_000, marks=pytest.mark.big),
])
def test_make_pair_scaling(benchmark, n):
    benchmark.group = "synthetic make_pair (fresh process per round)"
    result = pedantic(benchmark, _run, args=(n,), rounds=1 if n >= 1_000_000 else 3)
    record_machine(benchmark, entities_per_side=n, **result)
    assert result["links"] == round(0.7 * n)
    if n >= 1_000_000:
        assert result["seconds_make_pair"] < 60, result
