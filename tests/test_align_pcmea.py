"""PCMEA (psqe.align.pcmea): a supervised run on a synthetic pair must beat an
H@1 bound that the untrained model does not reach; its pseudo-links must be
precise, stable-only and disjoint from the seeds; the momentum encoder and
the momentum contrast."""
from __future__ import annotations

import pytest
import torch

from psqe.align import AlignData, TrainResult, fit
from psqe.align.losses import contrastive_loss, ial_target
from psqe.align.pcmea import PCMEA, PCMEAConfig, pcmea_train_config
from psqe.data.synthetic import make_pair
from psqe.reproduce.cells import added_pairs

from align_common import fit_recording_nodes, hits1

pytestmark = pytest.mark.one_thread

EPOCHS = 40
#: Momentum from mid-training; pseudo-label cycles of 2 checks 2 epochs apart.
CONFIG = PCMEAConfig(momentum_start=20, momentum_every=5, momentum=0.9, pseudo_every=2, pseudo_persist=2)
#: Measured on this pair: test H@1 untrained 0.171, trained 0.587; precision of
#: the accepted pseudo-links 0.556 (257 links; the mutual-neighbour proposals
#: are about 0.52 precise; a random one-to-one pairing of the ~630 free
#: entities per side would be right for about 0.2%).
BOUND = 0.40
PRECISION_BOUND = 0.40


@pytest.fixture(scope="module")
def trained(align_setup):
    data, split = align_setup
    model = PCMEA(data, CONFIG, seed=0)
    initial = {k: v.detach().clone() for k, v in model.momentum_encoder.named_parameters()}
    model.exclude(split.test[:30])
    result = fit(model, data, split.train, pcmea_train_config(epochs=EPOCHS, log_every=0), progress=False)
    return model, initial, result


def test_supervised_run_beats_bound_untrained_does_not(align_setup, trained):
    data, split = align_setup
    untrained = PCMEA(data, CONFIG, seed=0)
    fit(untrained, data, split.train, pcmea_train_config(epochs=0), progress=False)
    model, _, result = trained
    h0, h = hits1(untrained, data, split), hits1(model, data, split)
    assert h0 < BOUND < h, (h0, h)
    assert not untrained.momentum_active and untrained.pseudo_links.shape == (0, 2)


def test_pseudo_links_precise_and_disjoint_from_seeds(align_setup, trained):
    data, split = align_setup
    model, _, result = trained
    links = model.pseudo_links.cpu()
    assert links.shape[0] >= 50
    gold = set(map(tuple, data.links.tolist()))
    precision = sum(tuple(p) in gold for p in links.tolist()) / links.shape[0]
    assert precision > PRECISION_BOUND, precision
    entities = links.flatten()
    assert not bool(torch.isin(entities, split.train.flatten()).any())  # no seed entity
    assert not bool(torch.isin(entities, split.test[:30].flatten()).any())  # nothing excluded
    assert links[:, 0].unique().numel() == links.shape[0] == links[:, 1].unique().numel()  # one-to-one
    assert bool((links[:, 0] < data.n1).all()) and bool((links[:, 1] >= data.n1).all())
    # the first cycle end only records proposals; later ones accept the stable ones
    epochs, counts = zip(*model.pseudo_history)
    assert epochs[0] >= CONFIG.momentum_start and counts[0] == 0 and sum(counts) == links.shape[0]
    # reproduce's diagnostic counts the same links and the same precision
    added = added_pairs(model, result, split.train.shape[0], data)
    correct = round(precision * links.shape[0])
    assert added == {"count": links.shape[0], "gold": correct, "precision": round(correct / links.shape[0], 4)}
    # iterative learning's merged pairs count too: two gold links and a wrong one after the seeds
    grown = TrainResult(train_pairs=torch.cat([split.train, split.test[:2], split.test[2:3, [0]].repeat(1, 2)]))
    grown.train_pairs[-1, 1] = split.test[3, 1]
    both = added_pairs(model, grown, split.train.shape[0], data)
    assert both["count"] == links.shape[0] + 3 and both["gold"] == correct + 2


def test_validation_pairs_are_never_pseudo_linked(align_setup):
    """fit hands its clean validation pairs to PCMEA.exclude, as iterative learning blocks them: held-out
    seeds that became pseudo-links would be trained on and then validated on."""
    data, split = align_setup
    val = split.test[:40]
    model = PCMEA(data, CONFIG, seed=0)
    fit(model, data, split.train, pcmea_train_config(epochs=EPOCHS, log_every=0, eval_every=10), val_pairs=val,
        progress=False)
    assert bool(model.blocked[val.flatten()].all()) and int(model.blocked.sum()) == val.numel()
    links = model.pseudo_links
    assert links.shape[0] >= 50 and not bool(torch.isin(links.flatten(), val.flatten()).any())
    legacy = PCMEA(data, CONFIG, seed=0)  # legacy-style validation (candidates: the pairs) blocks nothing
    fit(legacy, data, split.train, pcmea_train_config(epochs=2, eval_every=1, val_candidates="pairs"), val_pairs=val,
        progress=False)
    assert not bool(legacy.blocked.any())


def test_calibration_accepts_only_repeated_proposals(align_setup):
    data, _ = align_setup
    model = PCMEA(data, PCMEAConfig(graph_dim=8, visual_dim=4, attribute_dim=4, relation_dim=4))
    n1 = data.n1
    first = torch.tensor([[0, n1 + 5], [1, n1 + 6], [2, n1 + 7]])
    model._calibrate(0, first)
    assert model.pseudo_links.shape == (0, 2)
    model._calibrate(1, torch.tensor([[0, n1 + 5], [1, n1 + 9], [3, n1 + 8]]))
    assert model.pseudo_links.tolist() == [[0, n1 + 5]]  # 1 changed partner, 3 is new
    model._calibrate(2, torch.tensor([[1, n1 + 9], [3, n1 + 8]]))
    assert model.pseudo_links.tolist() == [[0, n1 + 5], [1, n1 + 9], [3, n1 + 8]]
    assert bool(model.used[torch.tensor([0, 1, 3, n1 + 5, n1 + 9, n1 + 8])].all())
    assert [c for _, c in model.pseudo_history] == [0, 1, 2]


def test_momentum_encoder_and_momentum_contrast(align_setup, trained):
    data, split = align_setup
    model, initial, _ = trained
    assert model.momentum_active
    assert all(not p.requires_grad for p in model.momentum_encoder.parameters())
    online = dict(model.encoder.named_parameters())
    momentum = dict(model.momentum_encoder["encoder"].named_parameters())
    entity = "structure.entity"
    assert not torch.equal(momentum[entity], initial["encoder." + entity])  # it moved ...
    assert not torch.equal(momentum[entity], online[entity])  # ... and lags behind the online encoder
    model.eval()
    with torch.no_grad():
        out = model(data)
        cached = model.encode(data, model.momentum_encoder["encoder"], model.momentum_encoder["fusion"])["joint"]
    torch.testing.assert_close(model.momentum_joint, cached)
    pairs = split.train[:64]
    expected = contrastive_loss(out["joint"][pairs[:, 0]], cached[pairs[:, 1]], tau=0.05, combine="log")
    icl, log_q = model.joint_term(out, pairs)
    torch.testing.assert_close(icl, expected)
    torch.testing.assert_close(log_q, ial_target(out["joint"][pairs[:, 0]], out["joint"][pairs[:, 1]], tau=4.0))


def test_pseudo_links_join_the_batches(align_setup):
    """fit batches the pseudo-links with the training pairs at batch_size: more pairs, more batches."""
    data, split = align_setup
    model = PCMEA(data, PCMEAConfig(graph_dim=8, visual_dim=4, attribute_dim=4, relation_dim=4, momentum_start=50))
    model.pseudo_links = data.links[-20:].clone()
    seen = []
    loss = model.loss
    model.loss = lambda out, pairs: seen.append(out["rows"][pairs]) or loss(out, pairs)  # rows_per_batch
    fit(model, data, split.train[:90], pcmea_train_config(epochs=1, batch_size=30), progress=False)
    assert sorted(b.shape[0] for b in seen) == [20, 30, 30, 30]
    got = torch.cat(seen)
    expected = torch.cat([split.train[:90], data.links[-20:]])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
    assert bool(model.used[expected.flatten()].all())


def test_batch_rows_train_the_same_model_and_pseudo_links():
    """rows_per_batch (the default) against the full pass: the same embeddings, momentum contrast and
    pseudo-links; the loss maps the output rows back to entities for the momentum targets and ``used``."""
    data = AlignData.from_pair(make_pair(200, seed=2))
    config = PCMEAConfig(graph_dim=16, visual_dim=8, attribute_dim=8, relation_dim=8, momentum_start=3,
                         momentum_every=1, momentum=0.5, pseudo_every=1, pseudo_persist=1)
    runs = []
    for rows in (True, False):
        model = PCMEA(data, config, seed=5)
        seen = fit_recording_nodes(model, data, data.links[:60], pcmea_train_config(epochs=8, batch_size=25, seed=1), rows)
        training_calls = [n for n in seen if n is not None]
        assert len(training_calls) == (8 if rows else 0)
        assert model.momentum_active and model.pseudo_links.shape[0] > 0
        model.eval()
        with torch.no_grad():
            runs.append((model(data)["joint"], model.momentum_joint, model.pseudo_links, model.used.clone()))
    (joint_a, mom_a, links_a, used_a), (joint_b, mom_b, links_b, used_b) = runs
    torch.testing.assert_close(joint_a, joint_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mom_a, mom_b, atol=1e-5, rtol=1e-4)
    assert torch.equal(links_a, links_b) and torch.equal(used_a, used_b)
    assert bool(used_a[data.links[:60].flatten()].all())


def test_train_config_and_bad_config():
    cfg = pcmea_train_config()
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.step_per_batch, cfg.il) == (5e-4, 512, 1000, False, False)
    default = PCMEAConfig()
    assert (default.momentum, default.momentum_start, default.momentum_every, default.ucl_tau) == (0.999, 500, 20, 0.05)
    for bad in (dict(momentum=1.0), dict(pseudo_every=0), dict(pseudo_source="both"), dict(ucl_tau=0)):
        with pytest.raises(ValueError):
            PCMEAConfig(**bad)


def test_fit_refuses_iterative_learning_beside_pseudo_links():
    """Iterative learning would not see PCMEA's pseudo-links and could pair their entities again."""
    import dataclasses

    data = AlignData.from_pair(make_pair(120, seed=1))
    model = PCMEA(data, PCMEAConfig(graph_dim=8, visual_dim=4, attribute_dim=4, relation_dim=4), seed=0)
    cfg = dataclasses.replace(pcmea_train_config(epochs=2), il=True)
    with pytest.raises(ValueError, match=r"PCMEA adds its own training pairs .* train it with il=False"):
        fit(model, data, data.links[:30], cfg, progress=False)


def test_build_aligner_scales_the_schedule_with_epochs(align_setup):
    from psqe.align import build_aligner

    data, _ = align_setup
    model, cfg = build_aligner("pcmea", data, epochs=100)
    # 1000 epochs with momentum, pseudo-labels and the lr drop from 500: all move
    # to 50; momentum every 20 -> 2, pseudo-label checks every 5 -> 1 (at least
    # 1), 10 checks per cycle as before.
    assert (cfg.epochs, cfg.lr_drop_epoch, cfg.il_start, cfg.il_every) == (100, 50, 50, 1)
    c = model.config
    assert (c.momentum_start, c.pseudo_start, c.momentum_every, c.pseudo_every, c.pseudo_persist) == (50, None, 2, 1, 10)
    model, cfg = build_aligner("pcmea", data, epochs=100, momentum_start=7)  # an explicit value wins
    assert model.config.momentum_start == 7
    model, cfg = build_aligner("pcmea", data)
    assert (cfg.epochs, cfg.lr_drop_epoch, model.config.momentum_start) == (1000, 500, 500)
    _, cfg = build_aligner("eva", data, epochs=30)
    assert (cfg.epochs, cfg.lr_drop_epoch) == (30, None)
    with pytest.raises(ValueError, match="epochs"):
        build_aligner("mclea", data, epochs=-1)
