"""SIMULATED visual modality (benchmark setting R2): a stand-in for image features.

This is a simulation, not an image encoder. It uses the gold links — the way
a camera "uses" the world: matched entities look alike, with noise — so it
may only feed benchmarks where the real image features cannot be had
(BENCHMARK-PROTOCOL.md, setting R2). Every name, log line and summary says
"simulated".

Model (deterministic by ``seed``; ``r = latent_dim``, ``D = dim``):

- Coverage: ``round(coverage * N)`` entities per graph, drawn at random, have
  an "image"; the others get EVA's rule (:func:`psqe.features.image.fill_missing`,
  over the rows of both graphs together, as EVA does).
- Coarse classes: kg1 entities take the class of their most frequent relation
  (the ``n_classes - 1`` relations that are most often an entity's most
  frequent one get a class each; the rest and isolated entities share a last
  "misc" class). A kg2 relation takes the majority class of the kg1
  counterparts of the linked kg2 entities whose most frequent relation it is;
  a linked kg2 entity takes its counterpart's class.
- Latent before the non-linearity: ``h = relu(base + C[class] + U + s * g(deg) * eps)``
  with ``C ~ N(0, class_scale^2)`` per class, ``U ~ N(0, individual_scale^2)``
  shared by the two entities of a gold pair that both have an image (own
  draw otherwise), ``eps ~ N(0, 1)`` per entity, and
  ``g(deg) = clip(((1 + median deg) / (1 + deg)) ** degree_exponent, *degree_clip)``:
  sparse entities are noisier.
- Features ``x = B h`` with a fixed sparse non-negative mixing ``B [D, r]``:
  non-negative like pooled ResNet activations, with a large component shared
  by all images (``base``), so unrelated images have a clearly positive cosine.
- One noise scale ``s`` is calibrated (bracketing, then Illinois false position
  on ``log s``; common random numbers; at most ``max_evals`` evaluations) so that
  Type I seeds — greedy one-to-one on the cosine of these features alone, top
  ``budget`` pairs — reach ``target_precision``. Each evaluation runs on the
  exact rank-``r`` projection (rows with an image are exact; filled rows lose
  only their component outside the span of ``B``, a zero-mean term).

>>> import torch
>>> from psqe.data import KGPair, KnowledgeGraph
>>> from psqe.features.simulated import simulate_visual
>>> g = torch.Generator().manual_seed(0)
>>> n = 400
>>> kg1 = KnowledgeGraph(torch.arange(n), [str(i) for i in range(n)], torch.randint(0, n, (1200, 3), generator=g) % n)
>>> kg2 = KnowledgeGraph(torch.arange(n, 2 * n), [str(i) for i in range(n)],
...                      torch.randint(0, n, (1200, 3), generator=g) % n + torch.tensor([n, 0, n]))
>>> pair = KGPair(kg1, kg2, links=torch.stack([torch.arange(300), torch.arange(n, n + 300)], 1))
>>> sim = simulate_visual(pair, dim=64, latent_dim=16, budget=100, seed=0)
>>> sim.features1.shape, abs(sim.precision - 0.75) <= 0.03, bool((sim.features1[sim.present1] >= 0).all())
(torch.Size([400, 64]), True, True)
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import torch

from .simulated_model import SimulationConfig, Simulator, calibrate, coarse_classes, top_relation

log = logging.getLogger(__name__)

__all__ = ["SimulatedVisual", "SimulationConfig", "coarse_classes", "simulate_visual", "top_relation"]


@dataclass(frozen=True)
class SimulatedVisual:
    """Simulated visual features of a pair and how they were calibrated.

    Attributes:
        features1, features2: float32 ``[N_k, dim]`` (missing rows filled by EVA's rule).
        present1, present2: bool ``[N_k]``: which entities have a simulated image.
        noise_scale: the calibrated (or given) noise scale ``s``.
        precision: Type I precision of the top ``budget`` greedy pairs at ``noise_scale``.
        target_precision, budget: the calibration target.
        converged: ``|precision - target| <= tolerance``.
        history: every ``(noise_scale, precision)`` evaluated, in order.
        cosine_true / cosine_random: mean cosine of gold pairs that both have an
            image / of random non-gold pairs of entities with images.
        classes1, classes2: coarse class per entity.
    """

    features1: torch.Tensor
    present1: torch.Tensor
    features2: torch.Tensor
    present2: torch.Tensor
    noise_scale: float
    precision: float
    target_precision: float
    budget: int
    converged: bool
    history: tuple[tuple[float, float], ...]
    cosine_true: float
    cosine_random: float
    classes1: torch.Tensor
    classes2: torch.Tensor
    seed: int
    seconds: float
    config: SimulationConfig = field(default_factory=SimulationConfig)

    def summary(self) -> dict:
        """JSON-ready report of the simulation and its calibration."""
        cfg = asdict(self.config)
        return {
            "kind": "simulated visual modality (uses gold links; R2 stand-in, not image features)",
            "noise_scale": self.noise_scale, "type1_precision": round(self.precision, 4),
            "target_precision": self.target_precision, "budget": self.budget, "converged": self.converged,
            "evaluations": len(self.history), "cosine_true_pairs": round(self.cosine_true, 4),
            "cosine_random_pairs": round(self.cosine_random, 4), "seed": self.seed,
            "coverage": [round(float(p.float().mean()), 4) for p in (self.present1, self.present2)],
            "seconds": round(self.seconds, 2), "config": cfg,
        }


def simulate_visual(pair, *, seed: int = 0, noise_scale: float | None = None,
                    device: str | torch.device = "cpu", config: SimulationConfig | None = None,
                    progress: bool | None = None, **overrides) -> SimulatedVisual:
    """Build the SIMULATED visual modality of ``pair`` (uses its gold links).

    Args:
        pair: a :class:`psqe.data.KGPair` with gold links.
        seed: everything random is drawn from this seed.
        noise_scale: skip the calibration and use this scale.
        device: where the calibration's greedy selections run.
        progress: a bar over the calibration's evaluations: None on a terminal only, False never.
        config: a :class:`SimulationConfig`; keyword ``overrides`` replace its fields
            (e.g. ``coverage=0.7, target_precision=0.75, budget=1000, dim=2048``).

    Returns:
        A :class:`SimulatedVisual` with the features, presence masks and the
        calibrated noise scale with the precision it reached.
    """
    cfg = config or SimulationConfig()
    if overrides:
        unknown = set(overrides) - set(SimulationConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"simulate_visual: unknown option(s) {sorted(unknown)}")
        cfg = SimulationConfig(**{**asdict(cfg), **overrides})
    cfg.check()
    t0 = time.perf_counter()
    device = torch.device(device)
    log.info("SIMULATED visual modality for %s (uses gold links): %d + %d entities, dim %d, coverage %.2f, seed %d",
             pair.name or "pair", pair.kg1.num_entities, pair.kg2.num_entities, cfg.dim, cfg.coverage, seed)
    sim = Simulator(pair, cfg, seed)
    with_image = min(int(sim.present1.sum()), int(sim.present2.sum()))
    if with_image == 0:
        raise ValueError(f"simulate_visual: coverage {cfg.coverage} gives no entity of a graph an image "
                         f"({pair.kg1.num_entities} + {pair.kg2.num_entities} entities)")
    smaller = min(pair.kg1.num_entities, pair.kg2.num_entities)
    if noise_scale is None and cfg.budget > smaller:
        raise ValueError(f"simulate_visual: budget {cfg.budget} exceeds the smaller graph's {smaller} entities: "
                         "the calibration's top-budget Type I pairs cannot exist")
    if noise_scale is None:
        noise_scale, prec, history = calibrate(sim, cfg, device, progress)
    else:
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        prec = sim.evaluate(noise_scale, device)
        history = [(noise_scale, prec)]
    x = sim.features(noise_scale)
    p = sim.projected(x)
    a, b = p[: sim.n1], p[sim.n1:]
    pairs = sim.links[sim.both]
    cos_true = float((a[pairs[:, 0]] * b[pairs[:, 1]]).sum(1).mean()) if pairs.numel() else float("nan")
    g = torch.Generator().manual_seed(int(seed) + 1)
    i1 = sim.present1.nonzero().squeeze(1)
    i2 = sim.present2.nonzero().squeeze(1)
    ri = i1[torch.randint(0, i1.numel(), (20000,), generator=g)]
    rj = i2[torch.randint(0, i2.numel(), (20000,), generator=g)]
    keep = sim.gold[ri] != rj
    cos_random = float((a[ri[keep]] * b[rj[keep]]).sum(1).mean())
    converged = abs(prec - cfg.target_precision) <= cfg.tolerance
    result = SimulatedVisual(
        x[: sim.n1].contiguous(), sim.present1, x[sim.n1:].contiguous(), sim.present2,
        float(noise_scale), float(prec), cfg.target_precision, cfg.budget, converged, tuple(history),
        cos_true, cos_random, sim.cls1, sim.cls2, int(seed), time.perf_counter() - t0, cfg)
    level = logging.INFO if converged or noise_scale is not None and len(history) == 1 else logging.WARNING
    log.log(level, "SIMULATED visual modality: noise scale %.4f gives Type I precision %.4f (target %.3f, %s) "
            "after %d evaluations; mean cosine true pairs %.3f vs random pairs %.3f; %.1f s",
            noise_scale, prec, cfg.target_precision, "reached" if converged else "NOT reached", len(history),
            cos_true, cos_random, result.seconds)
    return result
