"""Stage II contrastive tuning: the ICL loss (paper Eq. 1-2) and the training loop.

``tune`` trains :class:`~.stage2_model.ContrastiveTuner` on the Stage I seed
pairs with the intra-modal contrastive loss summed over modalities (Eq. 6)
and returns the tuned ``[N, hidden]`` table of every entity per modality.

What is skipped (exactly; ``subgraph=False`` trains on the whole graph to check):

- The loss reads the seeds' outputs only, and a visual output depends on the
  node's 2-hop in-neighbourhood: each epoch runs the visual ``Linear`` on the
  seeds' 2-hop nodes, attention layer 1 for their 1-hop nodes and layer 2 for
  the seeds (:func:`~.stage2_model.receptive_field`, computed once, as are the
  gathered input rows); attribute and relation ``Linear`` on the seed rows.
  One full-graph forward at the end gives the tables.
- The batches of an epoch share one forward pass; their summed loss is
  back-propagated once (the gradient the script accumulates batch by batch)
  and the optimiser steps once (with dropout > 0 the script would draw a mask
  per batch, here per epoch).
- Attention runs as PyTorch Geometric message passing over sparse
  adjacencies (:class:`~.stage2_model.Adjacency`, built once; ``fused=False``
  takes the edge-list path, the same function): memory O(E * heads +
  N * hidden); no dense N x N gradient as in the authors' sparse layer.

Where an epoch's time goes on CPU (DBP15K zh_en, 1000 Stage I seeds: the
receptive field holds 34.6k of 39k nodes and 221k + 43k edges; 2 cores):
about half is the visual ``Linear``, forward ``X W^T`` and backward
``G^T X`` over ``[34.6k, 2048] x [2048, 300]`` (85 GFLOP per epoch, ~0.28 s);
the attention layers take ~0.15 s, through the compiled layer kernels
(:mod:`.attention_layer`), and the ICL and small operations the rest
(~0.54 s per epoch in all). The hand-written backward passes (attention
layer, ICL) and the floors on tiny values keep subnormal numbers out of the
products (see :mod:`.stage2_model` and :func:`icl_loss`).
"""
from __future__ import annotations

import logging
import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from .. import _pyg  # noqa: F401  (PyG without its import-time warning)
from torch_geometric.utils import add_remaining_self_loops, coalesce, sort_edge_index
from tqdm.auto import tqdm

from .config import PRECISIONS, TuningConfig
from .stage2_model import MODALITIES, Adjacency, ContrastiveTuner, receptive_field

log = logging.getLogger(__name__)


def icl_loss(h1: Tensor, h2: Tensor, temperature: float = 1.0, combine: str = "prob") -> Tensor:
    """Bidirectional in-batch intra-modal contrastive loss (paper Eq. 1-2), batch mean.

    Row ``i`` of ``h1``/``h2`` is seed pair ``(e1_i, e2_i)``; ``s(x, y) = x.y / t``.
    For the left entity the candidates are every right entity of the batch
    (the positive is ``e2_i``) and every *other* left entity (Eq. 1's
    negatives come from both graphs, ``j != i``); symmetrically for the right::

        log p_lr(i) = s(h1_i, h2_i) - logsumexp([s(h1_i, h2_j) for all j] + [s(h1_i, h1_j) for j != i])
        log p_rl(i) = s(h2_i, h1_i) - logsumexp([s(h2_i, h1_j) for all j] + [s(h2_i, h2_j) for j != i])

    ``combine="prob"`` (Eq. 2): ``loss_i = -log((p_lr + p_rl) / 2)
    = log 2 - logaddexp(log p_lr, log p_rl)``. ``combine="log"``:
    ``loss_i = -(log p_lr + log p_rl) / 2``, the mean of the two
    cross-entropies as MCLEA's ``icl_loss`` code computes it (``alpha = 0.5``).
    Returns ``mean_i loss_i``. One product ``S = H H^T / t``, ``H = [h1; h2]``:
    row ``i`` of ``S`` is entity ``i``'s candidates plus itself (left out,
    see :func:`_logsumexp_others`); stable at any scale.

    Forward and backward are written out (:class:`_ICL`): one ``[2B, 2B]``
    product forward, two backward (``dH = (dS H + dS^T H) / t``: cheaper than
    forming ``dS + dS^T``, a transposed pass over a ``[2B, 2B]`` matrix that took
    longer than a product at MEAformer's 2B = 7000) and a few passes over ``S``,
    where autograd would run two backward products and a dozen passes.
    With ``"prob"``, a direction whose log-probability is more than
    ``COMBINE_FLOOR`` (25) below the other's is raised to that floor: its share of
    ``p_lr + p_rl`` is under ``e^-25``, below float32 resolution of the loss
    (which is then at least ``log 2``); without the floor its gradient
    weight could reach denormal numbers, which slow the backward products
    of a CPU 30 to 100 times.

    >>> import torch
    >>> h = torch.eye(3) * 10
    >>> round(icl_loss(h, h).item(), 4)  # positives dominate: loss near 0
    0.0
    >>> round(icl_loss(torch.zeros(2, 4), torch.zeros(2, 4)).item(), 4)  # uniform: -log(1/3)
    1.0986
    """
    if h1.dim() != 2 or h1.shape != h2.shape or h1.size(0) == 0:
        raise ValueError(f"icl_loss: h1 and h2 must be non-empty [B, d] of one shape, got {tuple(h1.shape)} and {tuple(h2.shape)}")
    if combine not in ("prob", "log"):
        raise ValueError(f"icl_loss: combine must be 'prob' or 'log', got {combine!r}")
    return _ICL.apply(h1, h2, float(temperature), combine)


#: Logits more than this below their row's maximum are raised to it (:func:`_logsumexp_others`).
_FLOOR = 40.0
#: ``"prob"`` combine: a direction's log-probability is floored this far below the other's.
COMBINE_FLOOR = 25.0


def _logsumexp_others(s: Tensor) -> tuple[Tensor, Tensor]:
    """Row ``logsumexp`` of square ``s`` without the diagonal, CPU-friendly;
    returns it and the row softmax ``P`` (its gradient), computed in place of ``s``.

    Logits below ``m - 40`` (``m``: the row's off-diagonal maximum) and the
    diagonal are set to ``m - 40`` as a constant shift (no gradient through
    it; ``P`` keeps their tiny weights): the sum changes by under ``2B e^-40``
    relative (below float32 resolution), and ``P`` has no entries under
    ``e^-40 / 2B``: with the combine weights (``>= e^-25 / B``) every gradient
    entry stays a normal float32 number (denormal ones make the backward
    products ~30x slower on x86 CPUs; flush-to-zero is a per-thread setting
    library code should not touch).
    """
    s.diagonal().fill_(-math.inf)
    m = s.amax(dim=1, keepdim=True)
    torch.maximum(s, m - _FLOOR, out=s)  # the diagonal (-inf) becomes the floor too
    p = s.sub_(m).exp_()
    z = p.sum(dim=1, keepdim=True)
    p.div_(z)
    return (m + z.log()).squeeze(1), p


class _ICL(torch.autograd.Function):
    """:func:`icl_loss` with a hand-written backward (see there)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # the [2B, 2B] logits in float32 under AMP
    def forward(ctx, h1: Tensor, h2: Tensor, temperature: float, combine: str) -> Tensor:
        b = h1.size(0)
        h = torch.cat([h1, h2])
        pos = (h1 * h2).sum(dim=1) / temperature
        lse, p = _logsumexp_others((h if temperature == 1.0 else h / temperature) @ h.t())
        log_p = pos.repeat(2) - lse
        log_lr, log_rl = log_p[:b], log_p[b:]
        if combine == "log":
            loss = -(log_lr + log_rl).mean() / 2
            weight = torch.full_like(log_p, 0.5 / b)  # -dloss/dlog_p
        else:
            floor = torch.maximum(log_lr, log_rl) - COMBINE_FLOOR
            kept = torch.cat([log_lr >= floor, log_rl >= floor])
            log_lr, log_rl = torch.maximum(log_lr, floor), torch.maximum(log_rl, floor)
            both = torch.logaddexp(log_lr, log_rl)
            loss = (math.log(2.0) - both).mean()
            weight = (torch.cat([log_lr, log_rl]) - both.repeat(2)).exp_().mul_(kept).div_(b)
        ctx.temperature = temperature
        ctx.save_for_backward(h, p, weight)
        return loss

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        h, p, weight = ctx.saved_tensors
        t, b = ctx.temperature, h.size(0) // 2
        c = weight * grad  # -dL/dlog_p; dL/dS = c_i P_ij, dL/dpos = -(c_lr + c_rl)
        g = p * c[:, None]
        dh = (torch.mm(g, h) + torch.mm(g.t(), h)).div_(t)  # (g + g^T) h without a transposed [2B, 2B] pass
        dpos = (c[:b] + c[b:]).div_(t)[:, None]
        dh[:b].addcmul_(h[b:], dpos, value=-1.0)
        dh[b:].addcmul_(h[:b], dpos, value=-1.0)
        return dh[:b], dh[b:], None, None


def _check(features: dict[str, Tensor | None], edge_index: Tensor, seeds: Tensor) -> int:
    present = {m: f for m, f in features.items() if f is not None}
    if set(features) - set(MODALITIES) or not present:
        raise ValueError(f"features: need some of {list(MODALITIES)} not None, got {sorted(features)} ({sorted(present)} given)")
    for m, f in present.items():
        if f.dim() != 2 or not f.is_floating_point():
            raise ValueError(f"features[{m!r}] must be a 2-D float tensor, got {tuple(f.shape)} {f.dtype}")
    rows = {m: f.size(0) for m, f in present.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"features: row counts differ between modalities {rows}")
    n = next(iter(rows.values()))
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
        raise ValueError(f"edge_index must be an integer [2, E] tensor, got {tuple(edge_index.shape)} {edge_index.dtype}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n):
        raise ValueError(f"edge_index: node ids must lie in [0, {n}), got [{edge_index.min()}, {edge_index.max()}]")
    if seeds.dim() != 2 or seeds.size(1) != 2 or seeds.size(0) == 0 or seeds.is_floating_point():
        raise ValueError(f"seeds must be a non-empty integer [S, 2] tensor, got {tuple(seeds.shape)} {seeds.dtype}")
    if seeds.min() < 0 or seeds.max() >= n:
        raise ValueError(f"seeds: pair indices must lie in [0, {n}), got [{seeds.min()}, {seeds.max()}]")
    return n


def _model(features: dict[str, Tensor], config: TuningConfig) -> ContrastiveTuner:
    dims = [features[m].size(1) if m in features else None for m in MODALITIES]
    devices = [torch.device(config.device).index or 0] if torch.device(config.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # init on CPU: same parameters on every device
        torch.manual_seed(config.rng_seed)
        model = ContrastiveTuner(*dims, hidden=config.hidden, heads=config.heads, layers=config.layers,
                                 dropout=config.dropout, negative_scores=config.negative_scores)
    return model.to(config.device)


def _encoder_inputs(feats: dict[str, Tensor], cfg: TuningConfig) -> dict[str, Tensor]:
    """The model's inputs: the visual rows in ``cfg.visual_precision`` (cast once, not per epoch)."""
    dtype = PRECISIONS[cfg.visual_precision]
    return {m: f.to(dtype) if m == "visual" else f for m, f in feats.items()}


def _num_edges(edges: Tensor | Adjacency) -> int:
    return edges.col.numel() if isinstance(edges, Adjacency) else edges.size(1)


def _adamw(model: ContrastiveTuner, cfg: TuningConfig) -> torch.optim.Optimizer:
    """AdamW, the fused implementation where this torch has it for the device
    (one pass per parameter instead of about ten; equal up to float rounding)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _outputs(model: ContrastiveTuner, inputs: dict[str, Tensor], edges, num_dst, normalize: bool) -> dict[str, Tensor]:
    return {m: F.normalize(h, dim=1) if normalize else h for m, h in model(inputs, edges, num_dst).items()}


def fit(features: dict[str, Tensor | None], edge_index: Tensor, seeds: Tensor, config: TuningConfig | None = None,
        progress: bool | None = None) -> tuple[ContrastiveTuner, list[float]]:
    """Train the Stage II model; returns it (in eval mode) and the per-epoch
    loss (sum over the epoch's batches of the modality-summed ICL).

    Arguments as :func:`tune`; ``edge_index`` is used as given (no self loops added).
    """
    cfg = config or TuningConfig()
    n = _check(features, edge_index, seeds)
    dev = torch.device(cfg.device)
    feats = {m: f.to(dev, torch.float32) for m, f in features.items() if f is not None}
    edge_index, seeds = edge_index.to(dev).long(), seeds.to(dev).long()
    model = _model(feats, cfg)
    if cfg.subgraph:  # restrict every epoch to what the seeds' outputs depend on (computed once)
        targets, pair_local = torch.unique(seeds.flatten(), return_inverse=True)
        pair_local = pair_local.view(-1, 2)
        nodes, edges, num_dst = targets, [], None
        if "visual" in feats:
            nodes, edges, num_dst = receptive_field(edge_index, targets, n, cfg.layers)
            if cfg.fused:
                sources = [nodes.numel(), *num_dst[:-1]]
                edges = [Adjacency.build(e, n_src, n_dst) for e, n_src, n_dst in zip(edges, sources, num_dst)]
        inputs = _encoder_inputs({m: f[nodes] if m == "visual" else f[targets] for m, f in feats.items()}, cfg)
        log.info("stage II: %d seed pairs; each epoch runs the visual encoder on %d of %d nodes "
                 "and its attention layers on %s of %d edges", seeds.size(0), nodes.numel(), n,
                 [_num_edges(e) for e in edges], edge_index.size(1))
    else:
        pair_local, num_dst, inputs = seeds, None, _encoder_inputs(feats, cfg)
        edges = Adjacency.build(edge_index, n, n) if cfg.fused and "visual" in feats else edge_index
    optimizer = _adamw(model, cfg)
    generator = torch.Generator().manual_seed(cfg.rng_seed)
    show = sys.stderr.isatty() if progress is None else progress
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.epochs), desc="stage II tuning", disable=not show, leave=False)
    for epoch in bar:
        optimizer.zero_grad(set_to_none=True)
        out = _outputs(model, inputs, edges, num_dst, cfg.normalize_output)
        order = torch.randperm(seeds.size(0), generator=generator).to(dev)
        total = 0.0
        for batch in order.split(cfg.batch_size):
            left, right = pair_local[batch, 0], pair_local[batch, 1]
            for h in out.values():
                total = total + icl_loss(h[left], h[right], cfg.temperature, cfg.icl_combine)
        total.backward()
        optimizer.step()
        losses.append(total.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if cfg.log_every and ((epoch + 1) % cfg.log_every == 0 or epoch == 0):
            log.info("stage II epoch %d/%d: loss %.5f", epoch + 1, cfg.epochs, losses[-1])
    bar.close()
    return model.eval(), losses


def tune(features: dict[str, Tensor | None], edge_index: Tensor, seeds: Tensor, config: TuningConfig | None = None,
         progress: bool | None = None) -> dict[str, Tensor]:
    """Contrastive tuning of Stage II: tuned ``[N, hidden]`` tables, one per present modality.

    Args:
        features: modality (``"visual"``, ``"attribute"``, ``"relation"``) ->
            ``[N, d_m]`` raw features over the pair index (kg1 entities
            ``0..N1-1``, kg2 entities ``N1..N-1``); ``None`` = absent, skipped.
        edge_index: ``[2, E]`` union graph over the pair index (symmetric in
            PSQE). Duplicates are merged and missing self loops added.
        seeds: ``[S, 2]`` Stage I pairs ``(kg1 entity, kg2 entity)`` in pair index.
        config: :class:`TuningConfig` (defaults: the script's values).
        progress: tqdm bar over epochs; default: when stderr is a terminal.

    Returns:
        modality -> ``[N, hidden]`` float tensor on ``config.device``
        (eval mode, no grad). Deterministic for a given ``config.seed`` on CPU.

    >>> import torch
    >>> feats = {"visual": torch.randn(6, 8), "attribute": None, "relation": torch.randn(6, 4)}
    >>> edges = torch.tensor([[0, 1, 3, 4], [1, 0, 4, 3]])
    >>> out = tune(feats, edges, torch.tensor([[0, 3], [1, 4]]), TuningConfig(hidden=5, epochs=3))
    >>> sorted(out), tuple(out["visual"].shape)
    (['relation', 'visual'], (6, 5))
    """
    cfg = config or TuningConfig()
    n = _check(features, edge_index, seeds)
    edge_index = coalesce(edge_index.long(), num_nodes=n)
    edge_index, _ = add_remaining_self_loops(edge_index, num_nodes=n)
    edge_index = sort_edge_index(edge_index, num_nodes=n, sort_by_row=False)  # by destination: faster scatter
    model, _ = fit(features, edge_index, seeds, cfg, progress)
    feats = {m: f.to(cfg.device, torch.float32) for m, f in features.items() if f is not None}
    edge_index = edge_index.to(cfg.device)
    if cfg.fused and "visual" in feats:
        edge_index = Adjacency.build(edge_index, n, n)
    with torch.no_grad():
        return _outputs(model, _encoder_inputs(feats, cfg), edge_index, None, cfg.normalize_output)


__all__ = ["TuningConfig", "fit", "icl_loss", "receptive_field", "tune"]
