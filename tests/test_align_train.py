"""psqe.align losses (against direct transcriptions of the authors' formulas) and
the shared training loop: determinism, batching modes, schedule, model
selection, iterative learning, bad input."""
from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psqe.align import (AlignData, MutualNeighbours, TrainConfig, UncertaintyWeighting, contrastive_loss, embed, fit,
                        ial_loss, nca_loss, rank_metrics)
from psqe.align.losses import ial_target, icl_ial_losses, icl_with_target
from psqe.align.train import _batch_rows, _batch_views, _lr_factor
from psqe.data.synthetic import make_pair

pytestmark = pytest.mark.one_thread


# ---- losses -----------------------------------------------------------------

def eva_nca(x, y, alpha, beta, ep):
    """EVA's NCA_loss as written: exp, cleared diagonal, log(1 + sum)."""
    x, y = F.normalize(x.double()), F.normalize(y.double())
    s = x @ y.t()
    eye = torch.eye(s.shape[0], dtype=s.dtype)
    e = torch.exp(alpha * (s - ep))
    e = e - e * eye
    diag = -torch.log(1 + F.relu((eye * s).sum(0)))
    return torch.sum(torch.log(1 + e.sum(0)) / alpha + torch.log(1 + e.sum(1)) / alpha + diag * beta) / s.shape[0]


def mclea_logits(a, b, tau):
    mask = torch.eye(a.shape[0], dtype=a.dtype) * 1e9
    return (torch.cat([a @ b.t() / tau, a @ a.t() / tau - mask], 1),
            torch.cat([b @ a.t() / tau, b @ b.t() / tau - mask], 1))


def mclea_icl(x, y, tau):
    """MCLEA's icl_loss (ab_weight 0.5): soft cross-entropy with one-hot labels over [ab, aa]."""
    x, y = F.normalize(x.double()), F.normalize(y.double())
    la, lb = mclea_logits(x, y, tau)
    labels = F.one_hot(torch.arange(x.shape[0]), 2 * x.shape[0]).double()
    ce = lambda logits: -(labels * F.log_softmax(logits, 1)).sum() / logits.shape[0]
    return 0.5 * ce(la) + 0.5 * ce(lb)


def mclea_ial(s1, s2, t1, t2, tau, zoom):
    p = mclea_logits(F.normalize(s1.double()), F.normalize(s2.double()), tau)
    q = mclea_logits(F.normalize(t1.double()), F.normalize(t2.double()), tau)
    kl = [F.kl_div(F.log_softmax(pp, 1), F.softmax(qq, 1), reduction="none").mean() for pp, qq in zip(p, q)]
    return zoom * (0.5 * kl[0] + 0.5 * kl[1])


def test_losses_match_the_authors_formulas():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    y = x + 0.7 * y
    for alpha, beta, ep in [(15, 10, 0.0), (5, 10, 0.0), (5, 50, 0.5)]:
        assert nca_loss(x, y, alpha, beta, ep).item() == pytest.approx(eva_nca(x, y, alpha, beta, ep).item(), rel=1e-5)
    assert contrastive_loss(x, y, tau=0.1).item() == pytest.approx(mclea_icl(x, y, 0.1).item(), rel=1e-5)
    t1, t2 = torch.randn(40, 24, generator=g), torch.randn(40, 24, generator=g)
    assert ial_loss(x, y, t1, t2, tau=4.0).item() == pytest.approx(mclea_ial(x, y, t1, t2, 4.0, 0.1).item(), rel=1e-4)
    # NCA stays finite where exp(alpha) would overflow float32.
    big = nca_loss(x, x, alpha=200.0, beta=10.0)
    assert math.isfinite(big.item())
    with pytest.raises(ValueError, match="one shape"):
        nca_loss(x, y[:5])
    with pytest.raises(ValueError, match="non-empty"):
        ial_loss(x[:0], y[:0], t1[:0], t2[:0])


@pytest.mark.parametrize("batch,weights,tau2", [(40, (1.0, 1.0), 4.0), (7, (0.3, -2.0), 0.5), (64, (0.0, 1.0), 4.0),
                                                (16, (1.0, 0.0), 1.0)])
def test_icl_ial_from_one_product_match_the_separate_terms(batch, weights, tau2):
    """MCLEA's fused ICL + IAL (one product of the batch's rows) against contrastive_loss and ial_loss
    (each checked against the authors' formulas above): the values, and the gradients of any weighted sum."""
    g = torch.Generator().manual_seed(batch)
    x, y, t1, t2 = (torch.randn(batch, 12, generator=g) for _ in range(4))
    y = x + 0.5 * y
    grads = []
    for fused in (True, False):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        if fused:
            icl, ial = icl_ial_losses(a, b, ial_target(t1, t2, tau2), tau=0.1, tau2=tau2, zoom=0.1)
        else:
            icl, ial = contrastive_loss(a, b, tau=0.1, combine="log"), ial_loss(a, b, t1, t2, tau=tau2, zoom=0.1)
        (weights[0] * icl + weights[1] * ial).backward(retain_graph=True)
        grads.append((icl.detach(), ial.detach(), a.grad.clone(), b.grad.clone()))
        (weights[0] * icl + weights[1] * ial).backward()  # a second pass over the kept graph: the same gradient
        torch.testing.assert_close(a.grad, 2 * grads[-1][2])
    (icl_f, ial_f, ga_f, gb_f), (icl_r, ial_r, ga_r, gb_r) = grads
    torch.testing.assert_close(icl_f, icl_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ial_f, ial_r, rtol=1e-4, atol=1e-9)
    assert float(ial_r) > 1e-6  # a real KL to match, not zero against zero (MCLEA's tau2 = 4 gives ~5e-6)
    torch.testing.assert_close(ga_f, ga_r, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gb_f, gb_r, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="log_q must be"):
        icl_ial_losses(x, y, ial_target(t1[:-1], t2[:-1]))


@pytest.mark.parametrize("batch,tau,tau2", [(40, 0.1, 4.0), (7, 0.05, 0.5), (64, 0.1, 1.0)])
def test_joint_icl_and_ial_target_from_one_product(batch, tau, tau2):
    """MCLEA's joint ICL with the batch's IAL target (one product) against contrastive_loss and
    ial_target: the values, the target detached, the gradient, and a second backward over a kept graph."""
    g = torch.Generator().manual_seed(batch)
    x, y = torch.randn(batch, 12, generator=g), torch.randn(batch, 12, generator=g)
    y = x + 0.5 * y
    grads = []
    for fused in (True, False):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        if fused:
            icl, log_q = icl_with_target(a, b, tau=tau, tau2=tau2)
            assert not log_q.requires_grad
            torch.testing.assert_close(log_q, ial_target(x, y, tau2), rtol=1e-5, atol=1e-6)
        else:
            icl = contrastive_loss(a, b, tau=tau, combine="log")
        (3.0 * icl).backward(retain_graph=True)
        grads.append((icl.detach(), a.grad.clone(), b.grad.clone()))
        (3.0 * icl).backward()
        torch.testing.assert_close(a.grad, 2 * grads[-1][1])
    (icl_f, ga_f, gb_f), (icl_r, ga_r, gb_r) = grads
    torch.testing.assert_close(icl_f, icl_r, rtol=1e-5, atol=1e-5)  # a difference of logits ~1 / tau in float32
    scale = float(ga_r.abs().max())
    assert scale > 1e-3  # a real gradient to match, to float32 rounding of its largest entry
    torch.testing.assert_close(ga_f, ga_r, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(gb_f, gb_r, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(ValueError, match="one shape"):
        icl_with_target(x, y[:-1])


def test_ial_target_is_detached_and_uncertainty_weighting():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(10, 4, generator=g, requires_grad=True)
    t = torch.randn(10, 4, generator=g, requires_grad=True)
    ial_loss(s, s.roll(1, 0), t, t.roll(1, 0)).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    w = UncertaintyWeighting(3)
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
    total = w([torch.tensor(1.0), torch.tensor(4.0), torch.tensor(2.0)])
    assert total.item() == pytest.approx(1.0 + (2.0 + math.log(2.0)) + (2.0 * math.e - 1.0))
    with pytest.raises(ValueError, match="expected 3 losses"):
        w([torch.tensor(1.0)])


# ---- the training loop --------------------------------------------------------

class Tiny(nn.Module):
    """A linear map of the visual features, trained with ICL; counts its calls."""

    def __init__(self, data: AlignData, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(data.features["visual"].shape[1], dim)
        self.forwards = self.losses = self.epochs_seen = 0

    def forward(self, data):
        self.forwards += 1
        e = self.lin(data.features["visual"])
        return {"visual": e, "joint": e}

    def loss(self, out, pairs):
        self.losses += 1
        return contrastive_loss(out["joint"][pairs[:, 0]], out["joint"][pairs[:, 1]], tau=0.1)

    def on_epoch_end(self, epoch, data):
        self.epochs_seen += 1


@pytest.fixture(scope="module")
def pair_data():
    pair = make_pair(400, seed=0, noise={"visual": 0.5, "attribute": 1.0, "relation": 1.0})
    return pair, AlignData.from_pair(pair, modalities=["visual"])


def test_fit_is_deterministic_and_batches_as_configured(pair_data):
    _, data = pair_data
    seeds = data.links[:100]
    runs = []
    for _ in range(2):
        model = Tiny(data)
        res = fit(model, data, seeds, TrainConfig(epochs=4, lr=1e-2, batch_size=30, seed=5), progress=False)
        runs.append((res.losses, model.lin.weight.detach().clone()))
        assert (model.forwards, model.losses, model.epochs_seen) == (4, 16, 4)  # one forward per epoch, 4 batches
        assert not model.training and res.seconds > 0 and torch.equal(res.train_pairs, seeds)
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    other = fit(Tiny(data), data, seeds, TrainConfig(epochs=4, lr=1e-2, batch_size=30, seed=6), progress=False)
    assert other.losses != runs[0][0]
    model = Tiny(data)
    fit(model, data, seeds, TrainConfig(epochs=3, lr=1e-2, batch_size=30, step_per_batch=True), progress=False)
    assert (model.forwards, model.losses) == (12, 12)  # a forward pass and a step per batch


@pytest.mark.parametrize("name", ["mclea", "pcmea", "meaformer"])
def test_batch_views_give_the_per_batch_indexing_loss_and_gradients(name):
    """A step's loss over batch views (one gather, split per batch) against indexing the step's rows per batch
    and term (the oracle): the same loss and parameter gradients, an entity in two batches included."""
    from psqe.align import build_aligner

    data = AlignData.from_pair(make_pair(120, seed=3))
    extra = dict(graph_dim=8, visual_dim=4, attribute_dim=4, relation_dim=4) if name != "meaformer" else dict(hidden=8)
    model, _ = build_aligner(name, data, seed=2, **extra)
    if name == "pcmea":  # the momentum contrast reads the entity ids of the rows
        model._momentum_step(data, first=True)
    if name == "meaformer":
        model.eval()  # no dropout: both ways draw no masks
    links = data.links[:40]
    group = [links[:15], links[15:30], torch.cat([links[30:], links[:3]])]  # links[:3] in two batches
    nodes, local = _batch_rows(group)
    grads, losses = [], []
    for views in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(data, nodes=nodes)
        parts = _batch_views(out, local) if views else ((out, b) for b in local)
        loss = sum(model.loss(rows, b) for rows, b in parts)
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 3
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5, msg=key)


def test_lr_schedule():
    cos = TrainConfig(scheduler="cosine", warmup=0.1)
    assert [round(_lr_factor(cos, p, 0), 6) for p in (0.0, 0.05, 0.1, 0.55, 1.0)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    il = TrainConfig(il=True, il_start=10, il_lr_scale=0.2)
    assert (_lr_factor(il, 0.5, 9), _lr_factor(il, 0.5, 10)) == (1.0, 0.2)
    assert _lr_factor(TrainConfig(), 0.7, 3) == 1.0
    drop = TrainConfig(lr_drop_epoch=500, lr_drop_factor=0.2)
    assert (_lr_factor(drop, 0.4, 499), _lr_factor(drop, 0.6, 500)) == (1.0, 0.2)
    both = TrainConfig(scheduler="cosine", lr_drop_epoch=2, lr_drop_factor=0.5, il=True, il_start=2, il_lr_scale=0.2)
    assert _lr_factor(both, 0.5, 2) == pytest.approx(0.5 * 0.5 * 0.2)
    from psqe.align import pcmea_train_config
    assert (pcmea_train_config().lr_drop_epoch, pcmea_train_config().lr_drop_factor) == (500, 0.2)
    with pytest.raises(ValueError, match="lr_drop_epoch"):
        TrainConfig(lr_drop_epoch=-1)
    with pytest.raises(ValueError, match="lr_drop_factor"):
        TrainConfig(lr_drop_factor=0.0)


def test_model_selection_restores_the_best_state(pair_data):
    pair, data = pair_data
    train, val = data.links[:120], data.links[120:180]
    model = Tiny(data)
    res = fit(model, data, train, TrainConfig(epochs=12, lr=5e-2, batch_size=64, eval_every=3), val, progress=False)
    assert [h["epoch"] for h in res.val_history] == [2, 5, 8, 11]
    scores = [h["mrr"] for h in res.val_history]
    assert res.best_score == max(scores) and res.best_epoch == res.val_history[scores.index(max(scores))]["epoch"]
    joint = embed(model, data)["joint"]
    now = rank_metrics(joint[val[:, 0]], joint[data.n1:], 3, truth=val[:, 1] - data.n1)
    assert now["mrr"] == pytest.approx(res.best_score)  # the restored state is the best one
    # No gain at all (a frozen learning rate): patience 1 stops at the second evaluation.
    stuck = fit(Tiny(data), data, train, TrainConfig(epochs=20, lr=1e-12, eval_every=1, patience=1), val, progress=False)
    assert len(stuck.losses) == 2 and stuck.best_epoch == 0


def test_mutual_neighbours_persist_across_checks():
    data = AlignData.from_pair(make_pair(50, seed=3), modalities=[])
    n1 = data.n1
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n1, 8, generator=g)
    joint = torch.cat([base, base + 0.01 * torch.randn(n1, 8, generator=g)])  # kg1 i <-> kg2 n1 + i
    train = torch.tensor([[0, n1], [1, n1 + 1]])
    blocked = torch.tensor([[2, n1 + 2]])
    tracker = MutualNeighbours(data, persist=2, blocked=blocked)
    assert tracker.check(joint, train) is None
    shifted = joint.clone()
    shifted[n1 + 3] = -base[3]  # entity 3 loses its partner at the second check
    added = tracker.check(shifted, train)
    expected = [[i, n1 + i] for i in range(4, n1)]
    assert added.tolist() == expected
    once = MutualNeighbours(data, persist=1)
    assert once.check(joint, torch.zeros(0, 2, dtype=torch.long)).tolist() == [[i, n1 + i] for i in range(n1)]


def test_iterative_learning_adds_precise_new_pairs(pair_data):
    pair, data = pair_data
    seeds = data.links[:60]
    cfg = TrainConfig(epochs=20, lr=1e-2, batch_size=512, il=True, il_start=4, il_every=4, il_persist=2)
    res = fit(Tiny(data), data, seeds, cfg, progress=False)
    assert [e for e, _ in res.il_added] == [11, 19]
    added = res.train_pairs[seeds.shape[0]:]
    assert added.shape[0] == sum(c for _, c in res.il_added) > 20
    assert torch.equal(res.train_pairs[:60], seeds)
    for side in (0, 1):
        assert res.train_pairs[:, side].unique().numel() == res.train_pairs.shape[0]  # still one-to-one
    gold = {tuple(r) for r in data.links.tolist()}

    def precision(pairs):
        return sum(tuple(r) in gold for r in pairs.tolist()) / pairs.shape[0]

    # Chance is ~1/340; measured 0.56 (persist 2), 0.41 (persist 1), 0.83 (persist 3):
    # demanding persistence across more checks trades pairs for precision.
    assert precision(added) > 0.4
    by_persist = {}
    for persist in (1, 3):
        more = fit(Tiny(data), data, seeds, TrainConfig(**{**cfg.__dict__, "il_persist": persist}), progress=False)
        by_persist[persist] = (precision(more.train_pairs[60:]), more.train_pairs.shape[0] - 60)
    assert by_persist[3][0] > by_persist[1][0] + 0.2 and by_persist[3][1] < by_persist[1][1]


def test_fit_rejects_bad_input(pair_data, caplog):
    _, data = pair_data
    seeds = data.links[:50]
    with pytest.raises(ValueError, match="train_pairs is empty"):
        fit(Tiny(data), data, seeds[:0], TrainConfig(epochs=1), progress=False)
    with caplog.at_level("WARNING", logger="psqe.align.train"):
        fit(Tiny(data), data, seeds, TrainConfig(epochs=1), val_pairs=seeds[:5], progress=False)
    assert "share entities" in caplog.text
    with pytest.raises(ValueError, match="pair indices must be"):
        fit(Tiny(data), data, seeds.flip(1), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="rows 0 and 1 both use kg1"):
        fit(Tiny(data), data, torch.stack([seeds[0], seeds[0]]), TrainConfig(epochs=1), progress=False)

    class Broken(Tiny):
        def loss(self, out, pairs):
            return super().loss(out, pairs) * float("nan")

    with pytest.raises(FloatingPointError, match="epoch 0"):
        fit(Broken(data), data, seeds, TrainConfig(epochs=2), progress=False)
    for bad in ({"scheduler": "step"}, {"warmup": 1.0}, {"batch_size": 0}, {"select_metric": "f1"},
                {"val_candidates": "some"}, {"grad_clip": 0.0}, {"il_persist": 0}):
        with pytest.raises(ValueError, match="TrainConfig"):
            TrainConfig(**bad)


@pytest.mark.parametrize("name", ["psqe.align.train"])
def test_module_imports_cleanly(name):
    module = importlib.import_module(name)
    assert doctest.testmod(module).failed == 0


def test_build_aligner_iterative_doubles_the_schedule():
    from psqe.align import build_aligner

    data = AlignData.from_pair(make_pair(200, seed=0))
    _, plain = build_aligner("mclea", data, epochs=40)
    _, it = build_aligner("mclea", data, epochs=40, iterative=True)
    assert (plain.il, plain.epochs) == (False, 40)
    assert (it.il, it.il_start, it.epochs, it.il_every, it.il_persist) == (True, 40, 80, plain.il_every, plain.il_persist)
    _, full = build_aligner("eva", data, iterative=True)  # EVA's own iterative run: 1000 epochs, IL from 500
    assert (full.epochs, full.il_start, full.il_every) == (1000, 500, 5)
    with pytest.raises(ValueError, match="PCMEA's pseudo-label calibration"):
        build_aligner("pcmea", data, iterative=True)
