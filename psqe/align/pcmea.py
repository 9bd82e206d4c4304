"""PCMEA (Wang et al., AAAI 2024, "Pseudo-Label Calibration Semi-supervised Multi-Modal Entity Alignment").

Our implementation of the MCLEA backbone plus PCMEA's momentum contrast and
pseudo-label calibration, after the authors' code (``src/run_PCMEA.py``,
``src/module_dic.py`` of the PCMEA repository).

**Implemented**

- The :class:`~psqe.align.mclea.MCLEA` backbone, loss and weights unchanged
  before the momentum encoder starts.
- **Momentum encoder**: a copy of the online encoder and fusion, switched on
  after epoch ``momentum_start`` (the authors: 500 of their schedule, i.e.
  mid-training), then moved every ``momentum_every`` epochs (20) by an
  exponential moving average ``k <- m k + (1 - m) q`` with ``m = 0.999``.
  Its joint embedding is cached when it moves.
- **Momentum contrast (UCL)**: from then on the joint ICL is replaced by the
  authors' ``UCL``: ICL between the online joint embedding of each pair's
  kg1 entity and the momentum joint embedding of its kg2 entity, temperature
  0.05 (gradients reach the online side only).
- **Pseudo-label calibration**: from ``pseudo_start`` (default: the momentum
  start), every ``pseudo_every`` epochs (5) the mutual nearest neighbours
  between the entities that are in no training pair, no accepted pseudo-link
  and not :meth:`PCMEA.exclude`-d are found (cosine, fused top-1 both ways)
  on the momentum encoder's joint embedding (``pseudo_source="online"``: the
  online one, which is what the released code uses); a cycle of
  ``pseudo_persist`` checks (10) keeps the pairs found at every check
  (:class:`~psqe.align.train.MutualNeighbours`); at the end of a cycle a pair
  ``(l, r)`` is *accepted* only if ``l`` was proposed with the same ``r`` at an
  earlier cycle end (the authors' ``dyn_link`` memory: the first proposal of
  ``l`` is only recorded, a changed partner overwrites it). Accepted
  pseudo-links join the training pairs of the following epochs
  (:meth:`PCMEA.extra_train_pairs`: shuffled and batched with them at
  ``batch_size``, as the authors add them to their training list) and take
  part in every loss term.
- **Learning rate divided by 5** from the pseudo-labelling start
  (:func:`pcmea_train_config`: ``lr_drop_epoch=500, lr_drop_factor=0.2``;
  set ``lr_drop_epoch`` to ``pseudo_start`` when changing that). Fit's own
  iterative learning stays off: the pseudo-links replace it.

**Not implemented, and why**

- The PLM text views (``att_text`` / ``rel_text``: RoBERTa / T5 embeddings of
  attribute and relation text, 768-d) and the attention fusion built on them
  (cross-attention of the bag embeddings over the text embeddings, a
  self-attention + adapter block on the graph embedding): the released code
  reads them only for FB15K-DB15K / FB15K-YAGO15K pickles; DBP15K has no such
  input in the authors' pipeline, and the paper's Table 1 runs PCMEA on DBP15K.
- The MINE mutual-information terms: in the released code the MINE networks'
  parameters are never given to the optimiser, so the terms only push the
  encoders through randomly initialised critics; left out rather than copied.
- ``list_rebul_sort`` (regrouping the training pairs by embedding
  similarity for the first 500 epochs): it indexes the similarity matrix by
  position in the training list as if it were an entity id, so its effect
  cannot be stated as a method; batches here are plain shuffles.

Training (:func:`pcmea_train_config`): MCLEA's (AdamW lr 5e-4, batch 512, one
step per epoch) over 1000 epochs, momentum and pseudo-labels from epoch 500.

>>> import torch
>>> from psqe.data.synthetic import make_pair
>>> from psqe.align import AlignData, fit
>>> data = AlignData.from_pair(make_pair(200, seed=0))
>>> cfg = PCMEAConfig(graph_dim=16, visual_dim=8, attribute_dim=8, relation_dim=8, momentum_start=2,
...                   momentum_every=1, pseudo_every=1, pseudo_persist=1)
>>> model = PCMEA(data, cfg)
>>> res = fit(model, data, data.links[:40], pcmea_train_config(epochs=6), progress=False)
>>> model.momentum_active, model.pseudo_links.shape[1]
(True, 2)
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .data import AlignData
from .losses import contrastive_loss, ial_target
from .mclea import MCLEA, MCLEAConfig
from .train import MutualNeighbours, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PCMEAConfig(MCLEAConfig):
    """:class:`MCLEAConfig` plus ``momentum`` (0.999), ``momentum_start`` (epochs before the momentum
    encoder starts, 500), ``momentum_every`` (20), ``ucl_tau`` (0.05), ``pseudo_start`` (None: the
    momentum start), ``pseudo_every`` (5), ``pseudo_persist`` (10) and ``pseudo_source``
    (``"momentum"`` or ``"online"``); see the module docstring."""

    momentum: float = 0.999
    momentum_start: int = 500
    momentum_every: int = 20
    ucl_tau: float = 0.05
    pseudo_start: int | None = None
    pseudo_every: int = 5
    pseudo_persist: int = 10
    pseudo_source: str = "momentum"

    #: Epoch numbers and epoch intervals that :func:`~psqe.align.build_aligner`
    #: rescales with the run's length (``pseudo_persist`` counts checks: it stays).
    SCHEDULE_POINTS = ("momentum_start", "pseudo_start")
    SCHEDULE_INTERVALS = ("momentum_every", "pseudo_every")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.momentum < 1 and self.ucl_tau > 0 and self.momentum_start >= 0):
            raise ValueError("PCMEAConfig: need 0 <= momentum < 1, ucl_tau > 0, momentum_start >= 0")
        if min(self.momentum_every, self.pseudo_every, self.pseudo_persist) < 1 or (self.pseudo_start or 0) < 0:
            raise ValueError("PCMEAConfig: momentum_every, pseudo_every, pseudo_persist must be >= 1, "
                             "pseudo_start >= 0")
        if self.pseudo_source not in ("momentum", "online"):
            raise ValueError(f"PCMEAConfig.pseudo_source must be 'momentum' or 'online', got {self.pseudo_source!r}")


def pcmea_train_config(**overrides) -> TrainConfig:
    """PCMEA's training settings (module docstring): MCLEA's optimiser and batches, 1000 epochs."""
    base = TrainConfig(epochs=1000, lr=5e-4, weight_decay=0.01, batch_size=512, step_per_batch=False, il=False,
                       il_start=500, il_every=5, il_persist=10, il_lr_scale=0.2, lr_drop_epoch=500, lr_drop_factor=0.2)
    return replace(base, **overrides)


class PCMEA(MCLEA):
    """The PCMEA aligner (module docstring): :class:`MCLEA` plus a momentum encoder and pseudo-links.

    ``pseudo_links``: the accepted pseudo-links (pair index, ``[P, 2]``);
    ``pseudo_history``: ``(epoch, accepted)`` per cycle end; ``momentum_active``.
    Entities of the training pairs are learnt from the batches ``fit`` passes
    to :meth:`loss`; call :meth:`exclude` with validation pairs so that they
    are never proposed.
    """

    name = "PCMEA"

    def __init__(self, data: AlignData, config: PCMEAConfig | None = None, seed: int = 0) -> None:
        super().__init__(data, config or PCMEAConfig(), seed)
        self.momentum_encoder = copy.deepcopy(nn.ModuleDict({"encoder": self.encoder, "fusion": self.fusion}))
        self.momentum_encoder.requires_grad_(False)
        n, width = data.num_entities, sum(self.encoder.dims.values())
        self.register_buffer("momentum_joint", torch.zeros(n, width), persistent=False)
        self.register_buffer("used", torch.zeros(n, dtype=torch.bool), persistent=False)
        self.register_buffer("blocked", torch.zeros(n, dtype=torch.bool), persistent=False)
        self.register_buffer("last_partner", torch.full((data.n1,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("pseudo_links", torch.zeros(0, 2, dtype=torch.long), persistent=False)
        self.momentum_active = False
        self.pseudo_history: list[tuple[int, int]] = []
        self._tracker: MutualNeighbours | None = None

    def exclude(self, pairs: Tensor) -> None:
        """Never propose the entities of ``pairs`` (pair index, any shape), e.g. validation pairs."""
        self.blocked[torch.as_tensor(pairs, device=self.blocked.device).long().flatten()] = True

    def forward(self, data: AlignData, nodes: Tensor | None = None) -> dict[str, Tensor]:
        """MCLEA's outputs; with ``nodes``, also ``"rows"`` = ``nodes`` (the entity of each output row)."""
        out = super().forward(data, nodes)
        if nodes is not None:
            out["rows"] = nodes
        return out

    @staticmethod
    def _entities(out: dict[str, Tensor], pairs: Tensor) -> Tensor:
        """``pairs`` (rows of ``out``) as entity pair indices."""
        return out["rows"][pairs] if "rows" in out else pairs

    def joint_term(self, out: dict[str, Tensor], pairs: Tensor) -> tuple[Tensor, Tensor]:
        """MCLEA's joint ICL and IAL target; with the momentum encoder on, the joint ICL's kg2 side is the
        momentum encoder's embedding (so the IAL target takes a product of its own)."""
        if not self.momentum_active:
            return super().joint_term(out, pairs)
        joint = out["joint"]
        target = self.momentum_joint[self._entities(out, pairs)[:, 1]]
        icl = contrastive_loss(joint[pairs[:, 0]], target, tau=self.config.ucl_tau, combine="log")
        return icl, ial_target(joint[pairs[:, 0]], joint[pairs[:, 1]], self.config.tau2)

    def extra_train_pairs(self) -> Tensor:
        """The accepted pseudo-links, which :func:`~psqe.align.fit` batches with the training pairs."""
        return self.pseudo_links

    def loss(self, out: dict[str, Tensor], pairs: Tensor) -> Tensor:
        self.used[self._entities(out, pairs).flatten()] = True
        return super().loss(out, pairs)

    @torch.no_grad()
    def _momentum_step(self, data: AlignData, first: bool) -> None:
        online = nn.ModuleDict({"encoder": self.encoder, "fusion": self.fusion})
        m = 0.0 if first else self.config.momentum
        for k, q in zip(self.momentum_encoder.parameters(), online.parameters()):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)
        was = self.training
        self.eval()
        out = self.encode(data, self.momentum_encoder["encoder"], self.momentum_encoder["fusion"])
        self.train(was)
        self.momentum_joint = out["joint"].float()
        self.momentum_active = True

    def on_epoch_end(self, epoch: int, data: AlignData) -> None:
        """Momentum updates and pseudo-label checks after ``epoch``'s step (called by :func:`~psqe.align.fit`)."""
        cfg: PCMEAConfig = self.config
        done = epoch + 1
        since = done - cfg.momentum_start
        if since == 0 or (since > 0 and since % cfg.momentum_every == 0):
            self._momentum_step(data, first=not self.momentum_active)
        start = cfg.momentum_start if cfg.pseudo_start is None else cfg.pseudo_start
        if epoch < start or done % cfg.pseudo_every:
            return
        if cfg.pseudo_source == "momentum" and self.momentum_active:
            joint = self.momentum_joint
        else:
            was = self.training
            self.eval()
            with torch.no_grad():
                joint = self(data)["joint"].float()
            self.train(was)
        if self._tracker is None:
            self._tracker = MutualNeighbours(data, cfg.pseudo_persist)
        taken = (self.used | self.blocked).nonzero().flatten()
        proposed = self._tracker.check(joint, torch.stack([taken, taken], dim=1))
        if proposed is not None:
            self._calibrate(epoch, proposed)

    def _calibrate(self, epoch: int, proposed: Tensor) -> None:
        left, right = proposed[:, 0], proposed[:, 1]
        same = self.last_partner[left] == right
        self.last_partner[left[~same]] = right[~same]
        accepted = proposed[same]
        self.pseudo_links = torch.cat([self.pseudo_links, accepted])
        self.used[accepted.flatten()] = True
        self.pseudo_history.append((epoch, int(accepted.shape[0])))
        log.info("PCMEA epoch %d: %d mutual neighbours proposed, %d accepted (stable), %d pseudo-links in all",
                 epoch + 1, proposed.shape[0], accepted.shape[0], self.pseudo_links.shape[0])


__all__ = ["PCMEA", "PCMEAConfig", "pcmea_train_config"]
