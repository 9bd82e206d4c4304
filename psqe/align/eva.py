"""EVA (Liu et al., AAAI 2021, "Visual Pivoting for (Unsupervised) Entity Alignment").

Our implementation of the published design and code (``src/run_dbp15k.py``,
``src/models.py`` of the EVA repository):

- **graph**: a learned ``[N, 400]`` entity embedding (normal, std
  ``1/sqrt(N)``) through a 2-layer GCN (units 400, 400, 200; ReLU, dropout
  between the layers, EVA's default 0) over ``AlignData.adj``
  (``D^-1/2 (A + I) D^-1/2``);
- **visual**: ``Linear(d_img, 200)`` on L2-normalised image features;
- **relation**, **attribute**: ``Linear(d, 100)`` on EVA's top-1000 bags;
- **name**, **char** (the "w/ surface" switch ``EVAConfig.use_surface``, off by
  default): ``Linear(d, 100)`` on the L2-normalised GloVe / char-bigram features;
- **joint**: ``concat_m(w_m * normalize(e_m))`` with ``w = softmax(raw)``,
  ``raw`` learnable and initialised to ones;
- **loss** per batch: NCA (:func:`~psqe.align.losses.nca_loss`) on each
  modality (graph: ``alpha=5, beta=10``; others ``alpha=15, beta=10``; ``ep=0``)
  plus NCA on the joint embedding built from *detached* modality embeddings
  (so the joint term trains only the modality weights), summed.

Training defaults (:func:`eva_train_config`): AdamW lr 5e-4, batch 7500, 500
epochs, one forward pass and one step per epoch (EVA's loop), no iterative
learning (the issue's setting; the authors' DBP15K script adds it from epoch 500
of 1000). Which feature EVA reads for each modality, first found wins:
``visual``; ``relation_bag`` then ``relation``; ``attribute_bag`` then
``attribute``; ``name``; ``char``. A modality the data lacks is skipped
(logged); the graph is always there.

>>> import torch
>>> from psqe.data.synthetic import make_pair
>>> from psqe.align import AlignData, fit
>>> data = AlignData.from_pair(make_pair(200, seed=0))
>>> model = EVA(data, EVAConfig(entity_dim=32, hidden=32, graph_dim=16))
>>> model.modalities
['visual', 'attribute', 'relation', 'graph']
>>> out = model(data)
>>> out["joint"].shape
torch.Size([400, 416])
>>> res = fit(model, data, data.links[:40], eva_train_config(epochs=2), progress=False)
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
from .losses import nca_loss
from .train import TrainConfig

log = logging.getLogger(__name__)

#: Modality -> feature names EVA reads, in order of preference.
EVA_SOURCES: dict[str, tuple[str, ...]] = {
    "visual": ("visual",),
    "attribute": ("attribute_bag", "attribute"),
    "relation": ("relation_bag", "relation"),
    "name": ("name",),
    "char": ("char",),
}
#: Inputs EVA / MEAformer L2-normalise before their linear layer.
_NORMALISED = ("visual", "name", "char")


@dataclass(frozen=True)
class EVAConfig:
    """EVA's sizes and loss settings (defaults: the authors' DBP15K run).

    ``entity_dim``, ``hidden``, ``graph_dim``: GCN units (400, 400, 200);
    ``visual_dim`` 200; ``attribute_dim``, ``relation_dim``, ``name_dim``,
    ``char_dim`` 100; ``use_surface``: use ``name`` / ``char`` ("w/ surface");
    ``dropout`` between the GCN layers (0); ``graph_nca`` and ``nca``:
    ``(alpha, beta, ep)`` of the graph's and of every other term's NCA loss.
    """

    entity_dim: int = 400
    hidden: int = 400
    graph_dim: int = 200
    visual_dim: int = 200
    attribute_dim: int = 100
    relation_dim: int = 100
    name_dim: int = 100
    char_dim: int = 100
    use_surface: bool = False
    dropout: float = 0.0
    graph_nca: tuple[float, float, float] = (5.0, 10.0, 0.0)
    nca: tuple[float, float, float] = (15.0, 10.0, 0.0)

    def __post_init__(self) -> None:
        dims = ("entity_dim", "hidden", "graph_dim", "visual_dim", "attribute_dim", "relation_dim", "name_dim", "char_dim")
        for name in dims:
            if getattr(self, name) < 1:
                raise ValueError(f"EVAConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"EVAConfig.dropout must be in [0, 1), got {self.dropout}")


def eva_train_config(**overrides) -> TrainConfig:
    """EVA's training settings as a :class:`TrainConfig`: AdamW lr 5e-4 (weight decay: PyTorch's
    default 0.01, the authors pass none), batch 7500, 500 epochs, one step per epoch, no iterative
    learning. The authors' iterative run is ``eva_train_config(epochs=1000, il=True)``: from epoch
    500, mutual nearest neighbours checked every 5 epochs, merged every 50, lr / 5."""
    base = TrainConfig(epochs=500, lr=5e-4, weight_decay=0.01, batch_size=7500, step_per_batch=False, il=False,
                       il_start=500, il_every=5, il_persist=10, il_lr_scale=0.2)
    return replace(base, **overrides)


class GraphConvolution(nn.Module):
    """``adj @ (x W) + b`` with EVA's (Kipf's) init: uniform in ``+-1/sqrt(out)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        bound = 1.0 / math.sqrt(out_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        support = x @ self.weight
        with torch.autocast(x.device.type, enabled=False):  # sparse products in float32
            return torch.sparse.mm(adj, support.float()) + self.bias


class EVA(nn.Module):
    """The EVA aligner for one :class:`AlignData` (module docstring).

    Args:
        data: the pair it is built for (fixes ``N`` and the input sizes).
        config: :class:`EVAConfig`.
        seed: parameter initialisation seed (the global generator is left alone).

    ``forward(data)`` returns ``"graph"`` and each present modality's
    embedding (un-normalised) and ``"joint"``; ``loss(outputs, pairs)`` the
    summed NCA terms of a batch; :meth:`modality_weights` the current softmax weights.
    """

    def __init__(self, data: AlignData, config: EVAConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = cfg = config or EVAConfig()
        self.num_entities = data.num_entities
        wanted = ["visual", "attribute", "relation"] + (["name", "char"] if cfg.use_surface else [])
        self.sources: dict[str, str] = {}
        for m in wanted:
            found = next((f for f in EVA_SOURCES[m] if f in data.features), None)
            if found is None:
                log.info("EVA: no %s feature (%s) in the data; modality skipped", m, " / ".join(EVA_SOURCES[m]))
            else:
                self.sources[m] = found
        if not cfg.use_surface and any(f in data.features for f in ("name", "char")):
            log.info("EVA: name/char features present but unused (EVAConfig.use_surface=False)")
        out_dims = {"visual": cfg.visual_dim, "attribute": cfg.attribute_dim, "relation": cfg.relation_dim,
                    "name": cfg.name_dim, "char": cfg.char_dim}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.entity = nn.Parameter(torch.randn(data.num_entities, cfg.entity_dim) / math.sqrt(data.num_entities))
            self.gc1 = GraphConvolution(cfg.entity_dim, cfg.hidden)
            self.gc2 = GraphConvolution(cfg.hidden, cfg.graph_dim)
            self.encoders = nn.ModuleDict({m: nn.Linear(data.features[f].shape[1], out_dims[m])
                                           for m, f in self.sources.items()})
        self.modalities = list(self.sources) + ["graph"]
        self.weight_raw = nn.Parameter(torch.ones(len(self.modalities)))
        log.info("EVA: modalities %s", {m: self.sources.get(m, "structure") for m in self.modalities})

    def forward(self, data: AlignData) -> dict[str, Tensor]:
        if data.num_entities != self.num_entities:
            raise ValueError(f"EVA was built for {self.num_entities} entities, the data has {data.num_entities}")
        out = {}
        for m, f in self.sources.items():
            x = data.features[f]
            out[m] = self.encoders[m](F.normalize(x, dim=1) if m in _NORMALISED else x)
        h = F.relu(self.gc1(self.entity, data.adj))
        h = F.dropout(h, self.config.dropout, self.training)
        out["graph"] = self.gc2(h, data.adj)
        out["joint"] = self._joint(out, detach=False)
        return out

    def _joint(self, out: dict[str, Tensor], detach: bool, rows: Tensor | None = None) -> Tensor:
        w = torch.softmax(self.weight_raw, dim=0)
        parts = []
        for i, m in enumerate(self.modalities):
            e = out[m] if rows is None else out[m][rows]
            parts.append(w[i] * F.normalize((e.detach() if detach else e).float(), dim=1))
        return torch.cat(parts, dim=1)

    def loss(self, out: dict[str, Tensor], pairs: Tensor) -> Tensor:
        left, right = pairs[:, 0], pairs[:, 1]
        total = nca_loss(out["graph"][left], out["graph"][right], *self.config.graph_nca)
        for m in self.sources:
            total = total + nca_loss(out[m][left], out[m][right], *self.config.nca)
        joint = self._joint(out, detach=True, rows=torch.cat([left, right]))
        return total + nca_loss(joint[: left.numel()], joint[left.numel():], *self.config.nca)

    def modality_weights(self) -> dict[str, float]:
        """Current softmax modality weights, by modality."""
        w = torch.softmax(self.weight_raw.detach(), dim=0).tolist()
        return dict(zip(self.modalities, w))


__all__ = ["EVA", "EVAConfig", "EVA_SOURCES", "GraphConvolution", "eva_train_config"]
