"""``PSQEConfig``: every default of PSQE-SPEC.md in one place (Stage II's
``TuningConfig`` too: it lives here, away from PyTorch Geometric, so that
``import psqe`` stays light; :mod:`.stage2_train` re-exports it).

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

import torch

from .fusion import DEFAULT_WEIGHTS


#: The paper's seed budget (``unsup_k``, its section 6.1.3) on DWY15K; DBP15K's, 1000, is the default elsewhere.
DWY15K_BUDGET = 5000


def paper_budget(dataset: str) -> int:
    """The seed budget the paper used on ``dataset`` (a name, alias or folder): 5000 on DWY15K (EVA's
    ``dbp_wd_15k`` splits), 1000 otherwise (its DBP15K budget, also the default where it has no number).

    >>> paper_budget("DWY15K/V2"), paper_budget("/data/DWY15K/dbp_wd_15k_V1"), paper_budget("DBP15K/fr_en")
    (5000, 5000, 1000)
    """
    from ..data.layout import canonical_name

    return DWY15K_BUDGET if "dbp_wd_15k" in canonical_name(str(dataset)).lower() else 1000


#: ``TuningConfig.visual_precision`` values and their dtypes.
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _require_ints(config, names: tuple[str, ...]) -> None:
    """Each field in ``names`` holds an int (not a bool, not a float: JSON configs give either)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{type(config).__name__}.{name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class TuningConfig:
    """Stage II tuning settings; defaults are the authors' script values (PSQE-SPEC.md).

    ``hidden`` 300, visual GAT ``heads`` 2 and ``layers`` 2; AdamW ``lr`` 0.01
    (``weight_decay``: torch's AdamW default); ``epochs`` 300, one optimiser
    step each; ``batch_size`` 2000 seed pairs per ICL batch, accumulated over
    the epoch; ``temperature`` 1; ``normalize_output``: L2-normalise outputs
    (loss and tables); GAT ``dropout`` 0; ``negative_scores``: EVA-family
    ``exp(-LeakyReLU)`` attention; ``icl_combine``: ``"prob"`` (Eq. 2) or
    ``"log"``, see :func:`~.stage2_train.icl_loss`; ``subgraph``: train on the seeds'
    receptive field (same result, faster); ``fused``: attention aggregation
    as sparse-matrix products (same result, faster; ``False``: PyTorch
    Geometric's edge-list messages); ``log_every`` epochs (0: never);
    ``seed`` for init and shuffling (None: :class:`PSQEConfig`'s ``seed`` when
    :func:`psqe.generate_seeds` runs it, 0 when :func:`~.stage2_train.tune` is
    called alone); ``device`` ``"cpu"`` or ``"cuda"``;
    ``visual_precision``: ``"float32"`` (default) or ``"bfloat16"``: the
    visual ``Linear`` (``[N, 2048] x [2048, hidden]``, forward and weight
    gradient: about half of an epoch's time on CPU) multiplies bfloat16
    copies of the features and weight with float32 accumulation. Measured
    on a 2-core Xeon with AMX (``amx_bf16``): those products 4.1x (forward)
    and 2.4x (weight gradient) faster, ``generate_seeds`` on DBP15K 1.3x; on
    hardware without bfloat16 matrix units it can be slower (GPUs: not
    measured). Parameters, attention and loss stay float32. Not the paper's
    setting: the tuned tables differ slightly (bench/results/ compares the seeds).
    """

    hidden: int = 300
    heads: int = 2
    layers: int = 2
    lr: float = 0.01
    weight_decay: float = 0.01
    epochs: int = 300
    batch_size: int = 2000
    temperature: float = 1.0
    normalize_output: bool = False
    dropout: float = 0.0
    negative_scores: bool = False
    icl_combine: str = "prob"
    subgraph: bool = True
    fused: bool = True
    log_every: int = 50
    seed: int | None = None
    device: str = "cpu"
    visual_precision: str = "float32"

    def __post_init__(self) -> None:
        _require_ints(self, ("hidden", "heads", "layers", "epochs", "batch_size", "log_every"))
        if self.visual_precision not in PRECISIONS:
            raise ValueError(f"TuningConfig.visual_precision must be one of {sorted(PRECISIONS)}, got {self.visual_precision!r}")
        for name, low in (("hidden", 1), ("heads", 1), ("layers", 1), ("batch_size", 1), ("epochs", 0), ("log_every", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"TuningConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if not (self.temperature > 0 and self.lr > 0 and 0 <= self.dropout < 1):
            raise ValueError(f"TuningConfig: need temperature > 0, lr > 0, 0 <= dropout < 1; got {self}")
        if self.icl_combine not in ("prob", "log"):
            raise ValueError(f"TuningConfig.icl_combine must be 'prob' or 'log', got {self.icl_combine!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"TuningConfig.seed must be None or an integer >= 0, got {self.seed!r}")

    @property
    def rng_seed(self) -> int:
        """The seed the tuning draws with: ``seed``, 0 when None."""
        return 0 if self.seed is None else self.seed


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
        fixed_size: keep exactly ``budget`` seeds when PSQE makes more (the paper's
            Table 6; :mod:`psqe.seeds.fixed_size` says how they are chosen); when it
            makes fewer, all are kept and a warning says so.
        mic_both_directions: also require the column maximum in MIC.
        eta: Stage III safety threshold (0.8).
        stage3_schedule: ``"paper"`` or ``"script"``.
        candidates_k: initial per-entity candidates of Stage II's global greedy walk
            (64: on DBP15K's tuned features 16 and 32 ran out and were widened,
            each retry a full similarity pass).
        tie_order: how the greedy walks break exact ties, ``(i, j)`` ascending as PSQE-SPEC
            asks, over local indices of ``"shuffled"`` graphs (each graph's entities in a
            permutation drawn from ``seed``) or in the ``"file"`` order. DBP15K's files list
            the linked entities first, so there ``"file"`` order reads the gold links: in R1,
            where same-name entities tie, Type I's seeds are 0.994 precise in file order and
            0.84 shuffled (zh_en; bench/results/README.md, stop 29).
        seed: random seed of every stage (Stage II's too, unless ``tuning.seed`` is set:
            :attr:`stage2_seed`). Before 2026-12-06 Stage II always drew with 0.
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
    fixed_size: bool = False
    mic_both_directions: bool = False
    eta: float = 0.8
    stage3_schedule: str = "paper"
    candidates_k: int = 64
    tie_order: str = "shuffled"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        _require_ints(self, ("budget", "n_clusters", "candidates_k", "seed"))
        if not isinstance(self.tuning, TuningConfig):
            raise TypeError(f"PSQEConfig.tuning must be a TuningConfig (or a dict of its fields), got {self.tuning!r}")
        if self.tie_order not in ("shuffled", "file"):
            raise ValueError(f"PSQEConfig.tie_order must be 'shuffled' or 'file', got {self.tie_order!r}")
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

    @property
    def stage2_seed(self) -> int:
        """The seed Stage II's tuning draws with: ``tuning.seed``, else ``seed``."""
        return self.seed if self.tuning.seed is None else self.tuning.seed

    def replace(self, **changes) -> "PSQEConfig":
        """A copy with some fields changed (``tuning`` may be given as a dict)."""
        if isinstance(changes.get("tuning"), dict):
            unknown = set(changes["tuning"]) - {f.name for f in dataclasses.fields(TuningConfig)}
            if unknown:
                raise TypeError(f"PSQEConfig.tuning has no field {', '.join(sorted(unknown))}")
            changes["tuning"] = dataclasses.replace(self.tuning, **changes["tuning"])
        return dataclasses.replace(self, **changes)
