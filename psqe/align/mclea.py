"""MCLEA (Lin et al., COLING 2022, "Multi-modal Contrastive Representation Learning for Entity Alignment").

Our implementation of the published design and code (``src/models.py``,
``src/run.py``, ``src/loss.py``, ``run_dbp15k.sh`` of the MCLEA repository):

- **encoders** (:class:`~psqe.align.encoders.ModalityEncoders`): graph
  attention (2 layers, 2 heads, diag weights, 300-d) over a learned 300-d
  entity embedding; ``Linear`` to 100-d for visual, attribute and relation,
  and for name / char with ``use_surface`` ("w/ surface", off by default;
  the authors' DBP15K runs always use them);
- **joint**: ``concat_m(w_m * normalize(e_m))``, ``w = softmax(raw)``, raw
  learnable, initialised to ones (``MultiModalFusion``);
- **loss** per batch of training pairs (``ab_weight`` 0.5 throughout)::

      ICL(joint) + UW_icl([ICL(e_m) for m]) + zoom * UW_ial([IAL(e_m -> joint) for m])

  ICL: :func:`~psqe.align.losses.contrastive_loss`, temperature ``tau=0.1``,
  in-batch negatives from both graphs; IAL:
  :func:`~psqe.align.losses.ial_loss`, KL from each modality's in-batch
  distribution to the joint one (detached target), ``tau2=4.0``, its own
  ``zoom=0.1``; UW: :class:`~psqe.align.losses.UncertaintyWeighting`, one
  learned log-variance per modality, one set for ICL and one for IAL. The
  weighted IAL sum is multiplied by ``zoom`` once more, as the authors'
  ``kl_alignment_loss`` does (net factor 0.01 on each KL). The joint ICL is
  back-propagated into the modality encoders (not detached, unlike EVA's).

Training (:func:`mclea_train_config`): AdamW lr 5e-4 (the authors pass no
weight decay, so PyTorch's AdamW default 0.01 applies), batch 512; **one
forward pass and one optimiser step per epoch** with the batch losses summed
(the authors back-propagate every batch with ``retain_graph`` and step once
per epoch: the same gradient); 500 epochs without iterative learning. The
authors' DBP15K script runs 1000 epochs with iterative learning from epoch
500 (mutual nearest neighbours checked every 5 epochs, merged every 50, lr
divided by 5): ``mclea_train_config(epochs=1000, il=True)``.

Each training step computes the modality linears on its batches' entities
only (``rows_per_batch``, :func:`~psqe.align.fit`): no loss term reads
another entity's row, so values and gradients are the full pass's; the
graph attention still runs over the whole graph. Each modality's ICL and IAL
terms come from one product of the batch's rows
(:func:`~psqe.align.losses.icl_ial_losses`: IAL's logits are ICL's
cosines at ``tau2``), and the IAL target (the joint embedding's in-batch
distribution) comes with the joint ICL from one product per batch
(:func:`~psqe.align.losses.icl_with_target`).

Deviations: projection heads and instance normalisation (off in the authors'
runs) are not implemented. With iterative learning the authors re-create the
AdamW optimiser at every epoch from ``il_start`` on (its moments restart each
epoch); :func:`~psqe.align.fit` keeps one optimiser and scales its rate.

>>> import torch
>>> from psqe.data.synthetic import make_pair
>>> from psqe.align import AlignData, fit
>>> data = AlignData.from_pair(make_pair(200, seed=0))
>>> model = MCLEA(data, MCLEAConfig(graph_dim=16, visual_dim=8, attribute_dim=8, relation_dim=8))
>>> model.modalities
['visual', 'attribute', 'relation', 'graph']
>>> model(data)["joint"].shape
torch.Size([400, 40])
>>> res = fit(model, data, data.links[:40], mclea_train_config(epochs=2), progress=False)
>>> len(res.losses)
2
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .data import AlignData
from .encoders import ModalityEncoders, WeightedConcat
from .losses import UncertaintyWeighting, icl_ial_losses, icl_with_target
from .train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCLEAConfig:
    """MCLEA's sizes and loss settings (defaults: the authors' DBP15K run).

    ``graph_dim``: entity embedding and attention units (300); ``heads``,
    ``layers``: of the graph attention (2, 2); ``visual_dim``,
    ``attribute_dim`` (also used for relation, as the authors' ``attr_dim``),
    ``relation_dim``, ``name_dim``, ``char_dim``: 100; ``use_surface``: use
    name / char; ``dropout``, ``attention_dropout``: of the graph attention
    (0); ``tau``: ICL temperature (0.1); ``tau2``: IAL temperature (4.0);
    ``zoom``: IAL scale (0.1, applied twice as in the authors' code).
    """

    graph_dim: int = 300
    heads: int = 2
    layers: int = 2
    visual_dim: int = 100
    attribute_dim: int = 100
    relation_dim: int = 100
    name_dim: int = 100
    char_dim: int = 100
    use_surface: bool = False
    dropout: float = 0.0
    attention_dropout: float = 0.0
    tau: float = 0.1
    tau2: float = 4.0
    zoom: float = 0.1

    def __post_init__(self) -> None:
        sizes = ("graph_dim", "heads", "layers", "visual_dim", "attribute_dim", "relation_dim", "name_dim", "char_dim")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        if not (0 <= self.dropout < 1 and 0 <= self.attention_dropout < 1):
            raise ValueError(f"{type(self).__name__}: dropout rates must be in [0, 1)")
        if not (self.tau > 0 and self.tau2 > 0 and self.zoom >= 0):
            raise ValueError(f"{type(self).__name__}: need tau > 0, tau2 > 0, zoom >= 0")

    def dims(self) -> dict[str, int]:
        return {"graph": self.graph_dim, "visual": self.visual_dim, "attribute": self.attribute_dim,
                "relation": self.relation_dim, "name": self.name_dim, "char": self.char_dim}


def mclea_train_config(**overrides) -> TrainConfig:
    """MCLEA's training settings as a :class:`TrainConfig` (module docstring): AdamW lr 5e-4, batch 512,
    one step per epoch, 500 epochs; iterative learning (off) checks every 5 epochs, merges every 50,
    lr / 5, from epoch 500."""
    base = TrainConfig(epochs=500, lr=5e-4, weight_decay=0.01, batch_size=512, step_per_batch=False, il=False,
                       il_start=500, il_every=5, il_persist=10, il_lr_scale=0.2)
    return replace(base, **overrides)


class MCLEA(nn.Module):
    """The MCLEA aligner for one :class:`AlignData` (module docstring).

    Args:
        data: the pair it is built for (fixes ``N`` and the input sizes).
        config: :class:`MCLEAConfig`.
        seed: parameter initialisation seed (the global generator is left alone).

    ``forward(data)`` returns each modality's embedding (un-normalised) and
    ``"joint"``; ``forward(data, nodes)`` the same rows for the entities
    ``nodes`` only; ``loss(outputs, pairs)`` the batch loss (``pairs`` index
    the rows of ``outputs``);
    :meth:`modality_weights` and :meth:`loss_weights` the learned weights.
    """

    name = "MCLEA"
    #: :func:`~psqe.align.fit` passes ``nodes`` = the step's entities (module docstring).
    rows_per_batch = True

    def __init__(self, data: AlignData, config: MCLEAConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config or MCLEAConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ModalityEncoders(data, cfg.dims(), cfg.use_surface, cfg.heads, cfg.layers, cfg.dropout,
                                            cfg.attention_dropout, who=self.name)
        self.modalities: list[str] = list(self.encoder.modalities)
        self.fusion = WeightedConcat(len(self.modalities))
        self.icl_weighting = UncertaintyWeighting(len(self.modalities))
        self.ial_weighting = UncertaintyWeighting(len(self.modalities))

    def encode(self, data: AlignData, encoder: nn.Module | None = None, fusion: nn.Module | None = None,
               nodes: Tensor | None = None) -> dict[str, Tensor]:
        """Modality embeddings and ``"joint"`` by ``encoder`` / ``fusion`` (default: this model's),
        of every entity or of ``nodes`` only."""
        out = (encoder or self.encoder)(data, nodes)
        out["joint"] = (fusion or self.fusion)([out[m] for m in self.modalities])
        return out

    def forward(self, data: AlignData, nodes: Tensor | None = None) -> dict[str, Tensor]:
        return self.encode(data, nodes=nodes)

    def joint_term(self, out: dict[str, Tensor], pairs: Tensor) -> tuple[Tensor, Tensor]:
        """ICL on the joint embedding and the batch's IAL target, from one product
        (:func:`~psqe.align.losses.icl_with_target`)."""
        joint, cfg = out["joint"], self.config
        return icl_with_target(joint[pairs[:, 0]], joint[pairs[:, 1]], tau=cfg.tau, tau2=cfg.tau2)

    def modal_terms(self, out: dict[str, Tensor], pairs: Tensor, log_q: Tensor) -> Tensor:
        """Uncertainty-weighted per-modality ICL plus the doubly zoomed, uncertainty-weighted IAL towards
        ``log_q`` (:func:`~psqe.align.losses.ial_target`; each modality's two terms from one product,
        :func:`~psqe.align.losses.icl_ial_losses`)."""
        cfg = self.config
        left, right = pairs[:, 0], pairs[:, 1]
        icl, ial = zip(*(icl_ial_losses(out[m][left], out[m][right], log_q, cfg.tau, cfg.tau2, cfg.zoom)
                         for m in self.modalities))
        return self.icl_weighting(list(icl)) + cfg.zoom * self.ial_weighting(list(ial))

    def loss(self, out: dict[str, Tensor], pairs: Tensor) -> Tensor:
        joint, log_q = self.joint_term(out, pairs)
        return joint + self.modal_terms(out, pairs, log_q)

    def modality_weights(self) -> dict[str, float]:
        """Current softmax fusion weights, by modality."""
        return dict(zip(self.modalities, self.fusion.weights().detach().tolist()))

    def loss_weights(self) -> dict[str, dict[str, float]]:
        """``exp(-log_var)`` of the ICL and IAL uncertainty weights, by modality."""
        return {k: dict(zip(self.modalities, torch.exp(-w.log_vars.detach()).tolist()))
                for k, w in (("icl", self.icl_weighting), ("ial", self.ial_weighting))}


__all__ = ["MCLEA", "MCLEAConfig", "mclea_train_config"]
