"""The synthetic pair generator: sizes, determinism, the latent world's properties."""
from __future__ import annotations

import pytest
import torch

import psqe
from psqe.data.synthetic import SyntheticConfig, make_pair
from psqe.seeds.metrics import precision_recall

pytestmark = pytest.mark.one_thread  # see conftest._thread_limit


@pytest.fixture(scope="module")
def pair():
    return make_pair(4000, seed=3)


def test_sizes_ids_and_links(pair):
    n = 4000
    assert pair.kg1.num_entities == pair.kg2.num_entities == n
    assert pair.kg1.ids.sort().values.tolist() == list(range(n))
    assert pair.kg2.ids.sort().values.tolist() == list(range(n, 2 * n))
    assert pair.links.shape == (round(0.7 * n), 2)
    # triples stay inside their graph; relation ids are in range
    for kg in (pair.kg1, pair.kg2):
        assert bool(kg.contains(kg.triples[:, 0]).all()) and bool(kg.contains(kg.triples[:, 2]).all())
        assert int(kg.triples[:, 1].max()) < 60 and int(kg.triples[:, 1].min()) >= 0
        assert kg.num_triples > 2 * n  # avg world degree 10, ~70-80% seen
    assert torch.equal(pair.links_local()[:, 0], pair.links_local()[:, 0].sort().values)


def test_deterministic_by_seed():
    a, b, c = make_pair(800, seed=5), make_pair(800, seed=5), make_pair(800, seed=6)
    for m in ("visual", "attribute", "relation"):
        assert torch.equal(a.kg1.features[m], b.kg1.features[m])
        assert torch.equal(a.kg2.present[m], b.kg2.present[m])
    assert torch.equal(a.kg2.triples, b.kg2.triples) and torch.equal(a.links, b.links)
    assert not torch.equal(a.kg1.features["visual"], c.kg1.features["visual"])


def test_power_law_degrees(pair):
    deg = pair.kg1.degrees().float()
    # heavy tail: the largest degree is far above the median, most mass in few entities
    assert deg.max() > 20 * deg.median()
    top = deg.sort(descending=True).values
    assert top[: len(top) // 10].sum() > 0.3 * top.sum()


def test_visual_rows_look_like_pooled_cnn_features(pair):
    x = torch.nn.functional.normalize(pair.kg1.features["visual"], dim=1)
    assert float(pair.kg1.features["visual"][pair.kg1.present["visual"]].min()) >= 0.0  # missing rows: N(mean, std)
    links = pair.links_local()
    y = torch.nn.functional.normalize(pair.kg2.features["visual"], dim=1)
    true = (x[links[:, 0]] * y[links[:, 1]]).sum(1).mean()
    unrelated = (x[links[:, 0]] * y[links[:, 1].roll(1)]).sum(1).mean()
    assert unrelated > 0.4 and true > unrelated + 0.03


def test_image_coverage_and_missing_rule(pair):
    cov = pair.kg1.present["visual"].float().mean().item()
    assert abs(cov - 0.75) < 0.05
    deg = pair.kg1.degrees()
    high = deg >= deg.float().quantile(0.9)
    assert pair.kg1.present["visual"][high].float().mean() > cov  # high degree: an image more often
    x, has = pair.kg1.features["visual"], pair.kg1.present["visual"]
    # missing rows come from N(mean, std) of the real rows: same first two moments
    assert torch.allclose(x[~has].mean(0), x[has].mean(0), atol=0.05)
    assert torch.allclose(x[~has].std(0), x[has].std(0), rtol=0.15)


def test_noise_falls_with_degree(pair):
    links = pair.links_local()
    a = torch.nn.functional.normalize(pair.kg1.features["visual"][links[:, 0]], dim=1)
    b = torch.nn.functional.normalize(pair.kg2.features["visual"][links[:, 1]], dim=1)
    real = pair.kg1.present["visual"][links[:, 0]] & pair.kg2.present["visual"][links[:, 1]]
    cos = (a * b).sum(1)[real]
    deg = pair.kg1.degrees()[links[:, 0]][real].float()
    assert cos[deg >= deg.quantile(0.9)].mean() > cos[deg <= deg.quantile(0.3)].mean() + 0.1


def test_communities_make_clusters(pair):
    # latent communities: an entity's visual nearest neighbour (in its own graph)
    # is far more similar than a random entity (centred: the rows share a large component)
    x = pair.kg1.features["visual"]
    x = torch.nn.functional.normalize(x - x.mean(0), dim=1)
    vals, _ = psqe.ops.topk_similarity(x, x, 2)
    random_cos = (x * x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))]).sum(1)
    assert vals[:, 1].mean() > random_cos.mean() + 0.2


def test_type_one_and_two_precision_bounds():
    # The demo's calibration: visual-only greedy (Type I) is useful but imperfect;
    # fusing attribute and relation (Type II) is more precise (the paper's Fig. 1 shape).
    pair = make_pair(10_000, seed=0)
    cfg = psqe.PSQEConfig(budget=1000)
    prec = {}
    for kind in ("type1", "type2"):
        s = psqe.baseline_seeds(pair.kg1, pair.kg2, kind, cfg)
        local = torch.stack([pair.kg1.to_local(s[:, 0]), pair.kg2.to_local(s[:, 1])], dim=1)
        prec[kind] = precision_recall(local, pair.links_local())[0]
    assert 0.55 < prec["type1"] < 0.85, prec
    assert prec["type2"] > prec["type1"] + 0.03, prec
    # attributes alone identify few entities (shared, Zipf-distributed types, as on DBpedia)
    s = psqe.baseline_seeds(pair.kg1, pair.kg2, "type1", psqe.PSQEConfig(budget=1000, weights={"attribute": 1.0}))
    local = torch.stack([pair.kg1.to_local(s[:, 0]), pair.kg2.to_local(s[:, 1])], dim=1)
    assert precision_recall(local, pair.links_local())[0] < 0.5


def test_overrides_and_bad_config():
    p = make_pair(300, seed=0, overlap=0.5, dims={"visual": 8})
    assert p.links.shape[0] == 150 and list(p.kg1.features) == ["visual"] and p.kg1.features["visual"].shape[1] == 8
    tiny = make_pair(1)
    assert tiny.kg1.num_entities == 1 and tiny.kg1.num_triples == 0 and tiny.links.shape == (1, 2)
    with pytest.raises(ValueError, match="num_entities must be a positive integer"):
        make_pair(0)
    with pytest.raises(ValueError, match="overlap must be in"):
        make_pair(10, overlap=1.5)
    with pytest.raises(ValueError, match="unknown modalities"):
        make_pair(10, dims={"audio": 4})
    with pytest.raises(TypeError):
        make_pair(10, not_a_field=1)
    assert SyntheticConfig().noise["visual"] > 0
