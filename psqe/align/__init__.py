"""Downstream aligners trained on seeds, and their evaluation (issue 5).

- :class:`AlignData` (:mod:`.data`): a pair's features, structure and links
  in the *pair index* (kg1 local order, then kg2 local order);
- :mod:`.losses`: EVA's NCA, MCLEA's ICL and IAL, uncertainty weighting;
- :func:`fit` / :class:`TrainConfig` (:mod:`.train`): the shared training
  loop with iterative learning and model selection on validation pairs;
- :func:`rank_metrics`, :func:`legacy_split`, :func:`clean_split`,
  :func:`evaluate` (:mod:`.metrics`): Hits@k / MRR with CSLS, without an
  ``n x m`` matrix, under the community's protocol and a clean one;
- aligners: :class:`EVA` (:mod:`.eva`), :class:`MCLEA` (:mod:`.mclea`),
  :class:`MEAformer` (:mod:`.meaformer`), :class:`PCMEA` (:mod:`.pcmea`), on the
  shared encoders of :mod:`.encoders`. :func:`build_aligner` makes one by name.

A supervised run on a synthetic pair, evaluated both ways:

>>> import torch
>>> from psqe.data.synthetic import make_pair
>>> from psqe.align import AlignData, EVA, EVAConfig, eva_train_config, fit, legacy_split, evaluate
>>> pair = make_pair(300, seed=0)
>>> data = AlignData.from_pair(pair)
>>> split = legacy_split(pair.links).to_pair_index(data)
>>> model = EVA(data, EVAConfig(entity_dim=64, hidden=64, graph_dim=32))
>>> _ = fit(model, data, split.train, eva_train_config(epochs=5), progress=False)
>>> metrics = evaluate(model(data), split, data)
>>> sorted(k for k in metrics if not k.startswith("r2l"))
['candidates', 'hits@1', 'hits@10', 'mrr', 'queries']
"""
from __future__ import annotations

from dataclasses import replace

from .data import AlignData
from .metrics import PROTOCOLS, Split, clean_split, evaluate, legacy_split, pairs_digest, rank_metrics, ranks
from .eva import EVA, EVAConfig, eva_train_config
from .mclea import MCLEA, MCLEAConfig, mclea_train_config
from .meaformer import MEAformer, MEAformerConfig, meaformer_train_config
from .pcmea import PCMEA, PCMEAConfig, pcmea_train_config
from .losses import NCALoss, UncertaintyWeighting, contrastive_loss, ial_loss, icl_loss, nca_loss
from .train import MutualNeighbours, TrainConfig, TrainResult, _rescaled, embed, fit

#: Aligner name -> (model class, its config dataclass, its default TrainConfig factory).
ALIGNERS = {"eva": (EVA, EVAConfig, eva_train_config), "mclea": (MCLEA, MCLEAConfig, mclea_train_config),
            "meaformer": (MEAformer, MEAformerConfig, meaformer_train_config),
            "pcmea": (PCMEA, PCMEAConfig, pcmea_train_config)}

#: Aligners whose own pseudo-labelling takes the place of iterative learning: ``iterative=True`` is refused
#: with :data:`NO_ITERATIVE` (by :func:`build_aligner`, and by ``psqe reproduce`` before it writes anything).
OWN_PSEUDO_LABELS = ("pcmea",)
NO_ITERATIVE = ("PCMEA's pseudo-label calibration takes the place of iterative learning; "
                "iterative runs are for eva, mclea and meaformer")


def build_aligner(name: str, data: AlignData, *, surface: bool = False, seed: int = 0, epochs: int | None = None,
                  iterative: bool = False, **config):
    """``(model, train_config)`` of the aligner called ``name`` (case-insensitive) for ``data``.

    ``surface`` is the "w/ surface" switch (the config's ``use_surface``),
    ``seed`` the model's initialisation seed, ``config`` other fields of the
    model's config dataclass. ``epochs`` (None: the model's own) shortens or
    lengthens the run *with its schedule*: epoch-numbered points and epoch
    intervals keep their fraction of the run (:meth:`TrainConfig.with_epochs`;
    PCMEA's momentum and pseudo-label start and their intervals, unless given
    in ``config``), so that a shortened PCMEA still runs its pseudo-label
    cycles in its second half. ``iterative``: the authors' iterative runs
    (EVA's ``epochs=1000, il=True``): the schedule as given, then as many
    epochs again with iterative learning from the schedule's end (checks every
    ``il_every`` epochs, merged after ``il_persist`` checks, lr times
    ``il_lr_scale``; a cosine schedule spans the whole run); PCMEA refuses it,
    its pseudo-label calibration takes that place. Raises ``ValueError``
    listing the known names for an unknown one.

    >>> build_aligner("nope", None)
    Traceback (most recent call last):
    ...
    ValueError: unknown aligner 'nope'; known: eva, mclea, meaformer, pcmea
    """
    key = str(name).lower()
    if key not in ALIGNERS:
        raise ValueError(f"unknown aligner {name!r}; known: {', '.join(sorted(ALIGNERS))}")
    cls, config_cls, train_config = ALIGNERS[key]
    train = train_config(seed=seed)
    if epochs is not None and epochs != train.epochs:
        if epochs < 0:
            raise ValueError(f"build_aligner: epochs must be >= 0, got {epochs}")
        points, intervals = ([f for f in getattr(config_cls, name, ()) if f not in config]
                             for name in ("SCHEDULE_POINTS", "SCHEDULE_INTERVALS"))
        config.update(_rescaled(config_cls(), tuple(points), tuple(intervals), epochs / max(train.epochs, 1)))
        train = train.with_epochs(epochs)
    if iterative:
        if key in OWN_PSEUDO_LABELS:
            raise ValueError(f"build_aligner: {NO_ITERATIVE}")
        train = replace(train, il=True, il_start=train.epochs, epochs=2 * train.epochs)
    return cls(data, config_cls(use_surface=surface, **config), seed=seed), train


__all__ = [
    "ALIGNERS", "AlignData", "NO_ITERATIVE", "OWN_PSEUDO_LABELS", "EVA", "EVAConfig", "MCLEA", "MCLEAConfig", "MEAformer", "MEAformerConfig", "PCMEA",
    "PCMEAConfig", "mclea_train_config", "meaformer_train_config", "pcmea_train_config", "MutualNeighbours", "NCALoss", "PROTOCOLS", "Split", "TrainConfig",
    "TrainResult", "UncertaintyWeighting", "build_aligner", "clean_split", "contrastive_loss", "embed", "eva_train_config",
    "evaluate", "fit", "ial_loss", "icl_loss", "legacy_split", "nca_loss", "pairs_digest", "rank_metrics", "ranks",
]
