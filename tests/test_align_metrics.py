"""psqe.align evaluation and data: rank metrics against a dense oracle, the two
protocols' splits, AlignData's structure and its checks on seeds."""
from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import psqe.ops
from psqe.align import AlignData, clean_split, evaluate, legacy_split, pairs_digest, rank_metrics, ranks
from psqe.align.metrics import rank_counts, summarize
from psqe.data import KGPair, KnowledgeGraph

pytestmark = pytest.mark.one_thread


def dense_ranks(left: torch.Tensor, right: torch.Tensor, k: int, truth: torch.Tensor | None = None) -> torch.Tensor:
    """The oracle: the full CSLS matrix, then 1 + #(strictly higher) per row."""
    q, c = F.normalize(left.double(), dim=1), F.normalize(right.double(), dim=1)
    s = q @ c.t()
    if k:
        r_q = s.topk(min(k, s.shape[1]), dim=1).values.mean(1)
        r_c = s.t().topk(min(k, s.shape[0]), dim=1).values.mean(1)
        s = 2 * s - r_q[:, None] - r_c[None, :]
    truth = torch.arange(s.shape[0]) if truth is None else truth
    true = s[torch.arange(s.shape[0]), truth]
    return 1 + (s > true[:, None]).sum(1)


def oracle_metrics(r: torch.Tensor) -> dict[str, float]:
    r = r.double()
    return {"hits@1": float((r <= 1).double().mean()), "hits@10": float((r <= 10).double().mean()),
            "mrr": float((1 / r).mean())}


def noisy_pair(n: int, d: int, noise: float, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(n, d, generator=g, dtype=dtype)
    return left, left + noise * torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("csls_k", [0, 1, 3, 10])
@pytest.mark.parametrize("n,block", [(1500, 1024), (97, 10), (5, 1024)])
def test_ranks_equal_dense_oracle(csls_k, n, block):
    left, right = noisy_pair(n, 16, 1.0, seed=n + csls_k)
    got = ranks(left, right, csls_k, block=block)
    want = dense_ranks(left, right, csls_k)
    assert torch.equal(got, want)
    assert n < 50 or 0 < float((got == 1).double().mean()) < 1  # a real mix of hits and misses
    assert rank_metrics(left, right, csls_k, block=block) == pytest.approx(oracle_metrics(want), abs=1e-12)


def test_r2l_and_truth_against_oracle():
    left, right = noisy_pair(300, 8, 0.8, seed=1)
    assert rank_metrics(left, right, 3, "r2l") == pytest.approx(oracle_metrics(dense_ranks(right, left, 3)))
    # More candidates than queries: the queries match a permutation of the first rows.
    g = torch.Generator().manual_seed(2)
    extra = torch.randn(250, 8, generator=g, dtype=torch.float64)
    perm = torch.randperm(300, generator=g)
    cands = torch.cat([right[perm.argsort()], extra])  # row perm[i] of cands is right[i]
    truth = perm
    got = ranks(left, cands, 3, truth=truth, block=64)
    assert torch.equal(got, dense_ranks(left, cands, 3, truth))
    assert rank_metrics(left, cands, 3, truth=truth)["hits@1"] < rank_metrics(left, right, 3)["hits@1"]


def test_float32_close_to_oracle_and_scale_invariant():
    left, right = noisy_pair(800, 32, 1.0, seed=3, dtype=torch.float32)
    want = oracle_metrics(dense_ranks(left, right, 3))
    got = rank_metrics(left, right, 3)
    assert got == pytest.approx(want, abs=3 / 800)
    assert rank_metrics(7.0 * left, right * 0.1, 3) == pytest.approx(got, abs=3 / 800)


def test_perfect_embeddings_and_ties():
    x = torch.randn(333, 12, generator=torch.Generator().manual_seed(4))
    for k in (0, 3):
        assert rank_metrics(x, x.clone(), csls_k=k) == {"hits@1": 1.0, "hits@10": 1.0, "mrr": 1.0}
    # A candidate scoring exactly like the true match does not push it down.
    left = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    right = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert ranks(left, right, 0).tolist() == [1, 1]  # row 1: both candidates at cosine 0, a tie
    assert ranks(left, torch.tensor([[1.0, 0.0], [1.0, 0.1]]), 0).tolist() == [1, 1]
    assert ranks(left, torch.tensor([[1.0, 0.1], [1.0, 0.0]]), 0).tolist() == [2, 2]
    # the metrics average over the tie's orders: rank 1 or 2 with equal chance, for both queries
    assert rank_metrics(left, right, 0) == pytest.approx({"hits@1": 0.5, "hits@10": 1.0, "mrr": 0.75})
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.1], [0.0, 1.0]])
    higher, tied = rank_counts(left, candidates, 0, truth=torch.tensor([2, 4]))
    assert higher.tolist() == [2, 0] and tied.tolist() == [1, 0]  # [1, 0.1] trails both [1, 0] and ties the other
    # embeddings collapsed to one vector score chance, not a perfect alignment (a validation pick would take them)
    n = 40
    chance = {"hits@1": 1 / n, "hits@10": 10 / n, "mrr": sum(1 / r for r in range(1, n + 1)) / n}
    for k in (0, 3):
        assert rank_metrics(torch.ones(n, 8), torch.ones(n, 8), csls_k=k) == pytest.approx(chance, rel=1e-12)
    g = torch.tensor([0, 0, 3, 9])  # higher; tied: 0, 4, 2, 2 -> uniform ranks 1; 1..5; 4..6; 10..12
    got = summarize(1 + g, (1, 5, 10), torch.tensor([0, 4, 2, 2]))
    want_mrr = (1 + sum(1 / r for r in range(1, 6)) / 5 + sum(1 / r for r in range(4, 7)) / 3
                + sum(1 / r for r in range(10, 13)) / 3) / 4
    assert got == pytest.approx({"hits@1": (1 + 1 / 5) / 4, "hits@5": (1 + 1 + 2 / 3) / 4,
                                 "hits@10": (1 + 1 + 1 + 1 / 3) / 4, "mrr": want_mrr}, rel=1e-12)
    assert rank_metrics(torch.eye(3), -torch.eye(3), 0) == pytest.approx({"hits@1": 0.0, "hits@10": 1.0, "mrr": 1 / 3})


def test_rank_metrics_bad_input():
    x = torch.randn(10, 4)
    cases = [
        (lambda: rank_metrics(x, torch.randn(9, 4)), "one row count"),
        (lambda: rank_metrics(x, torch.randn(10, 5)), "one width"),
        (lambda: rank_metrics(x[:0], x[:0]), "empty"),
        (lambda: rank_metrics(x[0], x[0]), "2-D float"),
        (lambda: rank_metrics(x.long(), x.long()), "2-D float"),
        (lambda: rank_metrics(x, x.masked_fill(x > 1, float("nan"))), "NaN"),
        (lambda: rank_metrics(x, x, csls_k=-1), "csls_k"),
        (lambda: rank_metrics(x, x, csls_k=psqe.ops.MAX_TOPK + 1), "csls_k"),
        (lambda: rank_metrics(x, x, direction="up"), "direction"),
        (lambda: rank_metrics(x, x, truth=torch.full((10,), 10)), "truth"),
        (lambda: ranks(x, x, block=0), "block"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_legacy_split_matches_the_authors_shuffle():
    links = torch.stack([torch.arange(15000), torch.arange(15000) + 20000], dim=1)
    split = legacy_split(links)
    assert (split.train.shape[0], split.test.shape[0], split.val.shape[0]) == (4500, 10500, 0)
    assert split.candidates == "test" and split.protocol == "legacy"
    np.random.seed(42)  # what EVA / MEAformer do: seed numpy, shuffle the list read from ill_ent_ids
    ills = [tuple(r) for r in links.tolist()]
    np.random.shuffle(ills)
    assert split.train.tolist() == [list(t) for t in ills[:4500]]
    assert split.test.tolist() == [list(t) for t in ills[4500:]]
    again = legacy_split(links.clone())
    assert torch.equal(again.test, split.test)
    assert not torch.equal(legacy_split(links, seed=7).test, split.test)
    seeds = torch.tensor([[1, 5], [2, 6]])
    unsup = legacy_split(links, seeds=seeds)
    assert torch.equal(unsup.train, seeds) and torch.equal(unsup.test, split.test)


def test_pairs_digest_names_a_set_of_pairs():
    g = torch.Generator().manual_seed(1)
    pairs = torch.randint(0, 10**6, (500, 2), generator=g)
    digest = pairs_digest(pairs)
    assert len(digest) == 16 and digest == pairs_digest(pairs[torch.randperm(500, generator=g)])
    assert digest == pairs_digest(pairs.int().numpy())
    assert digest != pairs_digest(pairs[1:]) and digest != pairs_digest(pairs.flip(1))
    bumped = pairs.clone()
    bumped[7, 1] += 1
    assert digest != pairs_digest(bumped)
    with pytest.raises(ValueError, match="integer"):
        pairs_digest(pairs.double())


def test_clean_split_excludes_seed_entities():
    g = torch.Generator().manual_seed(5)
    links = torch.stack([torch.arange(1000), torch.randperm(1000, generator=g) + 1000], dim=1)
    true_seeds = links[torch.randperm(1000, generator=g)[:150]]
    wrong = torch.stack([torch.arange(1000, 1050) - 1000, torch.arange(1950, 2000)], dim=1)  # some mismatched
    seeds = torch.cat([true_seeds, wrong[~torch.isin(wrong[:, 0], true_seeds[:, 0]) & ~torch.isin(wrong[:, 1], true_seeds[:, 1])]])
    split = clean_split(links, seeds, val_ratio=0.1, seed=0)
    used_l, used_r = set(seeds[:, 0].tolist()), set(seeds[:, 1].tolist())
    expected = [r for r in links.tolist() if r[0] not in used_l and r[1] not in used_r]
    assert split.test.tolist() == expected and len(expected) < 1000 - 150
    assert split.val.shape[0] == round(0.1 * seeds.shape[0]) and split.candidates == "all"
    both = torch.cat([split.train, split.val])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, seeds.tolist()))
    assert torch.equal(clean_split(links, seeds, seed=0).val, split.val)
    assert not torch.equal(clean_split(links, seeds, seed=1).val, split.val)
    with pytest.raises(ValueError, match="nothing is left to test"):
        clean_split(links[:5], links[:5])
    # other seed sets (one table or several) leave the test too, and only the test: training is this set's
    others = [links[:300], torch.stack([links[300:400, 0], links[400:500, 1]], dim=1)]  # the second one is wrong
    common = clean_split(links, seeds, val_ratio=0.1, seed=0, exclude=others)
    used_l |= set(torch.cat(others)[:, 0].tolist())
    used_r |= set(torch.cat(others)[:, 1].tolist())
    assert common.test.tolist() == [r for r in links.tolist() if r[0] not in used_l and r[1] not in used_r]
    assert torch.equal(common.train, split.train) and torch.equal(common.val, split.val)
    one = clean_split(links, seeds, exclude=others[0]).test
    assert torch.equal(one, clean_split(links, seeds, exclude=[others[0]]).test) and one.shape[0] > common.test.shape[0]
    assert torch.equal(one, clean_split(links, seeds, exclude=others[0].numpy()).test)  # one array is one table
    with pytest.raises(ValueError, match=r"exclude\[1\]"):
        clean_split(links, seeds, exclude=[others[0], torch.zeros(3)])
    with pytest.raises(ValueError, match="integer"):
        clean_split(links.float(), seeds)
    with pytest.raises(ValueError, match="empty"):
        legacy_split(links[:0])


def small_pair() -> KGPair:
    """kg1 ids 0..5, kg2 ids 100..106; a repeated triple, a reverse triple and a self triple."""
    t1 = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 0, 0], [2, 0, 3], [3, 0, 3], [4, 0, 5]])
    t2 = torch.tensor([[100, 0, 101], [102, 0, 103], [104, 0, 105], [105, 1, 106]])
    g = torch.Generator().manual_seed(0)
    kg1 = KnowledgeGraph(torch.arange(6), [f"a{i}" for i in range(6)], t1,
                         features={"visual": torch.randn(6, 4, generator=g), "attribute": torch.randn(6, 3, generator=g)})
    kg2 = KnowledgeGraph(torch.arange(100, 107), [f"b{i}" for i in range(7)], t2,
                         features={"visual": torch.randn(7, 4, generator=g)},
                         present={"visual": torch.tensor([True] * 6 + [False])})
    return KGPair(kg1, kg2, links=torch.tensor([[i, 100 + i] for i in range(6)]), name="small")


def test_align_data_structure_matches_eva_adjacency():
    data = AlignData.from_pair(small_pair())
    assert (data.n1, data.n2, data.num_entities) == (6, 7, 13)
    assert data.modalities == ["visual"]  # "attribute" is kg1-only: skipped
    assert data.present["visual"].tolist() == [True] * 12 + [False]
    n = 13
    a = torch.zeros(n, n, dtype=torch.float64)
    for h, t in [(0, 1), (0, 1), (1, 0), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (11, 12)]:  # pair index
        a[h, t] += 1
        a[t, h] += 1
    a += torch.eye(n, dtype=torch.float64)
    d = a.sum(1).rsqrt()
    assert torch.allclose(data.adj.to_dense().double(), d[:, None] * a * d[None, :], atol=1e-6)
    ei = data.edge_index
    pairs = set(map(tuple, ei.t().tolist()))
    assert pairs == {(i, j) for i in range(n) for j in range(n) if a[i, j] > 0}
    assert len(pairs) == ei.shape[1] and bool((ei[1][1:] >= ei[1][:-1]).all())
    assert data.links.tolist() == [[i, 6 + i] for i in range(6)]
    assert torch.equal(data.to_global(data.links), small_pair().links)
    with pytest.raises(ValueError, match="'attribute' is missing from kg2"):
        AlignData.from_pair(small_pair(), modalities=["visual", "attribute"])


def test_seed_mapping_errors_name_the_row():
    data = AlignData.from_pair(small_pair())
    assert data.pairs_from_global(np.array([[3, 104], [0, 106]], dtype=np.int32)).tolist() == [[3, 10], [0, 12]]
    cases = [
        ([[0, 100], [7, 101]], r"seeds row 1 \(7, 101\): id 7 is not an entity of kg1"),
        ([[0, 100], [1, 999]], r"seeds row 1 \(1, 999\): id 999 is not an entity of kg2"),
        ([[101, 1]], r"row 0 \(101, 1\): the columns look swapped"),
        ([[0, 100], [1, 101], [0, 100]], r"seeds rows 0 and 2 both use kg1 entity 0"),
        ([[0, 100], [1, 102], [2, 102]], r"seeds rows 1 and 2 both use kg2 entity 102"),
        ([[0, 100, 1]], r"expected an \[S, 2\] table"),
    ]
    for seeds, message in cases:
        with pytest.raises(ValueError, match=message):
            data.pairs_from_global(torch.tensor(seeds))
    # a file's pairs are named where they sit in it (read_seeds(..., with_lines=True))
    with pytest.raises(ValueError, match=r"seeds file s.tsv line 7 \(1, 999\): id 999 is not an entity of kg2"):
        data.pairs_from_global(torch.tensor([[0, 100], [1, 999]]), what="seeds file s.tsv", places=["line 2", "line 7"])
    with pytest.raises(ValueError, match="integers"):
        data.pairs_from_global(torch.tensor([[0.0, 100.0]]))
    with pytest.raises(ValueError, match=r"train row 0 \[0, 3\]: pair indices must be"):
        data.check_pairs(torch.tensor([[0, 3]]), "train")


def test_evaluate_protocols_on_planted_embeddings():
    data = AlignData.from_pair(small_pair())
    emb = torch.eye(13)
    for i in range(6):
        emb[6 + i] = emb[i]  # kg2 entity 100+i looks exactly like kg1 entity i
    emb[12] = emb[5] * 2  # kg2 entity 106 (never in a link) is an equally good candidate for kg1 entity 5
    seeds = torch.tensor([[0, 100], [1, 101]])
    legacy = legacy_split(small_pair().links, train_ratio=0.34).to_pair_index(data)
    clean = clean_split(small_pair().links, seeds, val_ratio=0.5).to_pair_index(data)
    m = evaluate(emb, legacy, data, csls_k=0)
    assert (m["hits@1"], m["mrr"], m["r2l_hits@1"], m["queries"], m["candidates"]) == (1.0, 1.0, 1.0, 4, 4)
    m = evaluate({"joint": emb}, clean, data, csls_k=0)
    # entity 5's true match ties with 106: rank 1 or 2, so half a hit and a reciprocal rank of 0.75
    assert (m["hits@1"], m["mrr"], m["queries"], m["candidates"]) == (0.875, 0.9375, 4, 7)
    emb[11] = emb[5] + 0.5 * torch.eye(13)[11]  # the true match of entity 5 is now imperfect (cosine 0.89) ...
    emb[12] = emb[5]  # ... and the distractor strictly better
    m = evaluate(emb, clean, data, csls_k=0)
    assert m["hits@1"] == pytest.approx(0.75) and m["mrr"] == pytest.approx(0.875)
    assert evaluate(emb, legacy, data, csls_k=0)["hits@1"] == 1.0  # the distractor is not a legacy candidate
    assert evaluate(emb, clean, data, part="val", csls_k=0)["queries"] == 1
    with pytest.raises(ValueError, match=r"embeddings must be \[13, d\]"):
        evaluate(emb[:12], clean, data)
    with pytest.raises(ValueError, match="part must be"):
        evaluate(emb, clean, data, part="train2")


@pytest.mark.parametrize("name", ["psqe.align", "psqe.align.data", "psqe.align.losses", "psqe.align.metrics"])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
