"""The generative model behind the SIMULATED visual modality (setting R2).

Internal to :mod:`psqe.features.simulated` (read its docstring first): the
coarse classes, the draws made once per seed, the features at a given noise
scale, their exact rank-r projection, and the calibration of the noise scale
to a target Type I precision. Everything here uses the gold links.

>>> import torch
>>> from psqe.features.simulated_model import _mode_per_group
>>> g, v = _mode_per_group(torch.tensor([0, 0, 0, 1]), torch.tensor([5, 3, 5, 2]))
>>> g.tolist(), v.tolist()
([0, 1], [5, 2])
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..matching import greedy_one_to_one
from ._util import progress
from .image import fill_missing

log = logging.getLogger("psqe.features.simulated")


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of the SIMULATED visual modality (model: :mod:`psqe.features.simulated`).

    ``dim``: feature size (2048 like ResNet-152); ``latent_dim``: rank ``r``;
    ``coverage``: fraction of entities with an image; ``n_classes``: coarse
    classes (the last one is "misc"); ``base`` / ``class_scale`` /
    ``individual_scale``: shared level, class and individual parts of the
    latent; ``degree_exponent`` / ``degree_clip``: how the noise grows as the
    degree falls; ``mixing``: latent dimensions per output dimension;
    ``target_precision`` / ``budget`` / ``tolerance`` / ``max_evals``: the
    calibration (Type I precision of the top ``budget`` greedy pairs);
    ``initial_scale``: its first noise scale.
    """

    dim: int = 2048
    latent_dim: int = 128
    coverage: float = 0.7
    n_classes: int = 16
    base: float = 0.6
    class_scale: float = 0.5
    individual_scale: float = 0.6
    degree_exponent: float = 0.5
    degree_clip: tuple[float, float] = (0.25, 4.0)
    mixing: int = 2
    target_precision: float = 0.75
    budget: int = 1000
    tolerance: float = 0.01
    max_evals: int = 14
    initial_scale: float = 1.0

    def check(self) -> None:
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage}")
        if not 0.0 < self.target_precision < 1.0:
            raise ValueError(f"target_precision must be in (0, 1), got {self.target_precision}")
        if self.latent_dim < 1 or self.dim < self.latent_dim:
            raise ValueError(f"need 1 <= latent_dim <= dim, got latent_dim={self.latent_dim}, dim={self.dim}")
        if self.budget < 1 or self.n_classes < 1 or self.mixing < 1 or self.max_evals < 2:
            raise ValueError("budget, n_classes and mixing must be >= 1 and max_evals >= 2")
        for name in ("base", "class_scale", "individual_scale", "degree_exponent"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not isinstance(self.degree_clip, (tuple, list)) or len(self.degree_clip) != 2:
            raise ValueError(f"degree_clip must be a pair (low, high), got {self.degree_clip!r}")
        lo, hi = self.degree_clip
        if not 0.0 < lo <= hi < math.inf:
            raise ValueError(f"degree_clip must be (low, high) with 0 < low <= high, got {self.degree_clip}")
        if not 0.0 < self.tolerance < 1.0:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if not 0.0 < self.initial_scale < math.inf:
            raise ValueError(f"initial_scale must be a finite number > 0 (the calibration starts there), "
                             f"got {self.initial_scale}")


def _mode_per_group(groups: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each distinct group, its most frequent value (ties: the smallest value)."""
    if groups.numel() == 0:
        return groups[:0], values[:0]
    pairs, counts = torch.unique(torch.stack([groups, values], 1), dim=0, return_counts=True)
    g, v = pairs[:, 0], pairs[:, 1]
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(-counts[order], stable=True)]
    order = order[torch.argsort(g[order], stable=True)]
    g, v = g[order], v[order]
    first = torch.ones_like(g, dtype=torch.bool)
    first[1:] = g[1:] != g[:-1]
    return g[first], v[first]


def top_relation(kg) -> torch.Tensor:
    """Per entity (local order) its most frequent relation id as head or tail (-1: none)."""
    t = kg.local_triples
    out = torch.full((kg.num_entities,), -1, dtype=torch.long)
    ent, rel = _mode_per_group(torch.cat([t[:, 0], t[:, 2]]), torch.cat([t[:, 1], t[:, 1]]))
    out[ent] = rel
    return out


def coarse_classes(pair, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse classes of both graphs' entities from their most frequent relation (uses gold links)."""
    misc = n_classes - 1
    top1, top2 = top_relation(pair.kg1), top_relation(pair.kg2)
    rels, counts = torch.unique(top1[top1 >= 0], return_counts=True)
    ranked = sorted(range(rels.numel()), key=lambda i: (-int(counts[i]), int(rels[i])))[:misc]
    rel_class = {int(rels[i]): c for c, i in enumerate(ranked)}
    cls1 = torch.tensor([rel_class.get(int(r), misc) for r in top1.tolist()], dtype=torch.long)
    cls2 = torch.full((pair.kg2.num_entities,), misc, dtype=torch.long)
    links = pair.links_local()
    voted = top2[links[:, 1]] >= 0
    r2, c = _mode_per_group(top2[links[voted, 1]], cls1[links[voted, 0]])
    rel2_class = dict(zip(r2.tolist(), c.tolist()))
    has = top2 >= 0
    cls2[has] = torch.tensor([rel2_class.get(int(r), misc) for r in top2[has].tolist()], dtype=torch.long)
    cls2[links[:, 1]] = cls1[links[:, 0]]
    return cls1, cls2


def _degree_factor(kg, cfg: SimulationConfig) -> torch.Tensor:
    deg = kg.degrees().float()
    ref = float(deg.median()) if deg.numel() else 0.0
    lo, hi = cfg.degree_clip
    return (((1.0 + ref) / (1.0 + deg)) ** cfg.degree_exponent).clamp(lo, hi)


class Simulator:
    """Everything drawn once (common random numbers); ``features(s)`` is a pure function of ``s``."""

    def __init__(self, pair, cfg: SimulationConfig, seed: int) -> None:
        if pair.links is None or pair.links.shape[0] == 0:
            raise ValueError("simulate_visual: the simulated visual modality needs the pair's gold links")
        self.cfg, self.seed = cfg, seed
        n1, n2, r = pair.kg1.num_entities, pair.kg2.num_entities, cfg.latent_dim
        self.n1 = n1
        self.links = pair.links_local()
        self.cls1, self.cls2 = coarse_classes(pair, cfg.n_classes)
        g = torch.Generator().manual_seed(int(seed))
        self.base = cfg.base * (0.5 + torch.rand(r, generator=g))
        classes = cfg.class_scale * torch.randn(cfg.n_classes, r, generator=g)
        self.present1 = self._coverage(n1, g)
        self.present2 = self._coverage(n2, g)
        u1 = cfg.individual_scale * torch.randn(n1, r, generator=g)
        u2 = cfg.individual_scale * torch.randn(n2, r, generator=g)
        both = self.present1[self.links[:, 0]] & self.present2[self.links[:, 1]]
        u2[self.links[both, 1]] = u1[self.links[both, 0]]
        self.both = both
        self.signal1 = self.base + classes[self.cls1] + u1
        self.signal2 = self.base + classes[self.cls2] + u2
        self.noise1 = torch.randn(n1, r, generator=g) * _degree_factor(pair.kg1, cfg).unsqueeze(1)
        self.noise2 = torch.randn(n2, r, generator=g) * _degree_factor(pair.kg2, cfg).unsqueeze(1)
        mix = torch.zeros(cfg.dim, r)
        cols = torch.randint(0, r, (cfg.dim, cfg.mixing), generator=g)
        cols[:r, 0] = torch.arange(r)  # every latent dimension reaches the output
        mix.scatter_add_(1, cols, -torch.log1p(-torch.rand(cfg.dim, cfg.mixing, generator=g)))
        self.mix = mix
        self.basis = torch.linalg.qr(mix).Q  # [D, r] orthonormal basis of the features' span
        gold = torch.full((n1,), -1, dtype=torch.long)
        gold[self.links[:, 0]] = self.links[:, 1]
        self.gold = gold

    def _coverage(self, n: int, g: torch.Generator) -> torch.Tensor:
        present = torch.zeros(n, dtype=torch.bool)
        present[torch.randperm(n, generator=g)[: round(self.cfg.coverage * n)]] = True
        return present

    def features(self, s: float) -> torch.Tensor:
        """``[N1 + N2, D]`` simulated features at noise scale ``s`` (missing rows filled)."""
        h1 = torch.relu(self.signal1 + s * self.noise1)
        h2 = torch.relu(self.signal2 + s * self.noise2)
        x = torch.cat([h1, h2]) @ self.mix.T
        return fill_missing(x, torch.cat([self.present1, self.present2]), seed=self.seed)

    def projected(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` in the rank-r basis, divided by their full norms."""
        return (x @ self.basis) / x.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def precision(self, a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
        res = greedy_one_to_one(a.to(device), b.to(device), limit=self.cfg.budget)
        rows, cols = res.rows.cpu(), res.cols.cpu()
        return float((self.gold[rows] == cols).float().mean()) if rows.numel() else 0.0

    def evaluate(self, s: float, device: torch.device) -> float:
        p = self.projected(self.features(s))
        return self.precision(p[: self.n1], p[self.n1:], device)


def calibrate(sim: Simulator, cfg: SimulationConfig, device: torch.device,
              show: bool | None = None) -> tuple[float, float, list[tuple[float, float]]]:
    """Noise scale whose Type I precision is closest to the target, with that precision
    and every ``(scale, precision)`` evaluated; at most ``cfg.max_evals`` evaluations."""
    target, tol = cfg.target_precision, cfg.tolerance
    history: list[tuple[float, float]] = []
    bar = progress(None, cfg.max_evals, "calibrating simulated visual", show, unit="eval")

    def f(log_s: float) -> float:
        p = sim.evaluate(math.exp(log_s), device)
        history.append((math.exp(log_s), p))
        bar.update(1)
        bar.set_postfix(scale=f"{math.exp(log_s):.4f}", precision=f"{p:.3f}")
        log.info("simulated visual calibration: noise scale %.4f -> Type I precision %.4f (target %.3f)",
                 math.exp(log_s), p, target)
        return p - target

    lo = hi = math.log(cfg.initial_scale)
    f_lo = f_hi = f(lo)
    step = math.log(2.0)
    # Bracket: precision falls as the noise grows.
    while abs(f_lo) > tol and len(history) < cfg.max_evals and (f_lo > 0) == (f_hi > 0):
        if f_lo > 0:
            lo, f_lo = hi, f_hi
            hi = hi + step
            f_hi = f(hi)
        else:
            hi, f_hi = lo, f_lo
            lo = lo - step
            f_lo = f(lo)
        if abs(f_hi) <= tol:
            break
        step *= 1.5
    side = 0
    while len(history) < cfg.max_evals and min(abs(f_lo), abs(f_hi)) > tol and f_lo > 0 > f_hi:
        mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)  # false position on log s
        mid = min(max(mid, lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
        f_mid = f(mid)
        if f_mid > 0:
            lo, f_lo = mid, f_mid
            if side == 1:
                f_hi /= 2  # Illinois: keep the stale end from stalling the step
            side = 1
        else:
            hi, f_hi = mid, f_mid
            if side == -1:
                f_lo /= 2
            side = -1
    bar.close()
    best = min(history, key=lambda sp: (abs(sp[1] - target), sp[0]))
    return best[0], best[1], history
