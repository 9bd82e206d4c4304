"""How much matching signal survives Stage II's visual encoder, before and after training.

Prints the precision of 1000 greedy one-to-one pairs (``greedy_seeds``)
against the gold links for: the raw visual rows, the same centred, the
visual ``Linear`` at initialisation, ``Linear`` + the graph attention at
initialisation, a plain 1-hop neighbour mean of the raw rows, and the tuned
tables after each requested number of Stage II epochs (trained on the
Stage I seeds of the default config). Used for the R2 note in
bench/results/README.md ("why PSQE does not grow the seeds in R2")::

    PYTHONPATH=. python bench/stage2_signal_probe.py /path/to/DBP15K/zh_en zh_en_R2.safetensors --epochs 0,10,50
"""
from __future__ import annotations

import argparse

import torch
from torch_geometric.utils import add_remaining_self_loops, coalesce

import psqe
from psqe.features import load_feature_set
from psqe.seeds import pipeline
from psqe.seeds.fusion import fuse
from psqe.seeds.stage1 import stage1
from psqe.seeds.stage2_model import Adjacency
from psqe.seeds.stage2_train import TuningConfig, _model, tune
from psqe.seeds.uvp import greedy_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("features")
    parser.add_argument("--epochs", default="0,10,50", help="comma-separated Stage II epoch counts")
    args = parser.parse_args()
    pair = psqe.load_dataset(args.dataset)
    load_feature_set(pair, args.features)
    cfg = psqe.PSQEConfig()
    t1, t2, w = pipeline.modality_tables(pair.kg1, pair.kg2, cfg.weights, "cpu")
    gold = set(map(tuple, pair.links_local().tolist()))
    n1 = pair.kg1.num_entities

    def precision(a: torch.Tensor, b: torch.Tensor) -> float:
        seeds = greedy_seeds(a, b, 1000, 64)
        return sum(tuple(p) in gold for p in seeds.tolist()) / max(len(seeds), 1)

    feats = {m: torch.cat([t1[m], t2[m]]) for m in w}
    x = feats["visual"]
    n = x.size(0)
    edges = coalesce(pair.union_adjacency.indices(), num_nodes=n)
    edges, _ = add_remaining_self_loops(edges, num_nodes=n)
    with torch.no_grad():
        model = _model(feats, TuningConfig())
        lin = model.linears["visual"](x)
        deg = torch.bincount(edges[1], minlength=n).float()[:, None]
        mean = torch.zeros_like(x).index_add_(0, edges[1], x[edges[0]]) / deg
        rows = {
            "raw visual": x, "raw visual, centred": x - x.mean(0), "Linear at init": lin,
            "Linear + attention at init": model.gat(lin, Adjacency.build(edges, n, n)),
            "1-hop neighbour mean of raw": mean,
        }
        for name, h in rows.items():
            print(f"{name:32s} {precision(h[:n1], h[n1:]):.3f}", flush=True)
    s1 = stage1(fuse(t1, w), fuse(t2, w), cfg.budget, cfg.n_clusters, cfg.seed).seeds
    pair_seeds = torch.stack([s1[:, 0], s1[:, 1] + n1], 1)
    for epochs in (int(e) for e in args.epochs.split(",")):
        tuned = tune(feats, pair.union_adjacency.indices(), pair_seeds, TuningConfig(epochs=epochs, log_every=0))
        fused = precision(fuse({m: h[:n1] for m, h in tuned.items()}, w), fuse({m: h[n1:] for m, h in tuned.items()}, w))
        visual = precision(tuned["visual"][:n1], tuned["visual"][n1:])
        print(f"tuned after {epochs:3d} epochs: fused {fused:.3f}, visual {visual:.3f}", flush=True)


if __name__ == "__main__":
    main()
