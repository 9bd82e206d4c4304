"""MEAformer (Chen et al., ACM MM 2023, "MEAformer: Multi-modal Entity Alignment Transformer for Meta Modality Hybrid").

Our implementation of the published design and code (``model/MEAformer.py``,
``model/MEAformer_tools.py``, ``model/MEAformer_loss.py``, ``config.py``,
``run_meaformer.sh`` of the MEAformer repository):

- **encoders** (:class:`~psqe.align.encoders.ModalityEncoders`): MCLEA's,
  every modality at ``hidden`` = 300 (graph attention over a learned 300-d
  entity embedding; ``Linear`` to 300-d for visual, attribute, relation, and
  name / char with ``use_surface``, off by default);
- **fusion**: the ``M`` modality embeddings of an entity are a sequence of
  tokens (order ``[img, att, rel, gph, name, char]``) through ``layers`` = 1
  BERT layer (:class:`ModalityTransformerLayer`: self-attention with 1 head,
  dropout 0.1 on the attention probabilities, output dense + dropout +
  residual LayerNorm; GELU intermediate 400, output dense + dropout +
  residual LayerNorm; ``eps=1e-12``; no position or type embedding). The
  last layer's attention probabilities ``A`` (``[N, heads, M, M]``, after
  their dropout, as the authors' layer returns them) give per-entity
  modality weights ``w = softmax_m(sum_{h, q} A[h, q, m] / sqrt(M heads))``:
  how much attention each modality receives. **joint** =
  ``concat_m(w_m * normalize(e_m))`` of the *raw* modality embeddings;
- **loss** per batch (ICL: :func:`~psqe.align.losses.contrastive_loss`,
  ``tau=0.1``, ``ab_weight`` 0.5)::

      ICL(joint) + UW([ICL(e_m) for m]) + UW([ICL(normalize(h_m)) for m])

  with ``h_m`` the transformer's output token of modality ``m`` and ``UW`` one
  :class:`~psqe.align.losses.UncertaintyWeighting` shared by both sums (the
  authors call the same ``multi_loss_layer`` twice).

Training (:func:`meaformer_train_config`): AdamW lr 5e-4, weight decay 1e-4,
cosine schedule with linear warm-up over the first 15% of the steps, batch
3500, one forward pass and one step per batch, gradient clipping at norm
1.0, 250 epochs on DBP15K without iterative learning (the authors'
``enable_sota`` setting); float16 autocast with a gradient scaler on CUDA,
for speed: the authors' loop scales the loss with a ``GradScaler`` but never
enters ``autocast``, i.e. trains in float32 (``amp=False`` reproduces that).
``meaformer_train_config(il=True)`` turns on iterative learning (checks every
5 epochs, merges every 50, lr / 5); the authors also restart the cosine
schedule when iterative learning begins, which :func:`~psqe.align.fit` does not.

Deviations: the authors' optional "replay" hard negatives and projection
heads are off in their runs and not implemented. Their code reads the output
tokens back in another order than it fed them (token 0, the image's, comes
back as the graph's, and so on), so each uncertainty weight there mixes one
modality's raw term with another's hidden-state term; here weight ``m``
takes modality ``m``'s raw and hidden terms. Their per-epoch evaluation
on the test set with best-test restore belongs to the evaluation protocol
(:mod:`psqe.align.metrics`), not to the model.

>>> import torch
>>> from psqe.data.synthetic import make_pair
>>> from psqe.align import AlignData, fit
>>> data = AlignData.from_pair(make_pair(200, seed=0))
>>> model = MEAformer(data, MEAformerConfig(hidden=16, intermediate=24))
>>> out = model(data)
>>> out["joint"].shape, out["weights"].shape, out["hidden"].shape
(torch.Size([400, 64]), torch.Size([400, 4]), torch.Size([400, 4, 16]))
>>> res = fit(model, data, data.links[:40], meaformer_train_config(epochs=2), progress=False)
>>> len(res.losses)
2
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import AlignData
from .encoders import ModalityEncoders, icl_terms, weighted_concat
from .losses import UncertaintyWeighting, contrastive_loss
from .train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MEAformerConfig:
    """MEAformer's sizes and loss settings (defaults: the authors' DBP15K run).

    ``hidden``: every modality's size and the transformer width (300);
    ``heads``, ``intermediate``, ``layers``, ``dropout``: of the transformer
    (1, 400, 1, 0.1); ``use_intermediate``: the GELU feed-forward block (on;
    the authors turn it off on FB15K-based data); ``gat_heads``,
    ``gat_layers``: of the graph attention (2, 2); ``use_surface``: use name /
    char; ``tau``: ICL temperature (0.1).
    """

    hidden: int = 300
    heads: int = 1
    intermediate: int = 400
    layers: int = 1
    dropout: float = 0.1
    use_intermediate: bool = True
    gat_heads: int = 2
    gat_layers: int = 2
    use_surface: bool = False
    tau: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden", "heads", "intermediate", "layers", "gat_heads", "gat_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"MEAformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"MEAformerConfig: hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not (0 <= self.dropout < 1 and self.tau > 0):
            raise ValueError("MEAformerConfig: need 0 <= dropout < 1 and tau > 0")


def meaformer_train_config(**overrides) -> TrainConfig:
    """MEAformer's training settings as a :class:`TrainConfig` (module docstring): AdamW lr 5e-4,
    wd 1e-4, cosine with 15% warm-up, batch 3500, step per batch, AMP on CUDA, clip 1.0, 250 epochs."""
    base = TrainConfig(epochs=250, lr=5e-4, weight_decay=1e-4, batch_size=3500, step_per_batch=True,
                       scheduler="cosine", warmup=0.15, grad_clip=1.0, amp=True, il=False, il_start=250,
                       il_every=5, il_persist=10, il_lr_scale=0.2)
    return replace(base, **overrides)


class ModalityTransformerLayer(nn.Module):
    """One BERT layer over ``[N, M, hidden]`` modality tokens; returns ``(tokens, attention [N, heads, M, M])``."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float,
                 use_intermediate: bool = True) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = (nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))
                    if use_intermediate else None)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12) if use_intermediate else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, m, _ = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(n, m, self.heads, self.head_dim).transpose(1, 2)  # [N, heads, M, head_dim]

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = self.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1))
        context = (probs @ v).transpose(1, 2).reshape(n, m, -1)
        x = self.attn_norm(self.dropout(self.attn_out(context)) + x)
        if self.ffn is not None:
            x = self.ffn_norm(self.dropout(self.ffn(x)) + x)
        return x, probs


class MEAformer(nn.Module):
    """The MEAformer aligner for one :class:`AlignData` (module docstring).

    Args:
        data: the pair it is built for (fixes ``N`` and the input sizes).
        config: :class:`MEAformerConfig`.
        seed: parameter initialisation seed (the global generator is left alone).

    ``forward(data)`` returns each modality's raw embedding, ``"hidden"``
    (``[N, M, hidden]`` transformer outputs), ``"weights"`` (``[N, M]``
    per-entity modality weights) and ``"joint"``; ``forward(data, nodes)``
    the same rows for the entities ``nodes`` only; ``loss(outputs, pairs)``
    the batch loss (``pairs`` index the rows of ``outputs``);
    :meth:`modality_weights` the mean weights.

    Training runs the modality linears and the transformer on each batch's
    entities only (``rows_per_batch``, :func:`~psqe.align.fit`): nothing
    in the loss reads another entity's row, and the graph attention still
    sees the whole graph. The values and gradients are those of the full
    pass; only the dropout masks are drawn for fewer rows. On DBP15K with
    1,000 seeds this is most of a step's work (39k entities against 2k).
    """

    #: :func:`~psqe.align.fit` passes ``nodes`` = the batch's entities (see above).
    rows_per_batch = True

    def __init__(self, data: AlignData, config: MEAformerConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config or MEAformerConfig()
        dims = dict.fromkeys(("graph", "visual", "attribute", "relation", "name", "char"), cfg.hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ModalityEncoders(data, dims, cfg.use_surface, cfg.gat_heads, cfg.gat_layers, who="MEAformer")
            self.fusion = nn.ModuleList(ModalityTransformerLayer(cfg.hidden, cfg.heads, cfg.intermediate, cfg.dropout,
                                                                 cfg.use_intermediate) for _ in range(cfg.layers))
        self.modalities: list[str] = list(self.encoder.modalities)
        self.weighting = UncertaintyWeighting(len(self.modalities))

    def forward(self, data: AlignData, nodes: Tensor | None = None) -> dict[str, Tensor]:
        out = self.encoder(data, nodes)
        embs = [out[m] for m in self.modalities]
        hidden = torch.stack([e.float() for e in embs], dim=1)  # the graph comes in float32 even under autocast
        for layer in self.fusion:
            hidden, probs = layer(hidden)
        m = len(self.modalities)
        received = probs.float().sum(dim=1).sum(dim=-2) / math.sqrt(m * self.config.heads)  # [N, M]
        out["weights"] = torch.softmax(received, dim=-1)
        out["hidden"] = hidden
        out["joint"] = weighted_concat(embs, out["weights"])
        return out

    def loss(self, out: dict[str, Tensor], pairs: Tensor) -> Tensor:
        tau = self.config.tau
        left, right = pairs[:, 0], pairs[:, 1]
        joint = contrastive_loss(out["joint"][left], out["joint"][right], tau=tau, combine="log")
        hidden = {m: F.normalize(out["hidden"][:, i].float(), dim=1) for i, m in enumerate(self.modalities)}
        return (joint + self.weighting(icl_terms(out, self.modalities, pairs, tau))
                + self.weighting(icl_terms(hidden, self.modalities, pairs, tau)))

    def modality_weights(self, data: AlignData | None = None, out: dict[str, Tensor] | None = None) -> dict[str, float]:
        """Mean per-entity modality weight (eval mode, no gradient) from ``out`` or a forward pass on ``data``."""
        if out is None:
            if data is None:
                raise ValueError("MEAformer.modality_weights: give data or a forward pass's outputs")
            was = self.training
            self.eval()
            with torch.no_grad():
                out = self(data)
            self.train(was)
        return dict(zip(self.modalities, out["weights"].detach().float().mean(0).tolist()))


__all__ = ["MEAformer", "MEAformerConfig", "ModalityTransformerLayer", "meaformer_train_config"]
