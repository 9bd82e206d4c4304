"""What every loader shares: the error type, the loaded-pair record, and
strict, fast readers for the tab-separated text files of the community layouts.

Text rules (all layouts): UTF-8 (a byte-order mark is skipped); fields
separated by one TAB; lines end in ``\\n``, ``\\r\\n`` or ``\\r`` (Python's
universal newlines: numpy's reader, which parses the integer files, takes all
three); blank lines carry no data and are skipped (line numbers in messages
stay those of the file); a missing final newline is fine. A line with
the wrong number of fields or a non-integer id raises :class:`DatasetError`
naming the file and the 1-based line.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "ill_ent_ids"
>>> _ = p.write_text("0\\t10\\n1\\t11")          # no trailing newline: fine
>>> read_rows(p, 2).int_array().tolist()
[[0, 10], [1, 11]]
>>> _ = p.write_text("0\\t10\\n1\\tx\\n")
>>> read_rows(p, 2).int_array()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
psqe.data.common.DatasetError: ...ill_ent_ids:2: field 2 is not an integer id: 'x'
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .kg import KGPair, KnowledgeGraph

logger = logging.getLogger("psqe.data")


class DatasetError(ValueError):
    """A dataset file is missing or wrong. ``path`` and ``line`` (1-based, or
    None when the problem is not tied to a line) say where."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.line = line
        self.reason = message
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(where + message)


@dataclass(eq=False)
class LoadedPair(KGPair):
    """A :class:`KGPair` read from disk, with what the files add beyond the model.

    Attributes:
        layout: ``"eva"`` or ``"openea"``.
        source: the folder read.
        files: role (``"ent_ids_1"``, ``"names_json"``, ``"visual"``, ...) -> file read.
        splits: named link splits, each ``{"train"|"valid"|"test": LongTensor [L, 2]}``
            of global ids: OpenEA folds under their folder names (``"1"`` .. ``"5"``),
            the DWY ``sup_ent_ids`` split under ``"sup_ent_ids"``.
        name_tokens: global id -> name tokens (the ``translated_ent_name`` JSON), or None.
        translated_names: global id -> machine-translated name of a KG1 entity
            (``ent_ids_1_trans_goo``), or None.
        warnings: the warnings logged while loading (each with its count).
    """

    layout: str = ""
    source: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    splits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    name_tokens: dict[int, list[str]] | None = None
    translated_names: dict[int, str] | None = None
    warnings: list[str] = field(default_factory=list)

    def tokens_for(self, kg: KnowledgeGraph) -> list[list[str]] | None:
        """Name tokens of ``kg``'s entities in local order (``[]`` where the JSON has none)."""
        if self.name_tokens is None:
            return None
        return [self.name_tokens.get(int(i), []) for i in kg.ids.tolist()]

    def warn(self, message: str) -> None:
        """Log a data warning and keep it in :attr:`warnings`."""
        logger.warning("%s: %s", self.name or self.source, message)
        self.warnings.append(message)


@dataclass
class Rows:
    """The non-blank lines of a text file split on TABs, with their line numbers."""

    path: Path
    rows: list[list[str]]
    line_numbers: list[int] | None = None  # None: row i is line i + 1

    def __len__(self) -> int:
        return len(self.rows)

    def line(self, row: int) -> int:
        return row + 1 if self.line_numbers is None else self.line_numbers[row]

    def error(self, row: int, message: str) -> DatasetError:
        return DatasetError(message, self.path, self.line(row))

    def column(self, j: int) -> list[str]:
        return [r[j] for r in self.rows]

    def int_array(self, columns: int | None = None) -> np.ndarray:
        """The first ``columns`` fields (default: all) as an int64 ``[rows, columns]`` array."""
        k = columns if columns is not None else (len(self.rows[0]) if self.rows else 0)
        for i, r in enumerate(self.rows):
            for j, x in enumerate(r[:k]):
                if not INTEGER_ID.fullmatch(x):
                    raise self.error(i, f"field {j + 1} is not an integer id: {x!r}")
        return self._int64([int(x) for r in self.rows for x in r[:k]], range(k)).reshape(len(self.rows), k)

    def int_column(self, j: int) -> np.ndarray:
        """Field ``j`` (0-based) as int64 ``[rows]``; a non-integer names its line."""
        for i, r in enumerate(self.rows):
            if not INTEGER_ID.fullmatch(r[j]):
                raise self.error(i, f"field {j + 1} is not an integer id: {r[j]!r}")
        return self._int64([int(r[j]) for r in self.rows], (j,))


    def _int64(self, values: list[int], columns) -> np.ndarray:
        try:
            return np.asarray(values, dtype=np.int64)
        except OverflowError:
            for i, r in enumerate(self.rows):
                for j in columns:
                    if not -(2**63) <= int(r[j]) < 2**63:
                        raise self.error(i, f"field {j + 1} is out of the int64 range: {r[j]!r}") from None
            raise


def line_of_byte(data: bytes, offset: int) -> int:
    """The 1-based line (universal line ends) that holds byte ``offset`` of ``data``."""
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def read_text(path: Path) -> str:
    """A file's text as UTF-8; a decoding error names the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"not UTF-8 text ({e.reason} at byte {e.start})", path, line_of_byte(data, e.start)) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    # universal line ends, as Python's text mode and numpy's reader (IntTable's fast path) read them
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def read_rows(path: str | Path, fields: int | tuple[int, int | None]) -> Rows:
    """Read a TAB-separated file; ``fields`` is an exact count or ``(min, max)``
    (``max`` None: no upper bound). A line outside the bounds raises, naming it."""
    path = Path(path)
    text = read_text(path)
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    line_numbers = None
    if _BLANK_LINE.search(body) is not None:
        keep = [i for i, s in enumerate(lines) if s and not s.isspace()]
        lines = [lines[i] for i in keep]
        line_numbers = [i + 1 for i in keep]
    rows = [s.split("\t") for s in lines]
    out = Rows(path, rows, line_numbers)
    lo, hi = (fields, fields) if isinstance(fields, int) else fields
    if not all(lo <= n and (hi is None or n <= hi) for n in set(map(len, rows))):
        want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        for i, r in enumerate(rows):
            if len(r) < lo or (hi is not None and len(r) > hi):
                raise out.error(i, f"expected {want} TAB-separated fields, found {len(r)}: {lines[i][:120]!r}")
    return out


_BLANK_LINE = re.compile(r"^[^\S\n]*$", re.MULTILINE)
#: An integer id as the files write it: ASCII digits, an optional sign, spaces around (``int()`` alone would
#: also take ``0_1`` or other scripts' digits).
INTEGER_ID = re.compile(r"\s*[+-]?[0-9]+\s*")


class IntTable:
    """An all-integer TAB-separated file (triples, links) as int64 ``[rows, k]``.

    Parsed by numpy's C reader; a file it rejects is re-read line by line so
    that the error names the line. ``error(row, ...)`` maps rows to lines
    (re-reading the file only when an error is reported).
    """

    def __init__(self, path: str | Path, k: int) -> None:
        self.path, self.k = Path(path), k
        self._rows: Rows | None = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty file warns
                arr = np.loadtxt(self.path, dtype=np.int64, delimiter="\t", comments=None, ndmin=2, encoding="utf-8")
            if arr.size == 0:
                arr = np.zeros((0, k), dtype=np.int64)
            if arr.shape[1] != k:
                raise ValueError("wrong field count")
        except (ValueError, UnicodeDecodeError):
            self._rows = read_rows(self.path, k)
            arr = self._rows.int_array(k) if len(self._rows) else np.zeros((0, k), dtype=np.int64)
        self.array = arr

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def line(self, row: int) -> int:
        if self._rows is None:
            self._rows = read_rows(self.path, self.k)
        return self._rows.line(row)

    def error(self, row: int, message: str) -> DatasetError:
        return DatasetError(message, self.path, self.line(row))


def first_duplicate(values: np.ndarray) -> tuple[int, int] | None:
    """``(first, second)`` row positions of the first value that occurs twice, or None."""
    if np.unique(values).size == values.size:
        return None
    seen: dict[int, int] = {}
    for i, v in enumerate(values.tolist()):
        if v in seen:
            return seen[v], i
        seen[v] = i
    return None  # pragma: no cover


def require(folder: Path, name: str, layout: str) -> Path:
    """``folder / name``, or a DatasetError saying which file the detected layout lacks."""
    p = folder / name
    if not p.is_file():
        raise DatasetError(f"missing required file {name!r} (detected layout: {layout})", p)
    return p


def check_links(links: Rows | IntTable, arr: np.ndarray, kg_ids: tuple[np.ndarray, np.ndarray], kg_files: tuple[str, str]) -> None:
    """Links ``[L, 2]`` of global ids: each side names an entity of its graph; one-to-one."""
    for side in (0, 1):
        ok = np.isin(arr[:, side], kg_ids[side])
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise links.error(i, f"link names {int(arr[i, side])}, not an entity of kg{side + 1} ({kg_files[side]})")
    for side in (0, 1):
        dup = first_duplicate(arr[:, side])
        if dup is not None:
            raise links.error(dup[1], f"one-to-many link: kg{side + 1} entity {int(arr[dup[1], side])} is already linked on line {links.line(dup[0])}")
