"""PSQE next to the Type I / Type II baselines: quality side by side and where the seeds fall.

``compare_generators`` runs all three generators on one pair (the baselines
reuse PSQE's config: budget, weights, device), ``distribution_panels`` gives
the fraction of seed entities per Stage I cluster and per degree bucket
(``floor(log2(1 + degree))``) for each generator beside all entities' own,
and ``write_distribution_plot`` saves them as an SVG (atomically).

>>> from psqe.data.synthetic import make_pair
>>> from psqe.seeds.config import PSQEConfig
>>> from psqe.seeds.compare import compare_generators
>>> pair = make_pair(600, seed=0)
>>> result, seeds, quality = compare_generators(pair, PSQEConfig(budget=100).replace(tuning={"epochs": 2}))
>>> sorted(quality), seeds["type1"].shape
(['psqe', 'type1', 'type2'], torch.Size([100, 2]))
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..data.kg import KGPair
from ..features._util import atomic_write
from ..plot import grouped_bars_svg
from . import metrics
from .config import PSQEConfig
from .pipeline import SeedResult, baseline_seeds, generate_seeds, seed_quality

log = logging.getLogger(__name__)

GENERATORS = ("psqe", "type1", "type2")
LABELS = {"psqe": "PSQE", "type1": "Type I (UVP)", "type2": "Type II (multimodal)"}


def compare_generators(pair: KGPair, config: PSQEConfig | None = None,
                       result: SeedResult | None = None) -> tuple[SeedResult, dict[str, torch.Tensor], dict[str, dict]]:
    """Seeds of PSQE, Type I and Type II on ``pair`` with their quality and timings.

    Returns ``(psqe_result, {generator: seeds [S, 2] global}, {generator: measures})``;
    the measures include ``seconds``. Pass ``result`` to reuse a finished PSQE run.
    """
    cfg = config or PSQEConfig()
    start = time.perf_counter()
    if result is None:
        result = generate_seeds(pair.kg1, pair.kg2, cfg, links=pair.links)
    seconds = {"psqe": sum(result.timings.values()) if result.timings else time.perf_counter() - start}
    seeds = {"psqe": result.seeds}
    for kind in ("type1", "type2"):
        start = time.perf_counter()
        seeds[kind] = baseline_seeds(pair.kg1, pair.kg2, kind, cfg)
        seconds[kind] = time.perf_counter() - start
    quality = {}
    for name, s in seeds.items():
        quality[name] = {**seed_quality(pair, s, result.clusters), "seconds": round(seconds[name], 3)}
        log.info("%-22s %s", LABELS[name], {k: round(v, 3) for k, v in quality[name].items()})
    return result, seeds, quality


def distribution_panels(pair: KGPair, seeds: dict[str, torch.Tensor], clusters: tuple[torch.Tensor, torch.Tensor] | None):
    """Panels for :func:`psqe.plot.grouped_bars_svg`: fractions per cluster and per degree bucket."""
    n1 = pair.kg1.num_entities
    buckets = metrics.degree_buckets(torch.cat([pair.kg1.degrees(), pair.kg2.degrees()]))
    groupings = [("degree bucket floor(log2(1 + degree))", buckets)]
    if clusters is not None:
        groupings.insert(0, ("Stage I cluster", torch.cat(list(clusters))))
    panels = []
    for label, labels in groupings:
        k = int(labels.max()) + 1
        series = {"all entities": metrics.distribution(labels, None, k).tolist()}
        for name, s in seeds.items():
            local = torch.cat([pair.kg1.to_local(s[:, 0]).unique(), pair.kg2.to_local(s[:, 1]).unique() + n1])
            series[LABELS.get(name, name)] = metrics.distribution(labels, local, k).tolist()
        panels.append((label, [str(i) for i in range(k)], series))
    return panels


def write_distribution_plot(path: str | Path, pair: KGPair, seeds: dict[str, torch.Tensor],
                            clusters: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Save the seed-distribution figure (SVG) to ``path``, atomically."""
    title = f"Where the seeds fall: {pair.name or 'pair'} ({', '.join(f'{LABELS.get(k, k)} {v.shape[0]}' for k, v in seeds.items())})"
    svg = grouped_bars_svg(distribution_panels(pair, seeds, clusters), title=title)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(svg, encoding="utf-8"))
