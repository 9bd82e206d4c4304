"""Encoders shared by the MCLEA family (:mod:`.mclea`, :mod:`.meaformer`, :mod:`.pcmea`).

After ``MultiModalEncoder`` of the MCLEA code (``src/models.py``), which
MEAformer and PCMEA copy:

- **graph**: a learned ``[N, dim]`` entity embedding (normal, std
  ``1/sqrt(N)``) through the diag-weight graph attention
  :class:`~psqe.seeds.stage2_model.DiagGAT` (2 layers, 2 heads averaged, ELU
  between the layers, attention ``exp(-LeakyReLU_0.2(.))`` normalised over
  each node's incoming edges, i.e. ``negative_scores=True``) over
  ``AlignData.edge_index`` (the union graph with self loops, which is the
  sparsity pattern of the authors' ``get_adjr`` matrix they attend over),
  taken as :meth:`AlignData.attention_graph` (the fused path: on CPU the
  compiled layer kernels, 2.1x faster per MCLEA epoch on DBP15K than the
  edge-list messages; the same function).
  The attention vectors are re-initialised uniform in ``+-1/sqrt(2 dim)``,
  the authors' init for the diag layer (``DiagGAT``'s own default is the
  Xavier bound of their non-diag branch); the weights start at ones. The
  graph attention always runs in float32 (autocast off): it is cheap, and
  float16 exponentials of the scores lose the small attention weights.
- **visual**, **attribute**, **relation**, and with ``surface`` **name**,
  **char**: one ``nn.Linear`` each; ``visual``, ``name`` and ``char`` are
  L2-normalised first (the authors normalise these tables at load time),
  the relation / attribute bags are used raw.

Which feature a modality reads is EVA's rule (:data:`psqe.align.eva.EVA_SOURCES`,
first found wins): ``visual``; ``relation_bag`` then ``relation``;
``attribute_bag`` then ``attribute``; ``name``; ``char``. Missing modalities
are skipped with a log line; the graph is always there. Modalities come in
the authors' fusion order :data:`ORDER` (``[img, att, rel, gph, name, char]``).

>>> import torch
>>> from psqe.data.synthetic import make_pair
>>> from psqe.align import AlignData
>>> data = AlignData.from_pair(make_pair(100, seed=0))
>>> enc = ModalityEncoders(data, {"graph": 16, "visual": 8, "attribute": 8, "relation": 8})
>>> out = enc(data)
>>> enc.modalities, tuple(out["graph"].shape)
(['visual', 'attribute', 'relation', 'graph'], (200, 16))
>>> fusion = WeightedConcat(len(enc.modalities))
>>> fusion([out[m] for m in enc.modalities]).shape
torch.Size([200, 40])
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeds.attention import Adjacency
from ..seeds.stage2_model import DiagGAT
from .data import AlignData
from .eva import EVA_SOURCES
from .losses import contrastive_loss

log = logging.getLogger(__name__)

#: The authors' fusion order (``[img_emb, att_emb, rel_emb, gph_emb, name_emb, char_emb]``).
ORDER: tuple[str, ...] = ("visual", "attribute", "relation", "graph", "name", "char")
#: Inputs L2-normalised before their linear layer.
NORMALISED: tuple[str, ...] = ("visual", "name", "char")


def resolve_sources(data: AlignData, surface: bool, who: str) -> dict[str, str]:
    """Modality -> the feature name it reads in ``data`` (module docstring); logs what is skipped."""
    wanted = ["visual", "attribute", "relation"] + (["name", "char"] if surface else [])
    sources = {}
    for m in wanted:
        found = next((f for f in EVA_SOURCES[m] if f in data.features), None)
        if found is None:
            log.info("%s: no %s feature (%s) in the data; modality skipped", who, m, " / ".join(EVA_SOURCES[m]))
        else:
            sources[m] = found
    if not surface and any(f in data.features for f in ("name", "char")):
        log.info("%s: name/char features present but unused (use_surface=False)", who)
    return sources


class StructureEncoder(nn.Module):
    """Learned entity embedding through a :class:`DiagGAT` (module docstring);
    ``forward(graph) -> [N, dim]`` (``graph``: an edge list or an :class:`~psqe.seeds.attention.Adjacency`)."""

    def __init__(self, num_entities: int, dim: int = 300, layers: int = 2, heads: int = 2, dropout: float = 0.0,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.entity = nn.Parameter(torch.randn(num_entities, dim) / math.sqrt(num_entities))
        self.gat = DiagGAT(dim, layers, heads, dropout=dropout, attention_dropout=attention_dropout,
                           negative_scores=True)
        bound = 1.0 / math.sqrt(2 * dim)  # MultiHeadGraphAttention(diag=True, init=ones_): a ~ U(+-1/sqrt(2 f_out))
        nn.init.uniform_(self.gat.a_src, -bound, bound)
        nn.init.uniform_(self.gat.a_dst, -bound, bound)

    def forward(self, graph: Tensor | Adjacency) -> Tensor:
        with torch.autocast(self.entity.device.type, enabled=False):
            return self.gat(self.entity.float(), graph)


class ModalityEncoders(nn.Module):
    """The structure encoder and one ``Linear`` per feature modality of ``data``.

    Args:
        data: the pair the encoders are built for (fixes ``N`` and input sizes).
        dims: output size per modality; ``"graph"`` (required) is the entity
            embedding / attention size, the others apply when the data has them.
        surface: also encode ``name`` / ``char`` ("w/ surface").
        heads, layers, dropout, attention_dropout: of the graph attention.
        who: the model's name in log lines.

    ``forward(data)`` returns modality -> ``[N, dims[m]]`` for :attr:`modalities`;
    ``forward(data, nodes)`` the rows of the entities ``nodes`` only (``[len(nodes), dims[m]]``:
    the graph attention still runs over every entity, the linears only over
    ``nodes``). The caller seeds the parameter initialisation.
    """

    def __init__(self, data: AlignData, dims: Mapping[str, int], surface: bool = False, heads: int = 2,
                 layers: int = 2, dropout: float = 0.0, attention_dropout: float = 0.0, who: str = "MCLEA") -> None:
        super().__init__()
        bad = {m: d for m, d in dims.items() if int(d) < 1}
        if "graph" not in dims or bad:
            raise ValueError(f"{who}: need a 'graph' size and sizes >= 1, got {dict(dims)}")
        self.num_entities = data.num_entities
        self.sources = resolve_sources(data, surface, who)
        self.structure = StructureEncoder(data.num_entities, int(dims["graph"]), layers, heads, dropout,
                                          attention_dropout)
        self.linears = nn.ModuleDict({m: nn.Linear(data.features[f].shape[1], int(dims[m]))
                                      for m, f in self.sources.items()})
        self.modalities = [m for m in ORDER if m == "graph" or m in self.sources]
        self.dims = {m: int(dims[m]) for m in self.modalities}
        log.info("%s: modalities %s", who, {m: self.sources.get(m, "structure") for m in self.modalities})

    def forward(self, data: AlignData, nodes: Tensor | None = None) -> dict[str, Tensor]:
        if data.num_entities != self.num_entities:
            raise ValueError(f"the encoders were built for {self.num_entities} entities, "
                             f"the data has {data.num_entities}")
        out = {}
        for m in self.modalities:
            if m == "graph":
                graph = self.structure(data.attention_graph())
                out[m] = graph if nodes is None else graph[nodes]
            else:
                x = data.features[self.sources[m]]
                x = x if nodes is None else x[nodes]
                out[m] = self.linears[m](F.normalize(x, dim=1) if m in NORMALISED else x)
        return out


def weighted_concat(embs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``concat_m(w_m * normalize(e_m))``; ``weights`` is ``[M]`` (shared) or ``[N, M]`` (per entity)."""
    parts = []
    for i, e in enumerate(embs):
        w = weights[i] if weights.dim() == 1 else weights[:, i:i + 1]
        parts.append(w * F.normalize(e.float(), dim=1))
    return torch.cat(parts, dim=1)


class WeightedConcat(nn.Module):
    """MCLEA's ``MultiModalFusion``: learnable raw weights (ones), softmax, :func:`weighted_concat`."""

    def __init__(self, num_modalities: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.ones(num_modalities))

    def weights(self) -> Tensor:
        return torch.softmax(self.raw, dim=0)

    def forward(self, embs: Sequence[Tensor]) -> Tensor:
        if len(embs) != self.raw.numel():
            raise ValueError(f"WeightedConcat: expected {self.raw.numel()} embeddings, got {len(embs)}")
        return weighted_concat(embs, self.weights())


def icl_terms(out: Mapping[str, Tensor], modalities: Sequence[str], pairs: Tensor, tau: float) -> list[Tensor]:
    """:func:`~psqe.align.losses.contrastive_loss` (MCLEA's ICL, ``ab_weight`` 0.5) of each modality on a batch."""
    left, right = pairs[:, 0], pairs[:, 1]
    return [contrastive_loss(out[m][left], out[m][right], tau=tau, combine="log") for m in modalities]


__all__ = ["ModalityEncoders", "NORMALISED", "ORDER", "StructureEncoder", "WeightedConcat", "icl_terms",
           "resolve_sources", "weighted_concat"]
