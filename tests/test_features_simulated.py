"""psqe.features.simulated: the SIMULATED visual modality of setting R2."""
from __future__ import annotations

import pytest
import torch

from features_data import random_pair
from psqe.data import KGPair
from psqe.features.simulated import coarse_classes, simulate_visual, top_relation
from psqe.matching import greedy_one_to_one

N = 3000


@pytest.fixture(scope="module")
def pair():
    return random_pair(n=N, links=2400, seed=0)


@pytest.fixture(scope="module")
def sim(pair):
    return simulate_visual(pair, seed=0)


def _norm(x):
    return torch.nn.functional.normalize(x, dim=1)


def test_calibration_reaches_target(sim):
    assert abs(sim.precision - 0.75) <= 0.03
    assert sim.converged and 2 <= len(sim.history) <= sim.config.max_evals
    assert (sim.noise_scale, sim.precision) in sim.history
    report = sim.summary()
    assert "simulated" in report["kind"] and report["type1_precision"] == round(sim.precision, 4)


def test_precision_holds_on_the_full_features(pair, sim):
    """The calibration runs on a rank-r projection; the 2048-d features must agree."""
    res = greedy_one_to_one(_norm(sim.features1), _norm(sim.features2), limit=1000)
    links = pair.links_local()
    gold = torch.full((N,), -1, dtype=torch.long)
    gold[links[:, 0]] = links[:, 1]
    full = float((gold[res.rows] == res.cols).float().mean())
    assert abs(full - sim.precision) <= 0.01


def test_deterministic_by_seed():
    small = random_pair(n=800, links=600, seed=2)
    opts = dict(dim=256, latent_dim=32, budget=200)
    first, again = simulate_visual(small, seed=0, **opts), simulate_visual(small, seed=0, **opts)
    assert abs(first.precision - 0.75) <= 0.03
    assert again.noise_scale == first.noise_scale and again.history == first.history
    assert torch.equal(again.features1, first.features1) and torch.equal(again.features2, first.features2)
    other = simulate_visual(small, seed=1, noise_scale=first.noise_scale, **opts)
    assert not torch.equal(other.features1, first.features1)
    assert len(other.history) == 1  # a given noise scale skips the calibration


def test_unreachable_target_is_reported(caplog):
    small = random_pair(n=600, links=400, seed=2)
    res = simulate_visual(small, coverage=0.2, dim=64, latent_dim=16, budget=200, max_evals=5)
    assert not res.converged and len(res.history) == 5 and res.precision < 0.75
    assert "NOT reached" in caplog.text


def test_coverage_and_missing_rule(sim):
    for feats, present in ((sim.features1, sim.present1), (sim.features2, sim.present2)):
        assert int(present.sum()) == round(0.7 * N)
        assert feats.shape == (N, 2048) and bool(torch.isfinite(feats).all())
        assert bool((feats[present] >= 0).all())  # non-negative like pooled ResNet features
    both_present = torch.cat([sim.features1[sim.present1], sim.features2[sim.present2]])
    filled = torch.cat([sim.features1[~sim.present1], sim.features2[~sim.present2]])
    torch.testing.assert_close(filled.mean(0).mean(), both_present.mean(0).mean(), atol=0.02, rtol=0.05)


def test_true_pairs_clearly_above_random_pairs(pair, sim):
    a, b = _norm(sim.features1), _norm(sim.features2)
    links = pair.links_local()
    both = sim.present1[links[:, 0]] & sim.present2[links[:, 1]]
    true_cos = (a[links[both, 0]] * b[links[both, 1]]).sum(1)
    g = torch.Generator().manual_seed(5)
    i = sim.present1.nonzero().squeeze(1)[torch.randint(0, 2100, (5000,), generator=g)]
    j = sim.present2.nonzero().squeeze(1)[torch.randint(0, 2100, (5000,), generator=g)]
    random_cos = (a[i] * b[j]).sum(1)
    assert float(random_cos.mean()) > 0.3  # a large shared component, as in real image features
    assert float(true_cos.mean()) > float(random_cos.mean()) + 0.1
    assert abs(float(true_cos.mean()) - sim.cosine_true) < 1e-3
    # popular entities are less noisy
    deg = pair.kg1.degrees()[links[both, 0]]
    high, low = deg >= deg.float().quantile(0.75), deg <= deg.float().quantile(0.25)
    assert float(true_cos[high].mean()) > float(true_cos[low].mean())


def test_classes(pair, sim):
    links = pair.links_local()
    assert torch.equal(sim.classes1[links[:, 0]], sim.classes2[links[:, 1]])
    assert int(sim.classes1.max()) < 16 and sim.classes1.unique().numel() > 4
    c1, c2 = coarse_classes(pair, 4)
    assert int(torch.cat([c1, c2]).max()) <= 3
    top = top_relation(pair.kg1)
    assert top.shape == (N,) and int(top.max()) < 40


def test_errors(pair):
    with pytest.raises(ValueError, match="gold links"):
        simulate_visual(KGPair(pair.kg1, pair.kg2))
    with pytest.raises(ValueError, match="coverage"):
        simulate_visual(pair, coverage=1.5)
    with pytest.raises(TypeError, match="unknown option"):
        simulate_visual(pair, coverge=0.5)
    with pytest.raises(ValueError, match="noise_scale"):
        simulate_visual(pair, noise_scale=-1.0)
    for option, value, message in [("degree_clip", (4.0, 0.25), "degree_clip must be"),
                                   ("degree_clip", (0.25, 1.0, 4.0), "degree_clip must be a pair"),
                                   ("tolerance", -1.0, "tolerance must be in"),
                                   ("individual_scale", -0.5, "individual_scale must be a finite number >= 0"),
                                   ("initial_scale", 0.0, "initial_scale must be a finite number > 0"),
                                   ("coverage", 1e-6, r"coverage 1e-06 gives no entity of a graph an image"),
                                   ("budget", 10**6, r"budget 1000000 exceeds the smaller graph's")]:
        with pytest.raises(ValueError, match=message):
            simulate_visual(pair, **{option: value})
