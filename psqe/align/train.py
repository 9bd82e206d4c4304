"""The training loop every aligner shares: :func:`fit`, :class:`TrainConfig`, iterative learning.

**Model protocol**: an ``nn.Module`` with ``forward(data) -> dict[str, Tensor]``
(``[N, d_m]`` embeddings of all entities per modality plus ``"joint"``, the
one evaluated), ``loss(outputs, pairs) -> Tensor`` (``pairs``: a batch of
int64 ``[B, 2]`` pair-index training pairs), optionally ``on_epoch_end(epoch, data)``
and ``extra_train_pairs() -> Tensor`` (pairs the model adds itself, e.g.
PCMEA's pseudo-links: shuffled and batched with the training pairs each epoch,
so that more pairs make more batches of ``batch_size``, not bigger ones). A
model whose loss reads only its batch's rows may set ``rows_per_batch = True``
(MEAformer, MCLEA, PCMEA): a training step then calls ``forward(data, nodes=...)`` with
the step's entities (sorted), which returns one row per node in every value
(``[len(nodes), ...]``; PCMEA adds ``"rows"``, the rows' entity ids), and
calls ``loss`` once per batch with that batch's rows only and the pairs as
positions there (:func:`_batch_views`). Every other call
(evaluation, iterative learning, the model's own hooks) is a full pass.

**An epoch** shuffles the training pairs (generator seeded by ``seed``) into
batches. ``step_per_batch=False`` (EVA, MCLEA, PCMEA): one forward pass, batch losses
summed, one AdamW step; ``True`` (MEAformer): a forward pass and a step per
batch. Constant lr, or cosine after a linear ``warmup`` fraction;
``grad_clip``; ``amp``: float16 autocast and gradient scaling, CUDA only.

**Iterative learning** (``il``): from epoch ``il_start``, every ``il_every``
epochs, the mutual nearest neighbours (joint-embedding cosine, fused top-1
both ways) among entities in no training (nor clean validation) pair are
found; the pairs found at all ``il_persist`` checks of a cycle join the
training pairs when it ends. EVA's code: ``il_every=5, il_persist=10``;
default 2 (persist across two consecutive checks). ``il_lr_scale`` multiplies
the lr from ``il_start`` (EVA: 0.2; its optimiser re-creation is not copied).
``lr_drop_epoch`` / ``lr_drop_factor`` multiply it from a given epoch
whatever ``il`` is (PCMEA divides it by 5 when its pseudo-labelling starts).

**Model selection**: every ``eval_every`` epochs (and the last), with
``val_pairs`` the joint embedding is ranked on them (candidates: all of kg2;
``val_candidates="pairs"``: the pairs' right entities, the legacy way) and
``select_metric`` is one of their ``mrr``, ``hits@1``, ``hits@10``; or,
without labels, ``select_metric="mnn"`` counts the
mutual nearest neighbours among the entities that no ``train_pairs`` or
``val_pairs`` use (:func:`psqe.align.selection.label_free_scores`): one
set for the whole run, so pairs that iterative learning or the model
(``extra_train_pairs``) add later stay in it, and the count rises with
them (``fit`` warns): for PCMEA it picks about the check with the most
pseudo-links, the last one, which came 0.009-0.034 H@1 below the best
check in bench/results/README.md's stop 26. Validation entities
(``val_candidates="all"``) are never proposed by iterative learning, nor by
a model's own pseudo-labels: a model with an ``exclude`` method (PCMEA) is
given them. The best state is
restored (``restore_best``; else it is left in ``TrainResult.best_state``);
``patience`` evaluations without a gain stop training.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import AlignData
from .metrics import rank_metrics
from .selection import free_entities, label_free_scores, mutual_nearest

log = logging.getLogger(__name__)

#: ``select_metric`` values ranked on ``val_pairs``, and those computed without labels (module docstring).
VAL_METRICS = ("mrr", "hits@1", "hits@10")
#: (``mnn_cos``, the pairs' mean cosine, is reported but not offered: it ran against test accuracy in
#: ``bench/selection_study.py``, bench/results/README.md stops 19 and 20.)
LABEL_FREE = ("mnn",)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fit`; see the module docstring. Defaults are EVA's (lr, batch, epochs)."""

    epochs: int = 500
    lr: float = 5e-4
    weight_decay: float = 0.01
    batch_size: int = 7500
    step_per_batch: bool = False
    scheduler: str = "none"
    warmup: float = 0.0
    grad_clip: float | None = None
    amp: bool = False
    seed: int = 0
    device: str = "cpu"
    eval_every: int = 0
    select_metric: str = "mrr"
    val_csls_k: int = 3
    val_candidates: str = "all"
    patience: int = 0
    restore_best: bool = True
    il: bool = False
    il_start: int = 0
    il_every: int = 5
    il_persist: int = 2
    il_lr_scale: float = 1.0
    lr_drop_epoch: int | None = None
    lr_drop_factor: float = 1.0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name, low in (("epochs", 0), ("batch_size", 1), ("eval_every", 0), ("patience", 0), ("il_start", 0),
                          ("il_every", 1), ("il_persist", 1), ("log_every", 0), ("val_csls_k", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"TrainConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.warmup < 1 and self.il_lr_scale > 0
                and self.lr_drop_factor > 0 and (self.grad_clip is None or self.grad_clip > 0)):
            raise ValueError("TrainConfig: need lr > 0, weight_decay >= 0, 0 <= warmup < 1, il_lr_scale > 0, "
                             "lr_drop_factor > 0, grad_clip > 0")
        if self.lr_drop_epoch is not None and self.lr_drop_epoch < 0:
            raise ValueError(f"TrainConfig.lr_drop_epoch must be >= 0 or None, got {self.lr_drop_epoch}")
        for name, allowed in (("scheduler", ("none", "cosine")), ("val_candidates", ("all", "pairs")),
                              ("select_metric", (*VAL_METRICS, *LABEL_FREE))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def with_epochs(self, epochs: int) -> "TrainConfig":
        """This schedule stretched or shrunk to ``epochs``: the epoch-numbered
        points (``il_start``, ``lr_drop_epoch``) and the interval ``il_every``
        keep their fraction of the run, rounded (an interval at least 1); the
        persistence count ``il_persist`` stays. The cosine schedule and its
        warm-up are fractions already.

        >>> cfg = TrainConfig(epochs=1000, il_start=500, il_every=5, lr_drop_epoch=500).with_epochs(100)
        >>> cfg.lr_drop_epoch, cfg.il_start, cfg.il_every
        (50, 50, 1)
        """
        return replace(self, epochs=epochs,
                       **_rescaled(self, ("il_start", "lr_drop_epoch"), ("il_every",), epochs / max(self.epochs, 1)))


def _rescaled(config, points: tuple[str, ...], intervals: tuple[str, ...], factor: float) -> dict:
    """The named epoch fields of ``config`` that are set, times ``factor`` and
    rounded: ``points`` (epoch numbers) as they come, ``intervals`` at least 1."""
    out = {n: round(getattr(config, n) * factor) for n in points if getattr(config, n) is not None}
    out.update({n: max(1, round(getattr(config, n) * factor)) for n in intervals if getattr(config, n) is not None})
    return out


@dataclass
class TrainResult:
    """What :func:`fit` did: per-epoch ``losses``; ``val_history`` (``epoch`` and
    metrics per evaluation); ``best_epoch`` / ``best_score`` (None without
    validation); final ``train_pairs`` (seeds plus iterative learning's);
    ``il_added``: ``(epoch, count)`` per merge; ``best_state``: the selected
    epoch's ``state_dict`` when ``restore_best`` is off (else None)."""

    losses: list[float] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    seconds: float = 0.0
    train_pairs: Tensor | None = None
    il_added: list[tuple[int, int]] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None


@torch.no_grad()
def embed(model: nn.Module, data: AlignData) -> dict[str, Tensor]:
    """``model(data)`` in eval mode without gradients (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return model(data)
    finally:
        model.train(was_training)


class MutualNeighbours:
    """Iterative learning's candidate tracker (module docstring): call :meth:`check` when due.

    ``blocked``: pair-index pairs whose entities are never proposed (validation entities).
    """

    def __init__(self, data: AlignData, persist: int, blocked: Tensor | None = None) -> None:
        self.n1, self.n, self.persist, self.blocked = data.n1, data.num_entities, persist, blocked
        self.count, self.keys = 0, None

    def check(self, joint: Tensor, train: Tensor) -> Tensor | None:
        """One check; returns the pairs to add when a cycle completes, else None."""
        free_l, free_r = free_entities(self.n, self.n1, train, self.blocked, device=joint.device)
        left, right, _ = mutual_nearest(joint, free_l, free_r)
        keys = left * self.n + right
        self.keys = keys if self.count == 0 else keys[torch.isin(keys, self.keys)]
        self.count += 1
        if self.count < self.persist:
            return None
        out = torch.stack([self.keys // self.n, self.keys % self.n], dim=1)
        self.count, self.keys = 0, None
        return out


def _lr_factor(cfg: TrainConfig, progress: float, epoch: int) -> float:
    factor, w = 1.0, cfg.warmup
    if cfg.scheduler == "cosine":
        factor = progress / w if progress < w else 0.5 * (1.0 + math.cos(math.pi * (progress - w) / (1.0 - w)))
    if cfg.lr_drop_epoch is not None and epoch >= cfg.lr_drop_epoch:
        factor *= cfg.lr_drop_factor
    return factor * (cfg.il_lr_scale if cfg.il and epoch >= cfg.il_start else 1.0)


def fit(model: nn.Module, data: AlignData, train_pairs: Tensor, config: TrainConfig | None = None,
        val_pairs: Tensor | None = None, progress: bool | None = None,
        monitor: Callable[[int, nn.Module, AlignData], dict] | None = None) -> TrainResult:
    """Train ``model`` (module docstring) on ``train_pairs``; returns a :class:`TrainResult`.

    ``train_pairs`` / ``val_pairs``: int64 ``[S, 2]`` pair-index pairs (map
    global ids with :meth:`AlignData.pairs_from_global`); training pairs must be
    one-to-one. Model and data move to ``config.device``. ``progress``: a tqdm
    bar (default: when stderr is a terminal). Deterministic by ``config.seed``
    on CPU: it seeds the global generator (dropout) and the batching generator.
    ``monitor(epoch, model, data)``: called at each evaluation (every
    ``eval_every`` epochs and the last, with or without ``val_pairs``); the
    numbers it returns join that evaluation's ``val_history`` entry, never
    the selection (``bench/selection_study.py`` records test accuracy there).
    """
    cfg = config or TrainConfig()
    dev = torch.device(cfg.device)
    data = data.to(dev)
    train = data.check_pairs(train_pairs, "train_pairs")
    if train.shape[0] == 0:
        raise ValueError("fit: train_pairs is empty")
    if cfg.il and getattr(model, "extra_train_pairs", None) is not None:
        raise ValueError(f"fit: {type(model).__name__} adds its own training pairs (extra_train_pairs), which "
                         "iterative learning (il=True) would not see: it could propose entities already "
                         "paired; train it with il=False")
    val = None if val_pairs is None else data.check_pairs(val_pairs, "val_pairs", one_to_one=False)
    if val is not None and bool(torch.isin(val.flatten(), train.flatten()).any()):
        log.warning("fit: val_pairs share entities with train_pairs (fine for the legacy protocol only)")
    model.to(dev)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = cfg.amp and dev.type == "cuda"
    if cfg.amp and not amp:
        log.info("fit: mixed precision needs CUDA; training in float32 on %s", dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    generator = torch.Generator().manual_seed(cfg.seed)
    blocked = val if cfg.val_candidates == "all" else None
    tracker = MutualNeighbours(data, cfg.il_persist, blocked) if cfg.il else None
    if blocked is not None and hasattr(model, "exclude"):  # the model's own pseudo-labels skip them too (PCMEA)
        model.exclude(blocked)
    result, best_state, stale, seeds = TrainResult(), None, 0, train
    selecting = val is not None or cfg.select_metric in LABEL_FREE
    show = sys.stderr.isatty() if progress is None else progress
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"training {type(model).__name__}", disable=not show, leave=False)
    model.train()
    extra = getattr(model, "extra_train_pairs", None)
    if cfg.select_metric in LABEL_FREE and cfg.eval_every and (extra is not None or cfg.il):
        log.warning("fit: select_metric=%r counts the pairs this run adds itself (%s) and rises with them; "
                    "on PCMEA it picked the last check, 0.009-0.034 H@1 below the best one "
                    "(bench/results/README.md, stop 26)", cfg.select_metric,
                    "the model's extra_train_pairs" if extra is not None else "iterative learning's merges")
    for epoch in bar:
        pool = train if extra is None else torch.cat([train, extra().to(dev)])
        batches = pool[torch.randperm(pool.shape[0], generator=generator).to(dev)].split(cfg.batch_size)
        groups = [[b] for b in batches] if cfg.step_per_batch else [list(batches)]
        total = 0.0
        for g, group in enumerate(groups):
            for pg in optimizer.param_groups:
                pg["lr"] = cfg.lr * _lr_factor(cfg, (epoch + g / len(groups)) / max(cfg.epochs, 1), epoch)
            total += _step(model, data, group, optimizer, scaler, params, cfg, amp)
        if not math.isfinite(total):
            raise FloatingPointError(f"fit: the loss became {total} at epoch {epoch}")
        result.losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}", pairs=pool.shape[0], refresh=False)
        if cfg.log_every and ((epoch + 1) % cfg.log_every == 0 or epoch == 0):
            log.info("%s epoch %d/%d: loss %.5f, %d training pairs", type(model).__name__, epoch + 1, cfg.epochs,
                     total, pool.shape[0])
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch, data)
        if tracker is not None and epoch >= cfg.il_start and (epoch + 1) % cfg.il_every == 0:
            new = tracker.check(embed(model, data)["joint"], train)
            if new is not None and new.shape[0]:
                train = torch.cat([train, new])
                result.il_added.append((epoch, int(new.shape[0])))
                log.info("iterative learning, epoch %d: %d pairs added, %d in all", epoch + 1, new.shape[0], train.shape[0])
        due = cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
        if due and (selecting or monitor is not None):
            metrics = _evaluate(model, data, cfg, val, seeds, lambda: _added(train, seeds, extra))
            result.val_history.append({"epoch": epoch, **metrics, **(monitor(epoch, model, data) if monitor else {})})
            if not selecting:
                continue
            if result.best_score is None or metrics[cfg.select_metric] > result.best_score:
                result.best_epoch, result.best_score, stale = epoch, metrics[cfg.select_metric], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if cfg.patience and stale >= cfg.patience:
                    log.info("early stop at epoch %d: no %s gain in %d evaluations", epoch + 1, cfg.select_metric, stale)
                    break
    bar.close()
    if best_state is not None and cfg.restore_best:
        model.load_state_dict(best_state)
    elif best_state is not None:
        result.best_state = best_state
    model.eval()
    result.seconds, result.train_pairs = time.perf_counter() - start, train
    return result


def _batch_rows(group: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The entities of a step's batches (sorted) and the batches in positions of that list.

    >>> nodes, local = _batch_rows([torch.tensor([[7, 12], [3, 10]])])
    >>> nodes.tolist(), local[0].tolist()
    ([3, 7, 10, 12], [[1, 3], [0, 2]])
    """
    nodes = torch.unique(torch.cat(group).flatten())
    return nodes, [torch.searchsorted(nodes, b) for b in group]


def _batch_views(out: dict[str, Tensor], group: list[Tensor]):
    """Each batch's rows of ``out`` (its kg1 entities, then its kg2 ones) and its pairs as positions there.

    One gather per output for the whole step, then split per batch: the
    backward scatters each output's gradient once. Indexing the step's
    outputs per batch and loss term instead scattered a zero-filled
    gradient of the outputs' full size for every index (PCMEA with 12,000
    pseudo-links, 26 batches: 60% of a step's time). A step of one batch
    keeps its rows as they are.

    >>> out = {"joint": torch.arange(8.0).view(4, 2)}
    >>> group = [torch.tensor([[2, 0]]), torch.tensor([[1, 3]])]
    >>> [(rows["joint"].tolist(), b.tolist()) for rows, b in _batch_views(out, group)]
    [([[4.0, 5.0], [0.0, 1.0]], [[0, 1]]), ([[2.0, 3.0], [6.0, 7.0]], [[0, 1]])]
    """
    if len(group) == 1:  # one batch a step (MEAformer): its rows are the step's, nothing to split
        yield out, group[0]
        return
    order = torch.cat([b.t().flatten() for b in group])
    sizes = [2 * b.shape[0] for b in group]
    chunks = {k: v[order].split(sizes) for k, v in out.items()}
    for i, b in enumerate(group):
        n = b.shape[0]
        yield {k: c[i] for k, c in chunks.items()}, torch.arange(2 * n, device=b.device).view(2, n).t()


def _step(model, data, group, optimizer, scaler, params, cfg: TrainConfig, amp: bool) -> float:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(data.device.type, dtype=torch.float16, enabled=amp):
        if getattr(model, "rows_per_batch", False):  # the model computes the batch's entities only
            nodes, group = _batch_rows(group)
            loss = sum(model.loss(rows, b) for rows, b in _batch_views(model(data, nodes=nodes), group))
        else:
            out = model(data)
            loss = sum(model.loss(out, b) for b in group)
    scaler.scale(loss).backward()
    if cfg.grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def _added(train: Tensor, seeds: Tensor, extra) -> Tensor:
    """The pairs a run added to its ``seeds`` so far: iterative learning's (the tail of ``train``) and the
    model's own (``extra``, its ``extra_train_pairs``)."""
    parts = [train[seeds.shape[0]:]] + ([] if extra is None else [extra().to(train.device)])
    return torch.cat(parts)


def _evaluate(model: nn.Module, data: AlignData, cfg: TrainConfig, val: Tensor | None, seeds: Tensor,
              added: Callable[[], Tensor]) -> dict[str, float]:
    """The selection numbers of one evaluation: ranks of ``val`` and, for a label-free ``select_metric``,
    :func:`label_free_scores` over the entities in no ``seeds`` (the given training pairs) or ``val`` pair
    (with ``mnn_added``: how many of its pairs are among ``added()``)."""
    joint = embed(model, data)["joint"]
    out = {}
    if val is not None:
        if cfg.val_candidates == "pairs":
            out.update(rank_metrics(joint[val[:, 0]], joint[val[:, 1]], cfg.val_csls_k))
        else:
            out.update(rank_metrics(joint[val[:, 0]], joint[data.n1:], cfg.val_csls_k, truth=val[:, 1] - data.n1))
    if cfg.select_metric in LABEL_FREE:
        out.update(label_free_scores(joint, data.n1, seeds, val, added=added()))
    return out


__all__ = ["MutualNeighbours", "TrainConfig", "TrainResult", "embed", "fit"]
