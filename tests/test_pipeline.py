"""generate_seeds end to end on a small planted pair (seconds on 2 cores)."""
from __future__ import annotations

import pytest
import torch

import psqe
from psqe.data import KnowledgeGraph

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


def planted_pair(n: int = 600, d: int = 32, seed: int = 0, noise_scale: float = 1.0):
    """kg2 is a relabelled copy of kg1 (same edges), features = shared latent + noise."""
    g = torch.Generator().manual_seed(seed)
    heads = torch.randint(0, n, (4 * n,), generator=g)
    tails = torch.randint(0, n, (4 * n,), generator=g)
    rel = torch.randint(0, 5, (4 * n,), generator=g)
    perm = torch.randperm(n, generator=g)  # kg1 entity i is kg2 entity perm[i]
    latent = {m: torch.randn(n, d, generator=g) for m in ("visual", "relation")}
    noise = {"visual": 0.9 * noise_scale, "relation": 1.2 * noise_scale}
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
    # On this pair (measured: 0.87 -> 0.992) MIC raises precision, and Stage III
    # grows the seed set (123 -> 344) without losing it.
    assert res.quality["stage2"]["precision"] > res.quality["stage2_before_mic"]["precision"]
    assert final["count"] > res.quality["stage2"]["count"]


def test_clusters_come_back_in_the_callers_order(pair):
    """Stage I pairs entities of one cluster: read in the caller's local order, each Stage I seed's two
    labels agree (the pipeline ran on shuffled graphs; a label table left shuffled fails this)."""
    kg1, kg2, links = pair
    res = psqe.generate_seeds(kg1, kg2, small_config(use_stage2=False))
    labels1, labels2 = res.clusters
    s1 = res.stages["stage1"]
    assert s1.shape[0] > 50 and len(set(labels1.tolist())) == 3
    assert torch.equal(labels1[kg1.to_local(s1[:, 0])], labels2[kg2.to_local(s1[:, 1])])


def _tied_pair(n: int = 200, group: int = 4):
    """Entities in groups of ``group`` with one identical vector each (like same-name entities in R1); the
    gold links ``i <-> i`` join the first half of each file, as DBP15K lists its linked entities first."""
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(n // group, 8, generator=g).repeat_interleave(group, 0)
    kg1 = KnowledgeGraph(torch.arange(n), [f"a{i}" for i in range(n)], torch.zeros(0, 3, dtype=torch.long))
    kg2 = KnowledgeGraph(torch.arange(n, 2 * n), [f"b{i}" for i in range(n)], torch.zeros(0, 3, dtype=torch.long))
    kg1.set_feature("visual", vectors.clone())
    kg2.set_feature("visual", vectors.clone())
    return kg1, kg2, torch.stack([torch.arange(n // 2), torch.arange(n // 2) + n], 1)


def test_ties_do_not_read_the_files_order():
    """Exact ties go by (i, j) over shuffled graphs: in file order Type I would keep (0, 0), (1, 1), ...,
    exactly the gold links listed first; shuffled it keeps what the features support, pairs within a group."""
    kg1, kg2, links = _tied_pair()
    gold = set(map(tuple, links.tolist()))

    def precision(seeds):
        return sum(tuple(r) in gold for r in seeds.tolist()) / seeds.shape[0]

    in_file_order = psqe.baseline_seeds(kg1, kg2, "type1", psqe.PSQEConfig(budget=50, tie_order="file"))
    assert precision(in_file_order) == 1.0
    shuffled = [psqe.baseline_seeds(kg1, kg2, "type1", psqe.PSQEConfig(budget=50, seed=s)) for s in (0, 0, 1)]
    assert torch.equal(shuffled[0], shuffled[1]) and not torch.equal(shuffled[0], shuffled[2])
    for seeds in shuffled:
        assert bool(((seeds[:, 0] // 4) == ((seeds[:, 1] - 200) // 4)).all())  # the features' ties, kept
        assert precision(seeds) < 0.4  # chance: about a quarter of the pairs in half of the groups
    with pytest.raises(ValueError, match="tie_order must be 'shuffled' or 'file'"):
        psqe.PSQEConfig(tie_order="random")


def test_reordered_graph():
    kg1, _, _ = planted_pair(n=50)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    back = kg1.reordered(order)
    assert torch.equal(back.ids, kg1.ids[order]) and back.names[0] == kg1.names[int(order[0])]
    assert torch.equal(back.features["visual"], kg1.features["visual"][order])
    assert torch.equal(back.local_triples[:, [0, 2]], torch.argsort(order)[kg1.local_triples[:, [0, 2]]])
    with pytest.raises(ValueError, match="must be a permutation of range"):
        kg1.reordered(torch.zeros(50, dtype=torch.long))
    # attribute lists and presence masks move with their entities
    kg = KnowledgeGraph(torch.tensor([10, 11, 12]), ["a", "b", "c"], torch.tensor([[10, 0, 12]]),
                        attributes=[["x"], [], ["y", "z"]])
    kg.set_feature("visual", torch.eye(3), torch.tensor([True, False, True]))
    moved = kg.reordered(torch.tensor([1, 2, 0]))
    assert moved.attributes == [[], ["y", "z"], ["x"]] and moved.present["visual"].tolist() == [False, True, True]
    assert moved.features["visual"].tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]


def test_the_seed_reaches_stage2(pair, monkeypatch):
    """PSQEConfig.seed drives Stage II's init and batches too, unless tuning.seed is set; and it matters."""
    import psqe.seeds.stage2_train as stage2_train

    kg1, kg2, _ = pair
    seen, tune = [], stage2_train.tune
    monkeypatch.setattr(stage2_train, "tune", lambda *a, **kw: seen.append(a[3].seed) or tune(*a, **kw))
    runs = {seed: psqe.generate_seeds(kg1, kg2, small_config(seed=seed, use_stage3=False)) for seed in (0, 5)}
    psqe.generate_seeds(kg1, kg2, small_config(seed=5, use_stage3=False).replace(tuning={"seed": 1}))
    assert seen == [0, 5, 1]
    assert (psqe.PSQEConfig(seed=5).stage2_seed, psqe.PSQEConfig(seed=5).replace(tuning={"seed": 0}).stage2_seed) == (5, 0)
    tuned = [r.stages["stage2_tuned_global"] for r in runs.values()]
    assert not torch.equal(tuned[0], tuned[1])  # another Stage II draw: other tuned tables, other global walk
    with pytest.raises(ValueError, match="TuningConfig.seed must be None or an integer >= 0"):
        psqe.PSQEConfig().replace(tuning={"seed": -1})


def test_a_budget_too_small_for_the_clusters_is_a_clear_error(pair, caplog):
    kg1, kg2, _ = pair
    with pytest.raises(ValueError, match=r"Stage I made no seeds.*\[0, 0, 0, 0, 0\] for budget 3 and n_clusters 5"):
        psqe.generate_seeds(kg1, kg2, psqe.PSQEConfig(budget=3, n_clusters=5))
    with caplog.at_level("WARNING", logger="psqe.seeds.pipeline"):
        only1 = psqe.generate_seeds(kg1, kg2, psqe.PSQEConfig(budget=3, n_clusters=5, use_stage2=False))
    assert only1.seeds.shape == (0, 2) and "Stage III does not run" in caplog.text


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


def test_fixed_size_cuts_to_the_budget_keeping_cluster_shares(caplog):
    """fixed_size (Table 6): exactly `budget` of the full output, each Stage I cluster its share of it."""
    import logging

    from psqe.seeds.fixed_size import cluster_quotas

    kg1, kg2, links = planted_pair(noise_scale=1.2)  # noisier than `pair`, whose full output is all right
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
    # the dropped pairs are the less certain ones (measured: 1.0 after the cut, 0.893 before it)
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
        tiebreak = torch.randint(0, 3, (s,), generator=g).float() if trial % 2 else None  # ties left too
        budget = int(torch.randint(0, s + 1, (1,), generator=g))
        kept = keep_budget(score, cluster, budget, tiebreak)
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
            # brute force: the quota best by (score desc, tiebreak desc, index asc)
            second = (lambda i: -float(tiebreak[i])) if tiebreak is not None else (lambda i: 0.0)
            best = sorted(members, key=lambda i: (-float(score[i]), second(i), i))[: int(quotas[c])]
            assert sorted(best) == mine
    with pytest.raises(ValueError, match=r"budget must be in \[0, 3\]"):
        cluster_quotas(torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="score and cluster must be"):
        keep_budget(torch.zeros(3), torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="tiebreak must be"):
        keep_budget(torch.zeros(3), torch.zeros(3, dtype=torch.long), 1, torch.zeros(2))


def _csr(n: int, edges: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    nb = [sorted({v for u, v in edges if u == i} | {u for u, v in edges if v == i}) for i in range(n)]
    return torch.tensor([0] + [len(x) for x in nb]).cumsum(0), torch.tensor([v for x in nb for v in x], dtype=torch.long)


def test_neighbour_agreement_and_mic_margin_against_brute_force():
    from psqe.seeds.fixed_size import mic_margin, neighbour_agreement

    g = torch.Generator().manual_seed(5)
    for trial in range(10):
        n1, n2 = 30, 35
        e1 = [tuple(e) for e in torch.randint(0, n1, (60, 2), generator=g).tolist() if e[0] != e[1]]
        e2 = [tuple(e) for e in torch.randint(0, n2, (70, 2), generator=g).tolist() if e[0] != e[1]]
        nb1, nb2 = _csr(n1, e1), _csr(n2, e2)
        s = int(torch.randint(1, 25, (1,), generator=g))
        seeds = torch.stack([torch.randperm(n1, generator=g)[:s], torch.randperm(n2, generator=g)[:s]], 1)
        adj1 = {(u, v) for u, v in e1} | {(v, u) for u, v in e1}
        adj2 = {(u, v) for u, v in e2} | {(v, u) for u, v in e2}
        expected = [sum((a, x) in adj1 and (b, y) in adj2 for x, y in seeds.tolist()) for a, b in seeds.tolist()]
        assert neighbour_agreement(seeds, nb1, nb2).tolist() == expected, trial
        left, right = torch.randn(s, 4, generator=g), torch.randn(s, 4, generator=g)
        m = left @ right.T
        others = [max([float(m[k, j]) for j in range(s) if j != k] + [float(m[i, k]) for i in range(s) if i != k],
                      default=float("-inf")) for k in range(s)]
        torch.testing.assert_close(mic_margin(left, right, chunk=7), m.diag() - torch.tensor(others))
    with pytest.raises(ValueError, match="local indices below 3 and 3"):
        neighbour_agreement(torch.tensor([[3, 0]]), _csr(3, []), _csr(3, []))


def test_fixed_size_ranks_by_neighbour_agreement_then_mic_margin():
    """The cut keeps, per Stage I cluster, the seeds with the most seed pairs among their neighbours, and
    among equal counts the largest margin in MIC's matrix (weighted per-modality cosines)."""
    from psqe.seeds.fixed_size import keep_budget, mic_margin, neighbour_agreement
    from psqe.seeds.pipeline import _fixed_size

    g = torch.Generator().manual_seed(0)
    t1 = {m: torch.randn(40, d, generator=g) for m, d in (("visual", 6), ("relation", 3))}
    t2 = {m: torch.randn(40, d, generator=g) for m, d in (("visual", 6), ("relation", 3))}
    w = {"visual": 0.8, "relation": 0.2}
    seeds = torch.stack([torch.randperm(40, generator=g)[:30], torch.randperm(40, generator=g)[:30]], 1)
    labels1 = torch.randint(0, 3, (40,), generator=g)
    nb = (_csr(40, [tuple(e) for e in torch.randint(0, 40, (80, 2), generator=g).tolist() if e[0] != e[1]]),
          _csr(40, [tuple(e) for e in torch.randint(0, 40, (80, 2), generator=g).tolist() if e[0] != e[1]]))
    cos = torch.nn.functional.cosine_similarity
    pairs = {m: cos(t1[m][seeds[:, 0]].unsqueeze(1), t2[m][seeds[:, 1]].unsqueeze(0), dim=2) for m in w}
    m_matrix = sum(w[m] * pairs[m] for m in w)  # MIC's matrix: weighted per-modality cosines
    off = m_matrix - torch.diag(torch.full((30,), float("inf")))
    margin = m_matrix.diag() - torch.maximum(off.max(1).values, off.max(0).values)
    agreement = neighbour_agreement(seeds, *nb)
    assert len(set(agreement.tolist())) > 1 and torch.allclose(margin, mic_margin(*_mic_tables(seeds, t1, t2, w)), atol=1e-6)
    expected = seeds[keep_budget(agreement, labels1[seeds[:, 0]], 11, margin)]
    assert torch.equal(_fixed_size(seeds, (t1, t2), w, labels1, 11, nb), expected)
    assert torch.equal(_fixed_size(seeds, (t1, t2), w, labels1, 30, nb), seeds)


def _mic_tables(seeds, t1, t2, w):
    from psqe.seeds.fusion import weighted_pair_tables

    return weighted_pair_tables({m: t1[m][seeds[:, 0]] for m in w}, {m: t2[m][seeds[:, 1]] for m in w}, w)
