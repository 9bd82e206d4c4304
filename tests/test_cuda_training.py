"""The CUDA paths of training and seed generation (issue 5), each checked
against the CPU run of the same code or against the CPU tests' bounds.

They run only where a GPU and psqe's CUDA build are (``pytest -m cuda``;
elsewhere they show as skipped):

- the graph attention's fused path on CUDA (``_AttentionAggregate``: CSR
  products and ``sampled_addmm``), forward and backward, against CPU (the
  compiled layer kernels there);
- MCLEA's hand-written losses on CUDA (and under autocast) against CPU;
- each aligner's forward pass on CUDA against CPU, and its batch rows
  (``rows_per_batch``) against its full pass on CUDA;
- ``fit`` on CUDA with each aligner's own settings (MEAformer: float16
  autocast and the gradient scaler): a supervised run beats the bound of the
  CPU test, and PCMEA's pseudo-links (its momentum targets indexed through
  ``out["rows"]``) are as precise;
- ``generate_seeds`` on CUDA on the planted pair of ``test_pipeline``: the
  CPU test's bounds, and most of the CPU run's seeds.

CPU and CUDA sum in different orders, so the comparisons allow float32
rounding relative to the largest entry (``REL``), never more.
"""
from __future__ import annotations

import copy

import pytest
import torch

import psqe
from psqe.align import (EVA, MCLEA, AlignData, MEAformer, build_aligner, embed, eva_train_config, evaluate, fit,
                        legacy_split)
from psqe.align.encoders import StructureEncoder
from psqe.align.losses import icl_ial_losses, icl_with_target
from psqe.align.mclea import mclea_train_config
from psqe.align.meaformer import meaformer_train_config
from psqe.align.pcmea import PCMEA, pcmea_train_config
from psqe.data.synthetic import make_pair

import test_align_eva
import test_align_mclea
import test_align_meaformer
import test_align_pcmea
import test_pipeline
from align_common import assert_rows_match_full_pass, hits1
from conftest import HAS_CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and psqe built with CUDA")]

DEVICE = "cuda"
#: Largest |CUDA - CPU| allowed, relative to the largest |CPU| entry of a tensor.
REL = 1e-4


def assert_near(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = REL) -> None:
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    assert err <= rel * max(scale, 1e-12), f"{what}: max |cuda - cpu| = {err:.3g}, max |cpu| = {scale:.3g}"


@pytest.fixture(scope="module")
def small():
    """A 300 + 300-entity synthetic pair on the CPU and on the GPU."""
    data = AlignData.from_pair(make_pair(300, seed=3))
    return data, data.to(DEVICE)


def test_graph_attention_forward_and_backward_match_cpu(small):
    data, gpu = small
    torch.manual_seed(0)
    cpu_model = StructureEncoder(data.num_entities, dim=32)
    gpu_model = copy.deepcopy(cpu_model).to(DEVICE)
    weight = torch.randn(data.num_entities, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    for model, d in ((cpu_model, data), (gpu_model, gpu)):
        out = model(d.attention_graph())
        (out * weight.to(d.device)).sum().backward()
        outs.append(out)
    assert_near(outs[1], outs[0], "attention output")
    grads = dict(cpu_model.named_parameters())
    for name, p in gpu_model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, name
        assert_near(p.grad, grads[name].grad, f"grad of {name}")


@pytest.mark.parametrize("name", ["eva", "mclea", "meaformer", "pcmea"])
def test_forward_matches_cpu(small, name):
    data, gpu = small
    cpu_model, _ = build_aligner(name, data, seed=0)
    gpu_model = copy.deepcopy(cpu_model).to(DEVICE)
    want, got = embed(cpu_model, data), embed(gpu_model, gpu)
    assert set(got) == set(want)
    for key, value in want.items():
        if value.is_floating_point():
            assert_near(got[key], value, f"{name} {key}")


@pytest.mark.parametrize("amp", [False, True])
def test_fused_mclea_losses_match_cpu(amp):
    """MCLEA's hand-written losses (``icl_with_target``, ``icl_ial_losses``) on CUDA against CPU: values, the
    IAL target and the gradients; under float16 autocast they compute in float32 (``custom_fwd``)."""
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(96, 24, generator=g) for _ in range(3))
    inputs = (x, x + 0.5 * y, z)
    runs = []
    for device in ("cpu", DEVICE):
        a, b, c = (t.to(device, copy=True).requires_grad_() for t in inputs)
        with torch.autocast(device, dtype=torch.float16, enabled=amp and device == DEVICE):
            joint, log_q = icl_with_target(a, b)
            icl, ial = icl_ial_losses(c, b, log_q)
        assert joint.dtype == icl.dtype == ial.dtype == log_q.dtype == torch.float32
        (joint + 0.7 * icl + 50.0 * ial).backward()
        runs.append((joint, icl, ial, log_q.exp(), a.grad, b.grad, c.grad))  # exp: the masked diagonal is -1e9
    for what, want, got in zip(("joint icl", "icl", "ial", "target", "grad a", "grad b", "grad c"), *runs):
        assert_near(got, want, what)


@pytest.mark.parametrize("name", ["mclea", "meaformer", "pcmea"])
def test_batch_rows_match_full_pass(small, name):
    _, gpu = small
    model, _ = build_aligner(name, gpu, seed=0)
    model.to(DEVICE).eval()  # MEAformer's dropout would draw differently in the two passes
    assert model.rows_per_batch
    assert_rows_match_full_pass(model, gpu, rtol=1e-4, atol=1e-5)


def test_eva_supervised_run():
    pair = make_pair(800, seed=0, noise={"visual": 2.0, "attribute": 4.0, "relation": 4.0})  # test_align_eva's
    data = AlignData.from_pair(pair)
    split = legacy_split(pair.links).to_pair_index(data)
    model = EVA(data, seed=0)
    result = fit(model, data, split.train, eva_train_config(epochs=50, lr=5e-3, device=DEVICE), progress=False)
    assert evaluate(embed(model, data.to(DEVICE)), split, data)["hits@1"] > test_align_eva.BOUND
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("cls, epochs, bound, config", [
    (MCLEA, test_align_mclea.EPOCHS, test_align_mclea.BOUND, mclea_train_config),
    (MEAformer, test_align_meaformer.EPOCHS, test_align_meaformer.BOUND, meaformer_train_config),
], ids=["mclea", "meaformer"])
def test_supervised_run_beats_the_cpu_bound(align_setup, cls, epochs, bound, config):
    """The CPU tests' runs (model, epochs, settings), on CUDA."""
    data, split = align_setup
    model = cls(data, seed=0)
    cfg = config(epochs=epochs, log_every=0, device=DEVICE)
    assert cfg.amp == (cls is MEAformer)  # MEAformer trains under float16 autocast with a gradient scaler
    result = fit(model, data, split.train, cfg, progress=False)
    h = hits1(model, data.to(DEVICE), split)
    assert h > bound, h
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.losses[-1] < result.losses[0]


def test_pcmea_supervised_run_and_pseudo_links(align_setup):
    data, split = align_setup
    model = PCMEA(data, test_align_pcmea.CONFIG, seed=0)
    model.exclude(split.test[:30])
    fit(model, data, split.train, pcmea_train_config(epochs=test_align_pcmea.EPOCHS, log_every=0, device=DEVICE),
        progress=False)
    assert model.momentum_active and model.momentum_joint.device.type == DEVICE
    assert hits1(model, data.to(DEVICE), split) > test_align_pcmea.BOUND
    links = model.pseudo_links.cpu()
    gold = set(map(tuple, data.links.tolist()))
    assert links.shape[0] >= 50
    assert sum(tuple(p) in gold for p in links.tolist()) / links.shape[0] > test_align_pcmea.PRECISION_BOUND
    assert not bool(torch.isin(links.flatten(), split.train.flatten()).any())
    assert not bool(torch.isin(links.flatten(), split.test[:30].flatten()).any())


def test_generate_seeds_on_cuda():
    kg1, kg2, links = test_pipeline.planted_pair()
    cpu = psqe.generate_seeds(kg1, kg2, test_pipeline.small_config(), links=links)
    before = torch.cuda.memory_allocated()  # other tests' tensors may still be there
    torch.cuda.reset_peak_memory_stats()
    gpu = psqe.generate_seeds(kg1, kg2, test_pipeline.small_config(device=DEVICE), links=links)
    assert torch.cuda.max_memory_allocated() > before  # it did run on the GPU
    assert gpu.seeds.device.type == "cpu" and gpu.seeds.dtype == torch.long
    assert gpu.quality["stage1"]["precision"] > 0.6 and gpu.quality["stage3"]["precision"] > 0.6
    assert gpu.quality["stage2"]["count"] <= gpu.quality["stage2_before_mic"]["count"]
    # Stage I: a greedy match per K-means cluster (CUDA's K-means sums in another order): nearly the same pairs.
    s1 = {tuple(p) for p in gpu.stages["stage1"].tolist()}
    assert len(s1 & {tuple(p) for p in cpu.stages["stage1"].tolist()}) >= 0.9 * len(s1)
    # Stage II trains (CUDA sums in another order); most seeds agree all the same.
    final = {tuple(p) for p in gpu.seeds.tolist()}
    assert len(final & {tuple(p) for p in cpu.seeds.tolist()}) >= 0.7 * max(len(final), cpu.seeds.shape[0])
