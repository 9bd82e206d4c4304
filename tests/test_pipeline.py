"""generate_seeds end to end on a small planted pair (seconds on 2 cores)."""
from __future__ import annotations

import pytest
import torch

import psqe
from psqe.data import KnowledgeGraph

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


def planted_pair(n: int = 600, d: int = 32, seed: int = 0):
    """kg2 is a relabelled copy of kg1 (same edges), features = shared latent + noise."""
    g = torch.Generator().manual_seed(seed)
    heads = torch.randint(0, n, (4 * n,), generator=g)
    tails = torch.randint(0, n, (4 * n,), generator=g)
    rel = torch.randint(0, 5, (4 * n,), generator=g)
    perm = torch.randperm(n, generator=g)  # kg1 entity i is kg2 entity perm[i]
    latent = {m: torch.randn(n, d, generator=g) for m in ("visual", "relation")}
    noise = {"visual": 0.9, "relation": 1.2}
    kg1 = KnowledgeGraph(torch.arange(n), [f"a{i}" for i in range(n)], torch.stack([heads, rel, tails], 1))
    kg2 = KnowledgeGraph(torch.arange(n, 2 * n), [f"b{i}" for i in range(n)],
                         torch.stack([perm[heads] + n, rel, perm[tails] + n], 1))
    for m, z in latent.items():
        kg1.set_feature(m, z + noise[m] * torch.randn(n, d, generator=g))
        f2 = torch.empty(n, d)
        f2[perm] = z + noise[m] * torch.randn(n, d, generator=g)
        kg2.set_feature(m, f2)
    links = torch.stack([torch.arange(n), perm + n], 1)
    return kg1, kg2, links


@pytest.fixture(scope="module")
def pair():
    return planted_pair()


def small_config(**kw):
    return psqe.PSQEConfig(budget=100, n_clusters=3, eta=0.5, **kw).replace(tuning={"epochs": 20, "batch_size": 64})


def test_generate_seeds_runs_all_stages_with_quality(pair):
    kg1, kg2, links = pair
    res = psqe.generate_seeds(kg1, kg2, small_config(), links=links)
    assert set(res.stages) >= {"stage1", "stage2", "stage3"} and set(res.timings) == {"stage1", "stage2", "stage3"}
    assert res.weights == pytest.approx({"visual": 0.8 / 0.9, "relation": 0.1 / 0.9})  # no attributes: renormalised
    s1, final = res.quality["stage1"], res.quality["stage3"]
    assert s1["count"] <= 100 and s1["precision"] > 0.6
    assert final["count"] == res.seeds.shape[0] and final["precision"] > 0.6
    # Seeds are one-to-one global ids of the right graphs.
    assert res.seeds[:, 0].unique().numel() == res.seeds.shape[0] and bool((res.seeds[:, 1] >= 600).all())
    # MIC only ever removes seeds.
    assert res.quality["stage2"]["count"] <= res.quality["stage2_before_mic"]["count"]
    # On this pair (measured: 0.92 -> 0.985) MIC raises precision, and Stage III
    # grows the seed set (133 -> 330) without losing it.
    assert res.quality["stage2"]["precision"] > res.quality["stage2_before_mic"]["precision"]
    assert final["count"] > res.quality["stage2"]["count"]


def test_deterministic_and_ablations(pair):
    kg1, kg2, links = pair
    a = psqe.generate_seeds(kg1, kg2, small_config())
    b = psqe.generate_seeds(kg1, kg2, small_config())
    assert torch.equal(a.seeds, b.seeds)
    only1 = psqe.generate_seeds(kg1, kg2, small_config(use_stage2=False))
    assert set(only1.stages) == {"stage1"} and torch.equal(only1.seeds, a.stages["stage1"])
    no_mic = psqe.generate_seeds(kg1, kg2, small_config(use_mic=False, use_stage3=False))
    assert torch.equal(no_mic.seeds, a.stages["stage2_before_mic"])


def test_baselines(pair):
    kg1, kg2, links = pair
    cfg = small_config()
    t1 = psqe.baseline_seeds(kg1, kg2, "type1", cfg)
    t2 = psqe.baseline_seeds(kg1, kg2, "type2", cfg)
    gold = set(map(tuple, links.tolist()))
    p1 = sum(tuple(s) in gold for s in t1.tolist()) / 100
    p2 = sum(tuple(s) in gold for s in t2.tolist()) / 100
    assert t1.shape == t2.shape == (100, 2) and p2 >= p1 - 0.05 and p1 > 0.5
    with pytest.raises(ValueError, match="type1' or 'type2"):
        psqe.baseline_seeds(kg1, kg2, "type3", cfg)


def test_bad_input(pair):
    kg1, kg2, _ = pair
    with pytest.raises(ValueError, match="exceeds the smaller graph"):
        psqe.generate_seeds(kg1, kg2, psqe.PSQEConfig(budget=10_000))
    empty = KnowledgeGraph(torch.arange(5000, 5003), ["x", "y", "z"], torch.empty(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="none of the weighted modalities"):
        psqe.generate_seeds(kg1, empty, psqe.PSQEConfig(budget=2))
    odd = KnowledgeGraph(torch.arange(6000, 6600), [f"c{i}" for i in range(600)], torch.empty(0, 3, dtype=torch.long))
    odd.set_feature("visual", torch.randn(600, 7))
    with pytest.raises(ValueError, match="feature sizes differ"):
        psqe.generate_seeds(kg1, odd, psqe.PSQEConfig(budget=10))
    with pytest.raises(ValueError, match="NaN/inf"):
        odd.set_feature("visual", torch.full((600, 7), float("nan")))


def test_fixed_size_cuts_to_the_budget_keeping_cluster_shares(pair, caplog):
    """fixed_size (Table 6): exactly `budget` of the full output, each Stage I cluster its share of it."""
    import logging

    from psqe.seeds.fixed_size import cluster_quotas

    kg1, kg2, links = pair
    full = psqe.generate_seeds(kg1, kg2, small_config(), links=links)
    cut = psqe.generate_seeds(kg1, kg2, small_config(fixed_size=True), links=links)
    before = full.seeds
    assert before.shape[0] > 100 and cut.seeds.shape == (100, 2)
    assert torch.equal(cut.stages["stage3"], before) and torch.equal(cut.stages["fixed_size"], cut.seeds)
    rows = {tuple(r) for r in before.tolist()}
    assert all(tuple(r) in rows for r in cut.seeds.tolist())
    order = [tuple(r) for r in before.tolist()]  # the cut keeps the pipeline's order
    assert [order.index(tuple(r)) for r in cut.seeds.tolist()] == sorted(order.index(tuple(r)) for r in cut.seeds.tolist())
    labels1 = full.clusters[0]
    cluster_of = lambda s: labels1[kg1.to_local(s[:, 0])]  # noqa: E731
    k = int(labels1.max()) + 1
    expected = cluster_quotas(torch.bincount(cluster_of(before), minlength=k), 100)
    assert torch.equal(torch.bincount(cluster_of(cut.seeds), minlength=k), expected)
    # the dropped pairs are the less certain ones (measured: 1.0 after the cut, 0.994 before it)
    assert cut.quality["fixed_size"]["precision"] > full.quality["stage3"]["precision"]
    # fewer seeds than the budget: all kept, and said
    with caplog.at_level(logging.WARNING, logger="psqe"):
        few = psqe.generate_seeds(kg1, kg2, small_config(fixed_size=True, use_stage2=False))
    assert torch.equal(few.seeds, few.stages["stage1"]) and few.seeds.shape[0] < 100
    assert f"fixed_size: PSQE made {few.seeds.shape[0]} seeds, fewer than the budget 100; all are kept" in caplog.text


def test_keep_budget_against_brute_force():
    from psqe.seeds.fixed_size import cluster_quotas, keep_budget

    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        s = int(torch.randint(1, 60, (1,), generator=g))
        cluster = torch.randint(0, 5, (s,), generator=g)
        score = torch.randint(0, 8, (s,), generator=g).float()  # many ties
        budget = int(torch.randint(0, s + 1, (1,), generator=g))
        kept = keep_budget(score, cluster, budget)
        assert kept.numel() == budget and torch.equal(kept, kept.sort().values) and kept.unique().numel() == budget
        counts = torch.bincount(cluster)
        quotas = cluster_quotas(counts, budget)
        assert int(quotas.sum()) == budget and bool((quotas <= counts).all())
        # largest remainder: every quota is its exact share rounded down or up
        share = counts.double() * budget / s
        assert bool((quotas >= share.floor()).all()) and bool((quotas <= share.floor() + 1).all())
        for c in range(counts.numel()):
            members = (cluster == c).nonzero().squeeze(1).tolist()
            mine = [i for i in kept.tolist() if i in members]
            assert len(mine) == int(quotas[c])
            # brute force: the quota best by (score desc, index asc)
            best = sorted(members, key=lambda i: (-float(score[i]), i))[: int(quotas[c])]
            assert sorted(best) == mine
    with pytest.raises(ValueError, match=r"budget must be in \[0, 3\]"):
        cluster_quotas(torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="score and cluster must be"):
        keep_budget(torch.zeros(3), torch.zeros(4, dtype=torch.long), 1)


def test_fixed_size_scores_by_the_weighted_cosines():
    """The cut's agreement score is the fused inner product, i.e. the weight-squared sum of per-modality cosines."""
    from psqe.seeds.fixed_size import keep_budget
    from psqe.seeds.pipeline import _fixed_size

    g = torch.Generator().manual_seed(0)
    t1 = {m: torch.randn(40, d, generator=g) for m, d in (("visual", 6), ("relation", 3))}
    t2 = {m: torch.randn(40, d, generator=g) for m, d in (("visual", 6), ("relation", 3))}
    w = {"visual": 0.8, "relation": 0.2}
    seeds = torch.stack([torch.randperm(40, generator=g)[:30], torch.randperm(40, generator=g)[:30]], 1)
    labels1 = torch.randint(0, 3, (40,), generator=g)
    cos = torch.nn.functional.cosine_similarity
    score = sum(w[m] ** 2 * cos(t1[m][seeds[:, 0]], t2[m][seeds[:, 1]]) for m in w)
    expected = seeds[keep_budget(score, labels1[seeds[:, 0]], 11)]
    assert torch.equal(_fixed_size(seeds, (t1, t2), w, labels1, 11), expected)
    assert torch.equal(_fixed_size(seeds, (t1, t2), w, labels1, 30), seeds)
