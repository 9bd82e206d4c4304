"""Stage I, Stage III, MIC, K-means, fusion and the quality measures, on tensors."""
from __future__ import annotations

import pytest
import torch

from psqe.seeds import metrics
from psqe.seeds.fusion import active_weights, fuse, weighted_pair_tables
from psqe.seeds.kmeans import kmeans
from psqe.seeds.mic import mic_filter
from psqe.seeds.stage1 import stage1
from psqe.seeds.stage3 import expand

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


def blobs(n_per: int, centres: torch.Tensor, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    k, d = centres.shape
    labels = torch.arange(k).repeat_interleave(n_per)
    return centres[labels] + noise * torch.randn(k * n_per, d, generator=g), labels


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    centres = torch.eye(4, 16) * 10
    x, truth = blobs(200, centres, 0.5, seed=0)
    labels = kmeans(x, 4, seed=1)
    # A perfect clustering up to relabelling: each true blob maps to one label.
    for j in range(4):
        assert labels[truth == j].unique().numel() == 1
    assert labels.unique().numel() == 4
    assert torch.equal(labels, kmeans(x, 4, seed=1))


def test_kmeans_matches_sklearn_on_blobs():
    pytest.importorskip("sklearn")
    x, truth = blobs(150, torch.eye(3, 8) * 6, 0.7, seed=2)
    ours, theirs = kmeans(x, 3, seed=0), kmeans(x, 3, seed=0, backend="sklearn")
    # Same partition (labels may be permuted).
    pairs = set(zip(ours.tolist(), theirs.tolist()))
    assert len(pairs) == 3


def test_kmeans_cluster_sums_by_gemm_equal_index_add():
    """The one-hot GEMM (CUDA's deterministic path) sums each cluster's rows as index_add_ does (CPU's)."""
    from psqe.seeds.kmeans import _cluster_sums

    g = torch.Generator().manual_seed(3)
    x, labels = torch.randn(3000, 40, generator=g), torch.randint(0, 6, (3000,), generator=g)
    labels[labels == 4] = 5  # cluster 4 left empty: zero sums
    want = torch.stack([x[labels == j].double().sum(0) for j in range(6)]).float()
    for gemm in (True, False):
        got = _cluster_sums(x, labels, 6, gemm)
        assert got.shape == (6, 40) and not bool(got[4].any())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_is_deterministic_on_cuda():
    x, _ = blobs(3000, torch.randn(5, 64, generator=torch.Generator().manual_seed(0)), 2.0, seed=4)
    runs = [kmeans(x.cuda(), 5, seed=2) for _ in range(3)]
    assert all(torch.equal(r, runs[0]) for r in runs)


@pytest.mark.parametrize("k,message", [(0, "k must be in"), (10_000, "k must be in")])
def test_kmeans_bad_k(k, message):
    with pytest.raises(ValueError, match=message):
        kmeans(torch.zeros(5, 2), k)


def test_active_weights_renormalise_and_refuse_nothing():
    assert active_weights({"visual": 0.8, "attribute": 0.1, "relation": 0.1}, {"visual", "attribute", "relation"})["visual"] == 0.8
    w = active_weights({"visual": 0.8, "attribute": 0.1, "relation": 0.1}, {"attribute", "relation"})
    assert w == {"attribute": 0.5, "relation": 0.5}
    with pytest.raises(ValueError, match="none of the weighted modalities"):
        active_weights({"visual": 1.0}, {"relation"})


def test_weighted_pair_tables_give_the_weighted_cosine_sum():
    g = torch.Generator().manual_seed(0)
    t1 = {"visual": torch.randn(5, 7, generator=g), "relation": torch.randn(5, 3, generator=g)}
    t2 = {"visual": torch.randn(6, 7, generator=g), "relation": torch.randn(6, 3, generator=g)}
    w = {"visual": 0.8, "relation": 0.2}
    left, right = weighted_pair_tables(t1, t2, w)
    cos = lambda a, b: torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    torch.testing.assert_close(left @ right.T, 0.8 * cos(t1["visual"], t2["visual"]) + 0.2 * cos(t1["relation"], t2["relation"]))
    assert fuse(t1, w).shape == (5, 10)


def test_stage1_budgets_follow_cluster_sizes_and_seeds_are_one_to_one():
    centres = torch.eye(3, 12) * 8
    x, _ = blobs(300, centres, 0.6, seed=3)
    g = torch.Generator().manual_seed(4)
    perm = torch.randperm(x.shape[0], generator=g)
    y = x[perm] + 0.05 * torch.randn_like(x)
    res = stage1(x, y, budget=300, n_clusters=3, seed=0)
    assert res.seeds.shape[0] == sum(res.budgets) <= 300
    assert sum(res.budgets) >= 300 - 3  # floors lose at most one per cluster
    assert res.seeds[:, 0].unique().numel() == res.seeds.shape[0] and res.seeds[:, 1].unique().numel() == res.seeds.shape[0]
    inverse = torch.argsort(perm)  # y[inverse[i]] is the copy of x[i]
    assert float((inverse[res.seeds[:, 0]] == res.seeds[:, 1]).float().mean()) > 0.95
    counts = torch.bincount(torch.cat([res.labels1, res.labels2]), minlength=3)
    for j in range(3):
        assert res.budgets[j] == min((300 * int(counts[j])) // 1800, int((res.labels1 == j).sum()), int((res.labels2 == j).sum()))


def test_stage1_bad_budget():
    with pytest.raises(ValueError, match="budget must be in"):
        stage1(torch.zeros(3, 2), torch.zeros(4, 2), budget=5)
    with pytest.raises(ValueError, match="differ in size"):
        stage1(torch.zeros(3, 2), torch.zeros(4, 3), budget=1)


def test_mic_filter_drops_a_seed_beaten_in_its_row():
    t1 = {"visual": torch.tensor([[1.0, 0.0], [0.9, 0.1]]), "relation": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    t2 = {"visual": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "relation": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    seeds = torch.tensor([[0, 0], [1, 1]])
    # Seed 1: visual prefers column 0 (0.99 vs 0.11), relation prefers column 1.
    assert mic_filter(seeds, t1, t2, {"visual": 0.8, "relation": 0.2}).tolist() == [True, False]
    assert mic_filter(seeds, t1, t2, {"visual": 0.2, "relation": 0.8}).tolist() == [True, True]


def csr(edges: list[tuple[int, int]], n: int):
    src = [a for a, b in edges] + [b for a, b in edges]
    dst = [b for a, b in edges] + [a for a, b in edges]
    order = sorted(range(len(src)), key=lambda i: (src[i], dst[i]))
    indptr = torch.zeros(n + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(torch.tensor(src, dtype=torch.long), minlength=n), 0)
    return indptr, torch.tensor([dst[i] for i in order], dtype=torch.long)


def test_stage3_expands_to_matching_neighbours_above_eta():
    # kg1: 0 - 1, 0 - 2 ; kg2: 0 - 1, 0 - 2 with 1 <-> 2 swapped in features.
    f1 = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    f2 = torch.tensor([[1.0, 0, 0], [0, 0.1, 1.0], [0, 1.0, 0.1]])  # matching cosines 0.995
    nb1, nb2 = csr([(0, 1), (0, 2)], 3), csr([(0, 1), (0, 2)], 3)
    t1, t2 = {"visual": f1}, {"visual": f2}
    new = expand(torch.tensor([[0, 0]]), nb1, nb2, t1, t2, t1, t2, {"visual": 1.0}, eta=0.8)
    assert sorted(map(tuple, new.tolist())) == [(1, 2), (2, 1)]
    assert expand(torch.tensor([[0, 0]]), nb1, nb2, t1, t2, t1, t2, {"visual": 1.0}, eta=0.999).shape == (0, 2)


def test_stage3_script_schedule_caps_per_seed():
    n = 12
    eye = torch.eye(n)
    star = csr([(0, i) for i in range(1, n)], n)
    t = {"visual": eye}
    paper = expand(torch.tensor([[0, 0]]), star, star, t, t, t, t, {"visual": 1.0}, eta=0.5)
    script = expand(torch.tensor([[0, 0]]), star, star, t, t, t, t, {"visual": 1.0}, eta=0.5, schedule="script")
    assert paper.shape[0] == n - 1 and script.shape[0] == 6  # int(6 - 3 * 0 / 1)


def test_quality_measures_on_a_hand_checked_case():
    seeds = torch.tensor([[0, 0], [1, 2]])
    gold = torch.tensor([[0, 0], [1, 1], [2, 2]])
    assert metrics.precision_recall(seeds, gold) == (0.5, 1 / 3)
    triples1 = torch.tensor([[0, 0, 1], [1, 0, 2], [2, 0, 3]])
    triples2 = torch.tensor([[0, 0, 1], [3, 0, 1]])
    deg1, deg2 = torch.tensor([1, 2, 2, 1]), torch.tensor([1, 2, 0, 1])
    cov = metrics.coverage(seeds, triples1, triples2, deg1, deg2)
    assert cov["entity_coverage"] == 4 / 8
    assert cov["edge_coverage"] == (2 + 1) / 5  # kg1: 2 triples touch {0, 1}; kg2: 1 touches {0, 2}
    # medians: kg1 1.5 -> entity 0 scattered, 1 aggregated; kg2 1.0 -> 0 aggregated, 2 scattered
    assert cov["graph_coverage_eq11"] == pytest.approx(2 / 16 + 3 / 10 + 2 / 8)
    assert 0.0 <= cov["degree_tv"] <= 1.0
    # seed entities' labels [0, 0 | 0, 1] -> (3/4, 1/4); all entities (3/8, 5/8)
    assert metrics.cluster_tv(seeds, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])) == pytest.approx(0.375)
