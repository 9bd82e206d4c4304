"""``PSQEConfig``: every default of PSQE-SPEC.md in one place.

Where the paper and the authors' script differ, the paper's behaviour is the
default and the script's is an option:

| setting | paper (default) | script option |
|---|---|---|
| Stage I similarity | ``stage1_similarity="fused"`` | ``"raw_relation_attribute"`` (``[h_r, h_a]``) |
| MIC | ``mic_both_directions=False`` (row check, both agree) | ``True`` adds the column check |
| Stage III threshold | ``stage3_schedule="paper"`` (fixed ``eta``) | ``"script"`` (``eta_i``, capped count) |

>>> from psqe.seeds.config import PSQEConfig
>>> cfg = PSQEConfig(budget=500)
>>> cfg.budget, cfg.weights["visual"], cfg.tuning.epochs
(500, 0.8, 300)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .fusion import DEFAULT_WEIGHTS
from .stage2_train import TuningConfig


@dataclass(frozen=True)
class PSQEConfig:
    """Parameters of :func:`psqe.generate_seeds`.

    Attributes:
        budget: ``n``, initial seed budget (1000 on DBP15K, 5000 on DWY15K).
        weights: modality weights (visual 0.8, attribute 0.1, relation 0.1).
        n_clusters: K-means clusters ``K`` (script default 5; paper searches 2..5).
        kmeans_backend: ``"torch"`` (on the data's device) or ``"sklearn"``.
        stage1_similarity: ``"fused"`` (paper) or ``"raw_relation_attribute"`` (script).
        tuning: Stage II training settings (300 epochs, lr 0.01, batch 2000, ...).
        use_stage2, use_stage3, use_mic: ablation switches.
        mic_both_directions: also require the column maximum in MIC.
        eta: Stage III safety threshold (0.8).
        stage3_schedule: ``"paper"`` or ``"script"``.
        candidates_k: initial per-entity candidates of Stage II's global greedy walk
            (64: on DBP15K's tuned features 16 and 32 ran out and were widened,
            each retry a full similarity pass).
        seed: random seed of every stage.
        device: ``"cpu"`` or ``"cuda"``.
    """

    budget: int = 1000
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    n_clusters: int = 5
    kmeans_backend: str = "torch"
    stage1_similarity: str = "fused"
    tuning: TuningConfig = field(default_factory=TuningConfig)
    use_stage2: bool = True
    use_stage3: bool = True
    use_mic: bool = True
    mic_both_directions: bool = False
    eta: float = 0.8
    stage3_schedule: str = "paper"
    candidates_k: int = 64
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"PSQEConfig.budget must be >= 1, got {self.budget}")
        if self.n_clusters < 1:
            raise ValueError(f"PSQEConfig.n_clusters must be >= 1, got {self.n_clusters}")
        if self.stage1_similarity not in ("fused", "raw_relation_attribute"):
            raise ValueError(f"PSQEConfig.stage1_similarity must be 'fused' or 'raw_relation_attribute', got {self.stage1_similarity!r}")
        if self.stage3_schedule not in ("paper", "script"):
            raise ValueError(f"PSQEConfig.stage3_schedule must be 'paper' or 'script', got {self.stage3_schedule!r}")
        if not -1.0 <= self.eta <= 1.0:
            raise ValueError(f"PSQEConfig.eta is a cosine threshold in [-1, 1], got {self.eta}")

    def replace(self, **changes) -> "PSQEConfig":
        """A copy with some fields changed (``tuning`` may be given as a dict)."""
        if isinstance(changes.get("tuning"), dict):
            changes["tuning"] = dataclasses.replace(self.tuning, **changes["tuning"])
        return dataclasses.replace(self, **changes)
