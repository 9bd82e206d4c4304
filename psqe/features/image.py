"""Image features: a torchvision backbone up to its pooled output, from local weights.

The paper's visual features are EVA's: ResNet-152 activations before the
logits (the global average pool, 2048-d). :class:`ImageEncoder` builds any
``torchvision.models`` architecture without downloading anything
(``weights=None``), loads a ``state_dict`` from ``weights_path`` (``.pth``/``.pt``
read with ``weights_only=True``, or ``.safetensors``), replaces the final
classification layer by the identity, and encodes images from a folder (file
stem = entity id) or from a mapping entity id -> path, in batches.

Entities without an image get EVA's rule, :func:`fill_missing`: a random
vector drawn per dimension from N(mean, std) of the rows that do have one.

Example (random weights, three tiny images)::

    >>> import tempfile, pathlib, torch, torchvision
    >>> from PIL import Image
    >>> from psqe.features.image import ImageEncoder
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> torch.save(torchvision.models.resnet18(weights=None).state_dict(), d / "r18.pth")
    >>> for i in range(3):
    ...     Image.new("RGB", (40, 30), (60 * i, 90, 200)).save(d / f"{i}.png")
    >>> enc = ImageEncoder("resnet18", weights_path=d / "r18.pth", image_size=64, progress=False)
    >>> table, present = enc.encode_entities([0, 1, 2, 7], d, seed=0)
    >>> tuple(table.shape), present.tolist()
    ((4, 512), [True, True, True, False])
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ._util import progress

log = logging.getLogger(__name__)

#: File suffixes looked up when images come from a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def fill_missing(table: torch.Tensor, present: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """EVA's rule for entities without an image.

    Each row where ``present`` is False is replaced by a draw from
    N(mean, std), independently per dimension, where mean and (population)
    std are taken over the present rows. Deterministic by ``seed``; returns a
    new tensor. Call it once on the rows of both graphs together, as EVA does.

    >>> import torch
    >>> t = torch.tensor([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0]])
    >>> out = fill_missing(t, torch.tensor([True, True, False]), seed=0)
    >>> out[:2].tolist(), float(out[2, 1])
    ([[1.0, 2.0], [3.0, 2.0]], 2.0)
    """
    if table.dim() != 2:
        raise ValueError(f"fill_missing: table must be [N, d], got shape {tuple(table.shape)}")
    if not table.dtype.is_floating_point:
        raise TypeError(f"fill_missing: table must be floating, got {table.dtype}")
    present = torch.as_tensor(present, dtype=torch.bool, device=table.device)
    if tuple(present.shape) != (table.shape[0],):
        raise ValueError(f"fill_missing: present must be bool [{table.shape[0]}], got {tuple(present.shape)}")
    out = table.clone()
    missing = ~present
    n_missing = int(missing.sum())
    if n_missing == 0:
        return out
    if not bool(present.any()):
        raise ValueError("fill_missing: no row is present; mean and std are undefined")
    work = torch.promote_types(table.dtype, torch.float32)
    var, mean = torch.var_mean(table[present].to(work), dim=0, correction=0)
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(n_missing, table.shape[1], generator=g, dtype=work)
    out[missing] = (mean.cpu() + var.sqrt().cpu() * noise).to(table.dtype).to(table.device)
    return out


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"weights_path {path}: not a torch state_dict readable with weights_only=True ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"weights_path {path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _drop_classifier(model: nn.Module, arch: str) -> nn.Module:
    """Replace the last Linear layer of the classification head by the identity."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        if isinstance(head, nn.Sequential):
            linear = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linear:
                head[linear[-1]] = nn.Identity()
                return model
    raise ValueError(f"arch {arch!r}: no fc/classifier/heads/head Linear layer found to remove")


def build_backbone(arch: str = "resnet152", weights_path: str | os.PathLike | None = None,
                   random_init: bool = False) -> nn.Module:
    """A torchvision model without its final classifier, weights loaded from a local file.

    Args:
        arch: any ``torchvision.models`` name (``resnet152``, ``resnet50``, ``vit_b_16``...).
        weights_path: local ``state_dict`` of that architecture (never downloaded).
        random_init: allow ``weights_path=None`` (random weights: tests and demos only).
    """
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ValueError(f"arch {arch!r} is not a torchvision.models name")
    model = torchvision.models.get_model(arch, weights=None)
    if weights_path is None:
        if not random_init:
            raise ValueError("weights_path is required (psqe never downloads weights); "
                             "pass random_init=True for random weights")
        log.warning("image backbone %s has random weights (random_init=True)", arch)
    else:
        path = Path(weights_path).expanduser()
        try:
            model.load_state_dict(_load_state_dict(path), strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights_path {path} does not fit {arch}: {str(e).splitlines()[0]} ...") from e
    return _drop_classifier(model, arch).eval()


def images_in_folder(folder: str | os.PathLike) -> dict[int, Path]:
    """Entity id -> image path for files named ``<entity id><suffix>`` in ``folder``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.lstrip("-").isdigit():
            if int(p.stem) in found:
                log.warning("image folder %s: entity %s has several images; using %s", folder, p.stem, found[int(p.stem)].name)
                continue
            found[int(p.stem)] = p
    return found


class ImageEncoder:
    """Pooled backbone features of images.

    Args:
        arch: torchvision model name (default ``resnet152``: 2048-d).
        weights_path: local weights file (see :func:`build_backbone`).
        device: where the backbone runs; outputs are float32 on the CPU.
        batch_size: images per forward pass.
        image_size: centre-crop side (the short side is resized to ``image_size * 8 / 7``).
        random_init: allow random weights when ``weights_path`` is None.
        progress: tqdm bar: None on a terminal only, False never.
    """

    def __init__(self, arch: str = "resnet152", weights_path: str | os.PathLike | None = None, *,
                 device: str | torch.device = "cpu", batch_size: int = 32, image_size: int = 224,
                 random_init: bool = False, progress: bool | None = None) -> None:
        from torchvision import transforms

        if batch_size < 1:
            raise ValueError(f"ImageEncoder: batch_size must be >= 1, got {batch_size}")
        self.arch, self.device, self.batch_size, self.progress = arch, torch.device(device), batch_size, progress
        self.model = build_backbone(arch, weights_path, random_init).to(self.device)
        self.transform = transforms.Compose([
            transforms.Resize(round(image_size * 8 / 7)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ])
        self.image_size = image_size
        self.dim: int | None = None

    def _open(self, path: Path) -> torch.Tensor | None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return self.transform(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            log.warning("image %s unreadable (%s); treated as missing", path, e)
            return None

    def encode_files(self, paths: Sequence[str | os.PathLike | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of image files: ``(table [N, d], present [N])``; None or unreadable
        files give a zero row and ``present=False``."""
        rows: dict[int, torch.Tensor] = {}
        t0 = time.perf_counter()
        starts = range(0, len(paths), self.batch_size)
        for start in progress(starts, len(starts), "encoding images", self.progress):
            idx, batch = [], []
            for i in range(start, min(start + self.batch_size, len(paths))):
                img = self._open(Path(paths[i])) if paths[i] is not None else None
                if img is not None:
                    idx.append(i)
                    batch.append(img)
            if batch:
                with torch.inference_mode():
                    out = self.model(torch.stack(batch).to(self.device)).flatten(1).float().cpu()
                for i, row in zip(idx, out):
                    rows[i] = row
        if self.dim is None:
            self.dim = next(iter(rows.values())).numel() if rows else self._probe_dim()
        table = torch.zeros(len(paths), self.dim)
        present = torch.zeros(len(paths), dtype=torch.bool)
        if rows:
            keys = torch.tensor(list(rows))
            table[keys] = torch.stack(list(rows.values()))
            present[keys] = True
        log.info("encoded %d of %d images in %.1f s (%s, %d-d)", len(rows), len(paths),
                 time.perf_counter() - t0, self.arch, self.dim)
        return table, present

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            x = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
            return int(self.model(x).flatten(1).shape[1])

    def encode_entities(self, entity_ids: Sequence[int] | torch.Tensor,
                        images: str | os.PathLike | Mapping[int, str | os.PathLike],
                        seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of entities, in the order of ``entity_ids``.

        Args:
            entity_ids: global entity ids.
            images: a folder of ``<entity id>.<jpg|png|...>`` files, or a mapping
                entity id -> image path.
            seed: seed of :func:`fill_missing` for entities without a (readable)
                image; None leaves their rows at zero.

        Returns:
            ``(table [N, d], present [N])``.
        """
        if isinstance(images, Mapping):
            lookup = {int(k): Path(v) for k, v in images.items()}
        else:
            lookup = images_in_folder(images)
        ids = torch.as_tensor(entity_ids).tolist()
        table, present = self.encode_files([lookup.get(int(i)) for i in ids])
        log.info("images: %d of %d entities have one (%.1f%%)", int(present.sum()), len(ids),
                 100.0 * float(present.float().mean()) if ids else 0.0)
        if seed is not None and bool(present.any()) and not bool(present.all()):
            table = fill_missing(table, present, seed)
        return table, present
