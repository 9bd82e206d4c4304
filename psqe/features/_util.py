"""Helpers shared by the feature encoders: cache folder, atomic writes, progress
bars, URI-to-text and per-entity set means.

>>> from psqe.features._util import uri_to_text
>>> uri_to_text("http://dbpedia.org/property/birth_place")
'birth place'
>>> uri_to_text("http://www.w3.org/2004/02/skos/core#prefLabel")
'prefLabel'
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from tqdm.auto import tqdm

T = TypeVar("T")

#: Environment variable naming the cache folder (default ``~/.cache/psqe``).
CACHE_ENV = "PSQE_CACHE"


def default_cache_dir() -> Path:
    """``$PSQE_CACHE`` when set, else ``~/.cache/psqe`` (never the working directory)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "psqe"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder to use: ``cache_dir`` if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(tmp_path)`` on a temporary file in the same
    folder, synced to the disk, then ``os.replace`` it into place: readers never see a partial file,
    and after a crash the path holds the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)  # the data reaches the disk before the name does: a crash leaves the old file or the new one
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode (after the sync,
        # which opens it for writing: a umask without the owner's write bit would refuse that)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync(path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; a folder that cannot be opened
    (Windows) or synced (some network file systems) is left to the OS."""
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDWR)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def progress(iterable: Iterable[T] | None, total: int | None, desc: str, enabled: bool | None,
             unit: str = "batch") -> tqdm:
    """A tqdm bar; ``enabled=None`` shows it only on a terminal, ``False`` never."""
    disable = None if enabled is None else not enabled
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, unit=unit)


def uri_to_text(uri: str) -> str:
    """The last path segment of a URI (after the last ``/`` or ``#``), underscores as spaces."""
    tail = uri.rstrip("/")
    cut = max(tail.rfind("/"), tail.rfind("#"))
    return tail[cut + 1:].replace("_", " ").strip()


def set_mean(
    values: torch.Tensor, sets: Sequence[Sequence[int]], dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise mean of ``values`` over each index set (Eq. 3 of the paper).

    Args:
        values: ``[V, d]`` table.
        sets: per entity, indices into ``values`` (duplicates count once each time listed).
        dim: ``d`` when ``values`` is empty.

    Returns:
        ``(table [N, d], present [N])``; entities with an empty set get a zero row
        and ``present=False``.
    """
    d = values.shape[1] if values.dim() == 2 else int(dim or 0)
    lengths = torch.tensor([len(s) for s in sets], dtype=torch.long)
    out = torch.zeros(len(sets), d, dtype=torch.float32)
    if lengths.sum() == 0:
        return out, lengths > 0
    flat = torch.tensor([i for s in sets for i in s], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(sets)), lengths)
    out.index_add_(0, owner, values[flat].float())
    out /= lengths.clamp(min=1).unsqueeze(1).float()
    return out, lengths > 0
