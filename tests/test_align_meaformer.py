"""MEAformer (psqe.align.meaformer): a supervised run on a synthetic pair must
beat an H@1 bound that the untrained model does not reach; the modality
transformer's shapes and per-entity weights, determinism, learned weights."""
from __future__ import annotations

import pytest
import torch

from psqe.align import AlignData, fit
from psqe.align.meaformer import MEAformer, MEAformerConfig, ModalityTransformerLayer, meaformer_train_config
from psqe.data.synthetic import make_pair

from align_common import assert_rows_match_full_pass, fit_recording_nodes, hits1

pytestmark = pytest.mark.one_thread

EPOCHS = 25
#: Test H@1 (legacy protocol, 30% of the gold links for training), measured:
#: untrained 0.202, 25 epochs 0.520.
BOUND = 0.40


@pytest.fixture(scope="module")
def trained(align_setup):
    data, split = align_setup
    model = MEAformer(data, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    weights_before = model.modality_weights(data)
    result = fit(model, data, split.train, meaformer_train_config(epochs=EPOCHS, log_every=0), progress=False)
    return model, before, weights_before, result


def test_supervised_run_beats_bound_untrained_does_not(align_setup, trained):
    data, split = align_setup
    untrained = MEAformer(data, seed=0)
    fit(untrained, data, split.train, meaformer_train_config(epochs=0), progress=False)
    model, _, _, result = trained
    h0, h = hits1(untrained, data, split), hits1(model, data, split)
    assert h0 < BOUND < h, (h0, h)
    assert result.losses[-1] < result.losses[0]


def test_learned_weights_move(align_setup, trained):
    data, _ = align_setup
    model, before, weights_before, _ = trained
    params = dict(model.named_parameters())
    for name in ("weighting.log_vars", "fusion.0.query.weight", "fusion.0.ffn.0.weight", "encoder.structure.entity",
                 "encoder.linears.relation.weight"):
        assert not torch.allclose(params[name], before[name]), name
    after = model.modality_weights(data)
    assert list(after) == model.modalities and sum(after.values()) == pytest.approx(1.0)
    assert max(abs(after[m] - weights_before[m]) for m in after) > 1e-3


def test_outputs_weights_and_dropout(align_setup):
    data, split = align_setup
    model = MEAformer(data, MEAformerConfig(hidden=12, intermediate=20), seed=0)
    n, m = data.num_entities, len(model.modalities)
    model.eval()
    out = model(data)
    assert model.modalities == ["visual", "attribute", "relation", "graph"]
    assert all(out[k].shape == (n, 12) for k in model.modalities)
    assert out["hidden"].shape == (n, m, 12) and out["weights"].shape == (n, m)
    assert out["joint"].shape == (n, 12 * m)
    torch.testing.assert_close(out["weights"].sum(1), torch.ones(n))
    assert float(out["weights"].detach().std(0).max()) > 0  # weights are per entity
    # joint = per-entity weight times the normalised raw embedding, block by block
    block = out["joint"][:, 12:24]
    torch.testing.assert_close(block.norm(dim=1), out["weights"][:, 1])
    torch.testing.assert_close(model(data)["joint"], out["joint"])  # eval: no dropout
    model.train()
    assert not torch.equal(model(data)["weights"], model(data)["weights"])  # attention dropout
    loss = model.loss(model(data), split.train[:64])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.weighting.log_vars.grad is not None and model.fusion[0].key.weight.grad is not None


def test_mixed_precision_forward_and_loss():
    # fit's AMP is CUDA float16 only; CPU bfloat16 autocast exercises the same casts here.
    data = AlignData.from_pair(make_pair(100, seed=0))
    model = MEAformer(data, MEAformerConfig(hidden=16, intermediate=8), seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(data)
        loss = model.loss(out, data.links[:30])
    assert out["visual"].dtype == torch.bfloat16 and out["graph"].dtype == torch.float32  # graph kept in float32
    assert out["joint"].dtype == loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.fusion.parameters())


def test_transformer_layer_attention_shape():
    layer = ModalityTransformerLayer(hidden=8, heads=2, intermediate=16, dropout=0.0)
    x = torch.randn(5, 3, 8)
    y, probs = layer(x)
    assert y.shape == (5, 3, 8) and probs.shape == (5, 2, 3, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 2, 3))
    no_ffn = ModalityTransformerLayer(hidden=8, heads=1, intermediate=16, dropout=0.0, use_intermediate=False)
    assert no_ffn.ffn is None and no_ffn(x)[0].shape == (5, 3, 8)


def test_same_seed_same_embedding():
    data = AlignData.from_pair(make_pair(200, seed=2))
    joints = []
    for _ in range(2):
        model = MEAformer(data, MEAformerConfig(hidden=16, intermediate=24), seed=5)
        fit(model, data, data.links[:50], meaformer_train_config(epochs=3, batch_size=20, seed=1), progress=False)
        model.eval()
        joints.append(model(data)["joint"].detach())
    assert torch.equal(joints[0], joints[1])


def test_batch_rows_are_the_full_pass_rows():
    """Training on the batch's rows (rows_per_batch) computes what the full pass computes for them."""
    data = AlignData.from_pair(make_pair(200, seed=2))
    config = MEAformerConfig(hidden=16, intermediate=24, dropout=0.0)
    model = MEAformer(data, config, seed=5)
    assert_rows_match_full_pass(model, data)
    # a few epochs of several steps each: the same model either way (no dropout to draw)
    joints = []
    for rows in (True, False):
        model = MEAformer(data, config, seed=5)
        seen = fit_recording_nodes(model, data, data.links[:50], meaformer_train_config(epochs=3, batch_size=20, seed=1),
                                   rows)
        assert len(seen) == 9  # 3 batches (20, 20, 10 pairs) a step each, 3 epochs
        assert all(n is None for n in seen) if not rows else [n.numel() for n in seen[:3]] == [40, 40, 20]
        model.eval()
        joints.append(model(data)["joint"].detach())
    torch.testing.assert_close(joints[0], joints[1], atol=1e-5, rtol=1e-4)


def test_train_config_and_bad_config():
    cfg = meaformer_train_config()
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (5e-4, 1e-4, 3500, 250)
    assert (cfg.step_per_batch, cfg.scheduler, cfg.warmup, cfg.grad_clip, cfg.amp, cfg.il) == (
        True, "cosine", 0.15, 1.0, True, False)
    assert meaformer_train_config(epochs=10).epochs == 10
    for bad in (dict(hidden=10, heads=3), dict(dropout=1.0), dict(layers=0)):
        with pytest.raises(ValueError):
            MEAformerConfig(**bad)
