"""Label-free confidences for cutting PSQE's output to the budget (``PSQEConfig.fixed_size``, Table 6).

For each committed PSQE output (a reproduce report's ``seeds/psqe.tsv`` and
``psqe_clusters.pt``) and each candidate rule, the precision of the
``--budget`` seeds the rule keeps, with each Stage I cluster's share (as
``psqe.seeds.fixed_size.keep_budget`` cuts) and without. Rules: a pair's
cosine, its margin over the best other partner in the whole graph, CSLS
(k=10) and its margin in MIC's seed x seed matrix, on the fused vectors and
on each modality; neighbour agreement (seed pairs among the pair's
neighbours), alone, per neighbour and with the MIC margin to break ties; and
the implemented cut. The rule was chosen on the first dataset named and is
then read on the others. Labels are read only to score the rules.

Then, by degree: each seed's precision per degree bucket of its kg1 entity
(``floor(log2(1 + degree))``) and neighbour agreement, and a *degree-balanced*
cut: per (Stage I cluster, degree bucket) a quota in proportion to the kg1
entities there, filled among the seeds with agreement >= 2 by the implemented
ranking (a stratum short of seeds gives its share to the others), with its
precision, degree TV and edge coverage beside the implemented cut's.
``--write-balanced DIR`` writes it as ``DIR/<dataset>-balanced.tsv`` to train
an aligner on (``psqe align ... --seeds``).

Run from the repository root::

    python bench/fixed_size_rules.py --root ../shared/data \\
        DBP15K/zh_en=zh_en_R1.safetensors=bench/results/seeds/DBP15K-zh_en-R1 ...
"""
from __future__ import annotations

import argparse
import logging

import torch
from torch.nn.functional import normalize

import psqe
from psqe.features import load_feature_set
from psqe.seeds.fixed_size import keep_budget, mic_margin, neighbour_agreement
from psqe.seeds.metrics import coverage, degree_buckets
from psqe.seeds.fusion import fuse, weighted_pair_tables
from psqe.seeds.pipeline import _fixed_size, modality_tables


def _topk(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [(a[i:i + 4096] @ b.T).topk(k, dim=1) for i in range(0, a.shape[0], 4096)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def similarity_rules(a_all: torch.Tensor, b_all: torch.Tensor, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per seed: cosine, margin over the best other partner (graph-wide), CSLS, MIC-matrix margin."""
    a, b = a_all[seeds[:, 0]], b_all[seeds[:, 1]]
    cos = (a * b).sum(1)
    vr, ir = _topk(a, b_all, 11)
    vc, ic = _topk(b, a_all, 11)
    other_r = torch.where(ir[:, 0] == seeds[:, 1], vr[:, 1], vr[:, 0])
    other_c = torch.where(ic[:, 0] == seeds[:, 0], vc[:, 1], vc[:, 0])
    return {"cos": cos, "margin": cos - torch.maximum(other_r, other_c),
            "csls": 2 * cos - vr[:, :10].mean(1) - vc[:, :10].mean(1), "mic_margin": mic_margin(a, b)}


def filled_quotas(weight: torch.Tensor, available: torch.Tensor, budget: int) -> torch.Tensor:
    """``budget`` split over strata in proportion to ``weight``, none above its ``available``: a full
    stratum's share goes to the others in proportion again (largest remainder, ties to the lower stratum)."""
    quota = torch.zeros_like(available)
    while (left := budget - int(quota.sum())) > 0:
        open_ = (quota < available) & (weight > 0)
        if not bool(open_.any()):
            break
        share = torch.where(open_, weight, torch.zeros_like(weight)).double() * left / float(weight[open_].sum())
        extra = share.floor().long()
        for s in sorted(open_.nonzero().squeeze(1).tolist(), key=lambda s: (-float(share[s] - extra[s]), s)):
            if int(extra.sum()) == left:
                break
            extra[s] += 1
        quota = torch.minimum(quota + extra, available)
    return quota


def balanced_cut(rank: torch.Tensor, stratum: torch.Tensor, weight: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices (ascending) kept: per stratum its :func:`filled_quotas` share, the lowest ``rank`` first."""
    quota = filled_quotas(weight, torch.bincount(stratum, minlength=weight.numel()), budget)
    kept = [m[torch.sort(rank[m]).indices[: int(quota[s])]] for s in range(weight.numel())
            if (m := (stratum == s).nonzero().squeeze(1)).numel()]
    return torch.sort(torch.cat(kept)).values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("items", nargs="+", help="DATASET=FEATURE_FILE=SEED_FOLDER")
    parser.add_argument("--root", required=True)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--write-balanced", metavar="DIR", help="write each degree-balanced cut here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    for item in args.items:
        dataset, features, folder = item.split("=")
        pair = psqe.load_dataset(dataset, root=args.root)
        load_feature_set(pair, features)
        t1, t2, w = modality_tables(pair.kg1, pair.kg2, psqe.PSQEConfig().weights, "cpu")
        rows = torch.tensor([list(map(int, line.split())) for line in open(f"{folder}/psqe.tsv") if line.strip()])
        seeds = torch.stack([pair.kg1.to_local(rows[:, 0]), pair.kg2.to_local(rows[:, 1])], 1)
        gold = set(map(tuple, pair.links.tolist()))
        correct = torch.tensor([tuple(r) in gold for r in rows.tolist()])
        labels1 = torch.load(f"{folder}/psqe_clusters.pt")[0]
        cluster = labels1[seeds[:, 0]]
        print(f"{dataset} ({features}): {len(rows)} PSQE seeds at precision {correct.float().mean():.3f}; "
              f"modalities {', '.join(w)}; keep {args.budget}")
        print(f"  {'rule':34s} {'per cluster':>11s} {'global':>7s}")

        def show(name: str, score: torch.Tensor, tiebreak: torch.Tensor | None = None) -> None:
            kept = keep_budget(score, cluster, args.budget, tiebreak)
            order = torch.arange(score.numel())
            if tiebreak is not None:
                order = torch.sort(-tiebreak, stable=True).indices
            top = order[torch.sort(-score[order].double(), stable=True).indices][: args.budget]
            print(f"  {name:34s} {correct[kept].float().mean():11.3f} {correct[top].float().mean():7.3f}")

        tables = {"fused": (fuse(t1, w), fuse(t2, w))}
        tables.update({m: (normalize(t1[m], dim=1), normalize(t2[m], dim=1)) for m in w})
        for source, (a, b) in tables.items():
            for name, score in similarity_rules(a, b, seeds).items():
                show(f"{source} {name}", score)
        nb1, nb2 = pair.kg1.neighbours(), pair.kg2.neighbours()
        agreement = neighbour_agreement(seeds, nb1, nb2)
        degree = torch.minimum(pair.kg1.degrees()[seeds[:, 0]], pair.kg2.degrees()[seeds[:, 1]]).clamp(min=1)
        left, right = weighted_pair_tables({m: t1[m][seeds[:, 0]] for m in w}, {m: t2[m][seeds[:, 1]] for m in w}, w)
        margin = mic_margin(left, right)
        show("neighbour agreement", agreement.double())
        show("neighbour agreement / degree", agreement / degree)
        show("neighbour agreement, MIC margin", agreement.double(), margin)
        by_count = [f"{c}: {int((agreement == c).sum())} at {correct[agreement == c].float().mean():.3f}" for c in range(5)]
        print(f"  precision by neighbour agreement: {'; '.join(by_count)}; >= 5: {int((agreement >= 5).sum())} at "
              f"{correct[agreement >= 5].float().mean():.3f}")
        cut = _fixed_size(seeds, (t1, t2), w, labels1, args.budget, (nb1, nb2))
        kept = {tuple(r) for r in cut.tolist()}
        mask = torch.tensor([tuple(r) in kept for r in seeds.tolist()])
        print(f"  implemented cut (psqe.seeds.pipeline._fixed_size): {len(cut)} kept at precision "
              f"{correct[mask].float().mean():.3f}; PSQE's own first {args.budget}: {correct[:args.budget].float().mean():.3f}")

        d1, d2 = pair.kg1.degrees(), pair.kg2.degrees()
        bucket = degree_buckets(d1)
        for b in bucket[seeds[:, 0]].unique().tolist():
            inb = bucket[seeds[:, 0]] == b
            parts = [f"{lo}{'+' if hi > 2 else ''}: {int(m.sum())} at {correct[m].float().mean():.3f}"
                     for lo, hi in ((0, 0), (1, 1), (2, 2), (3, 1 << 30)) if (m := inb & (agreement >= lo) & (agreement <= hi)).any()]
            print(f"  degree bucket {b} ({int((bucket == b).sum())} kg1 entities): {int(inb.sum())} seeds at "
                  f"{correct[inb].float().mean():.3f}; by agreement {'; '.join(parts)}")
        order = torch.sort(-margin.double(), stable=True).indices
        order = order[torch.sort(-agreement[order].double(), stable=True).indices]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        strata = int(bucket.max()) + 1
        eligible = (agreement >= 2).nonzero().squeeze(1)
        population = torch.bincount(labels1 * strata + bucket, minlength=(int(labels1.max()) + 1) * strata)
        kept_b = eligible[balanced_cut(rank[eligible], (cluster * strata + bucket[seeds[:, 0]])[eligible], population,
                                       args.budget)]
        triples = (pair.kg1.local_triples, pair.kg2.local_triples)
        for name, idx in (("implemented cut", mask.nonzero().squeeze(1)), ("degree-balanced cut, agreement >= 2", kept_b)):
            cov = coverage(seeds[idx], *triples, d1, d2)
            print(f"  {name}: {idx.numel()} kept at precision {correct[idx].float().mean():.3f}, degree TV "
                  f"{cov['degree_tv']:.3f}, edge coverage {cov['edge_coverage']:.3f} ({eligible.numel()} with agreement >= 2)")
        if args.write_balanced:
            path = f"{args.write_balanced}/{dataset.replace('/', '-')}-balanced.tsv"
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(f"{a}\t{b}\n" for a, b in rows[kept_b].tolist())
            print(f"  wrote {path}")


if __name__ == "__main__":
    main()
