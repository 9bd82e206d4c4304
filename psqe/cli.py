"""The ``psqe`` command line.

``psqe features DATASET --setting R2 --out F`` builds a benchmark feature set
offline; ``psqe seeds DATASET --features F --out DIR`` writes PSQE seeds
(TSV, int32 .npy, per-stage files, a JSON report; atomically).
``psqe info`` reports which backend runs; ``psqe demo`` runs the seed
selection core end to end on an embedded synthetic pair of two-modality
embedding tables (a planted one-to-one matching with noise that varies per
entity): unimodal greedy one-to-one seeds from the fused top-k, then the MIC
check on the weighted fusion of both modalities, with precision and timings. The full PSQE pipeline over knowledge graphs replaces this demo as
the main job once it lands.

Example (in a shell)::

    psqe demo --entities 20000 --seeds 1000 --seed 0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

import torch

from . import __version__, ops
from .matching import greedy_one_to_one

log = logging.getLogger("psqe")


def planted_pair(entities: int, dim: int, seed: int, modalities: int = 2):
    """Noisy views of one latent table, per modality; ``gold[i]`` is the row of b matching row i of a.

    Noise scales are drawn per entity (log-uniform over a factor of 8), so
    some entities are easy and many are ambiguous, as in real seed mining;
    every modality adds its own noise. Returns lists of L2-normalised tables.
    """
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(entities, dim, generator=g)
    scale = torch.exp(torch.empty(entities, 1).uniform_(0.0, 2.08, generator=g)) * 0.9
    gold = torch.randperm(entities, generator=g)
    norm = torch.nn.functional.normalize
    views_a, views_b = [], []
    for _ in range(modalities):
        b = torch.empty(entities, dim)
        a = latent + scale * torch.randn(entities, dim, generator=g)
        b[gold] = latent + scale * torch.randn(entities, dim, generator=g)
        views_a.append(norm(a, dim=1))
        views_b.append(norm(b, dim=1))
    return views_a, views_b, gold


def precision(rows: torch.Tensor, cols: torch.Tensor, gold: torch.Tensor) -> float | None:
    return round(float((gold[rows] == cols).float().mean()), 4) if rows.numel() else None


def run_demo(entities: int, dim: int, seeds: int, seed: int, device: str, weights=(0.8, 0.2)) -> dict:
    """Unimodal greedy seeds (EVA's UVP on modality 0), then MIC on the weighted fusion."""
    views_a, views_b, gold = planted_pair(entities, dim, seed, len(weights))
    views_a = [v.to(device) for v in views_a]
    views_b = [v.to(device) for v in views_b]
    gold = gold.to(device)
    t0 = time.perf_counter()
    res = greedy_one_to_one(views_a[0], views_b[0], limit=seeds, k=10)
    t1 = time.perf_counter()
    # Weighted sum of per-modality cosines = <cat(w_m a_m), cat(b_m)>.
    left = torch.cat([w * v[res.rows] for w, v in zip(weights, views_a)], dim=1)
    right = torch.cat([v[res.cols] for v in views_b], dim=1)
    keep = ops.mic_keep(left, right)
    t2 = time.perf_counter()
    return {
        "backend": ops.backend(),
        "device": device,
        "entities_per_side": entities,
        "seeds": int(res.rows.numel()),
        "precision": precision(res.rows, res.cols, gold),
        "exact_greedy": res.exact,
        "after_mic": int(keep.sum()),
        "precision_after_mic": precision(res.rows[keep], res.cols[keep], gold),
        "seconds_greedy": round(t1 - t0, 3),
        "seconds_mic": round(t2 - t1, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="psqe", description="Pseudo seeds for unsupervised multimodal entity alignment.")
    parser.add_argument("--version", action="version", version=f"psqe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="which compiled backends are available")
    demo = sub.add_parser("demo", help="seed selection on an embedded synthetic pair")
    demo.add_argument("--entities", type=int, default=20000, help="entities per side (default 20000)")
    demo.add_argument("--dim", type=int, default=64, help="feature size (default 64)")
    demo.add_argument("--seeds", type=int, default=1000, help="seed budget (default 1000)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    feats = sub.add_parser("features", help="build a benchmark feature set (R1/R2) for a dataset, offline")
    feats.add_argument("dataset", help="dataset folder, or a name such as DBP15K/zh_en with --root / PSQE_DATA")
    feats.add_argument("--setting", choices=["R0", "R1", "R2"], default="R2")
    feats.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    feats.add_argument("--root", default=None, help="data root for dataset names")
    feats.add_argument("--cache-dir", default=None, help="text-encoder cache (default $PSQE_CACHE or ~/.cache/psqe)")
    feats.add_argument("--seed", type=int, default=0)
    feats.add_argument("--device", default="cpu")
    seeds = sub.add_parser("seeds", help="PSQE seeds for a dataset with a feature file")
    seeds.add_argument("dataset", help="dataset folder, or a name with --root / PSQE_DATA")
    seeds.add_argument("--features", required=True, help="feature file from `psqe features`")
    seeds.add_argument("--out", required=True, help="output folder (seeds.tsv, seeds.npy, stage files, report.json)")
    seeds.add_argument("--root", default=None)
    seeds.add_argument("--config", default=None, help="JSON file of PSQEConfig fields")
    seeds.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    seeds.add_argument("--device", default=None, help="overrides the config's device")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "features":
        return _features(args)
    if args.command == "seeds":
        return _seeds(args, parser)
    if args.command == "info":
        report = {"version": __version__, "backend": ops.backend(), **ops.backends(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "cuda_device": torch.cuda.is_available()}
    else:
        for name in ("entities", "dim", "seeds"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device is available")
        log.info("demo: %d entities per side, d=%d, budget %d seeds, backend %s", args.entities, args.dim, args.seeds, ops.backend())
        report = run_demo(args.entities, args.dim, args.seeds, args.seed, args.device)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _features(args) -> int:
    from .data import load_dataset
    from .features import build_feature_set, save_feature_set

    pair = load_dataset(args.dataset, root=args.root)
    summary = build_feature_set(pair, args.setting, cache_dir=args.cache_dir, seed=args.seed, device=args.device)
    save_feature_set(pair, args.out, summary)
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def _seeds(args, parser) -> int:
    from .data import load_dataset
    from .features import load_feature_set
    from .seeds.config import PSQEConfig
    from .seeds.io import write_result
    from .seeds.pipeline import generate_seeds

    fields = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                fields = json.load(fh)
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--config {args.config}: {err}")
        if not isinstance(fields, dict):
            parser.error(f"--config {args.config}: expected a JSON object of PSQEConfig fields")
    for name in ("seed", "device"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    try:
        config = PSQEConfig().replace(**fields)
    except TypeError as err:
        parser.error(f"--config {args.config}: {err}")
    pair = load_dataset(args.dataset, root=args.root)
    load_feature_set(pair, args.features)
    result = generate_seeds(pair.kg1, pair.kg2, config, links=pair.links)
    write_result(result, args.out, dataclasses.asdict(config))
    log.info("wrote %d seeds to %s", result.seeds.shape[0], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
