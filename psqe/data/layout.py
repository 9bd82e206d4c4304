"""``load_dataset``: find a dataset folder, detect its layout, load it.

A folder path always works. A name such as ``"DBP15K/zh_en"`` is looked up
under a data root: the ``root`` argument, else the ``PSQE_DATA`` environment
variable; there is no hidden default. Known names (and their short aliases):

* ``DBP15K/zh_en``, ``DBP15K/ja_en``, ``DBP15K/fr_en`` (``zh_en`` ...);
* ``DWY15K/dbp_wd_15k_V1``, ``DWY15K/dbp_wd_15k_V2`` (``DWY15K/V1`` ...; also
  found as RSN's ``dbp_wd_15k_V1/mapping/0_3`` and EVA's ``DWY_data/...``);
* ``DWY15K/OEA_D_W_15K_V1`` and the other Multi-OpenEA names.

Any other name is taken as a folder relative to the root. Layouts: EVA/MCLEA
(:mod:`psqe.data.eva`) and OpenEA v1.1 (:mod:`psqe.data.openea`), told apart
by their files, so e.g. a DBP15K fr_en folder loads by format alone.

>>> import os
>>> from psqe.data.layout import load_dataset
>>> pair = load_dataset("DBP15K/zh_en", root=os.environ["PSQE_DATA"])  # doctest: +SKIP
>>> pair.kg1.num_entities, pair.kg2.num_entities, len(pair.links)  # doctest: +SKIP
(19388, 19572, 15000)
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .common import DatasetError, LoadedPair
from .eva import load_eva
from .openea import load_openea

logger = logging.getLogger("psqe.data")

_ALIASES = {
    "zh_en": "DBP15K/zh_en", "ja_en": "DBP15K/ja_en", "fr_en": "DBP15K/fr_en",
    "DWY15K/V1": "DWY15K/dbp_wd_15k_V1", "DWY15K/V2": "DWY15K/dbp_wd_15k_V2",
    "DWY15K/norm": "DWY15K/dbp_wd_15k_V1", "DWY15K/dense": "DWY15K/dbp_wd_15k_V2",
    "dbp_wd_15k_V1": "DWY15K/dbp_wd_15k_V1", "dbp_wd_15k_V2": "DWY15K/dbp_wd_15k_V2",
}
_OEA = ("OEA_D_W_15K_V1", "OEA_D_W_15K_V2", "OEA_EN_FR_15K_V1", "OEA_EN_DE_15K_V1")


def canonical_name(name: str) -> str:
    """A dataset name with its short alias spelled out.

    >>> canonical_name("DWY15K/V1"), canonical_name("zh_en"), canonical_name("my/folder/")
    ('DWY15K/dbp_wd_15k_V1', 'DBP15K/zh_en', 'my/folder')
    """
    return _ALIASES.get(name.strip("/"), name.strip("/"))


def candidates(name: str) -> list[str]:
    """Relative folders tried, in order, for a dataset name."""
    name = canonical_name(name)
    base = name.split("/")[-1]
    if name.startswith("DBP15K/"):
        return [name, f"mmkg/{name}", base]
    if name.startswith("DWY15K/dbp_wd_15k_V"):
        return [name, f"{name}/mapping/0_3", f"DWY_data/{base}/mapping/0_3", f"DWY_data/{base}", base, f"{base}/mapping/0_3"]
    if base in _OEA:
        return [name, f"DWY15K/{base}", f"OpenEA/{base}", f"mmkg/OpenEA/{base}", base]
    return [name]


def detect_layout(folder: str | Path) -> str:
    """``"eva"`` or ``"openea"``; a DatasetError saying what was expected otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("not a folder", folder)
    if any((folder / f).is_file() for f in ("ent_ids_1", "ent_ids_2", "triples_1", "ill_ent_ids", "ref_ent_ids")):
        return "eva"
    if (folder / "mapping" / "0_3" / "ent_ids_1").is_file():
        return "eva"
    if any((folder / f).is_file() for f in ("rel_triples_1", "rel_triples_2", "ent_links")):
        return "openea"
    raise DatasetError(
        "no known dataset layout: expected EVA/MCLEA files (ent_ids_1, ent_ids_2, triples_1, triples_2, "
        "ill_ent_ids) or OpenEA files (rel_triples_1, rel_triples_2, ent_links)", folder)


def resolve(path: str | Path, root: str | Path | None = None) -> Path:
    """The folder for ``path``: an existing folder as is, else a name under
    ``root`` (or ``$PSQE_DATA``)."""
    p = Path(path)
    if p.is_dir():
        return p
    root = root if root is not None else os.environ.get("PSQE_DATA")
    if root is None:
        raise DatasetError(
            f"{str(path)!r} is not a folder; to load a dataset by name pass --root (root= in Python) or set PSQE_DATA "
            "to the data folder (the one holding DBP15K/, DWY15K/)")
    tried = [Path(root) / c for c in candidates(str(path))]
    for c in tried:
        if c.is_dir():
            return c
    raise DatasetError(f"dataset {str(path)!r} not found under {root}; tried " + ", ".join(str(t) for t in tried))


def load_dataset(path: str | Path, name: str | None = None, *, root: str | Path | None = None,
                 image_features: str | Path | bool | None = None) -> LoadedPair:
    """Load a dataset folder or a named dataset as a :class:`~psqe.data.KGPair`.

    Args:
        path: a folder, or a dataset name resolved under ``root`` / ``$PSQE_DATA``.
        name: label for the pair (default from the folder, e.g. ``"DBP15K/zh_en"``).
        root: data root for names.
        image_features: EVA layout only: a feature file for modality ``"visual"``,
            None to look for the community pickle, False for none.

    Returns:
        a :class:`~psqe.data.common.LoadedPair` (a ``KGPair`` with the files'
        extras: ``splits``, ``name_tokens``, ``translated_names``, ``warnings``).
    """
    folder = resolve(path, root)
    layout = detect_layout(folder)
    start = time.perf_counter()
    if layout == "eva":
        pair = load_eva(folder, name, image_features=image_features)
    else:
        if image_features not in (None, False):
            raise DatasetError("image_features= is supported for the EVA/MCLEA layout only", folder)
        pair = load_openea(folder, name)
    logger.info("loaded %s (%s layout) from %s in %.2fs: %d + %d entities, %d + %d triples, %s links",
                pair.name, layout, folder, time.perf_counter() - start, pair.kg1.num_entities, pair.kg2.num_entities,
                pair.kg1.num_triples, pair.kg2.num_triples, "no" if pair.links is None else len(pair.links))
    return pair
