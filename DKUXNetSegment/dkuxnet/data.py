"""Datasets on disk and the two-stream patch sampler that feeds training.

* :func:`load_dataset` reads a Medical Segmentation Decathlon / nnU-Net folder or a MONAI
  decathlon datalist JSON into a :class:`DatasetSplit` (labeled, unlabeled, validation, test).
* :class:`TwoStreamSampler` draws labeled and unlabeled patches; a batch is a pure function of
  ``(seed, iteration, rank)``, so a resumed run sees exactly the batches it would have seen.
* :func:`import_la` converts the 2018 LA challenge data (raw NRRD folders or the widely shared
  ``mri_norm2.h5`` files) into our layout with the standard 80/20 split.

Arrays follow :mod:`dkuxnet.io`'s axis order: ``(Z, Y, X)``, channel first where there is a
channel: ``(C, Z, Y, X)``; batches are ``(B, C, D, H, W)`` with ``(D, H, W) == (Z, Y, X)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dkuxnet.errors import InputError, OutputExistsError
from dkuxnet.io import (
    SUPPORTED_SUFFIXES,
    Volume,
    check_same_geometry,
    read_label,
    read_volume,
    strip_volume_suffix,
    volume_suffix,
    write_volume,
)
from dkuxnet.preprocessing import normalize_image
from dkuxnet.resources import SPLITS_DIR

log = logging.getLogger(__name__)

# nnU-Net names single-channel images ``<case>_0000.<ext>``; labels have no channel suffix.
_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


# --------------------------------------------------------------------------------------------
# Dataset description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One case: an image file and, where known, its label file."""

    name: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class DatasetSplit:
    """The cases of a dataset by role.

    Attributes:
        labeled: training cases with labels.
        unlabeled: training cases without labels (images only).
        validation: cases with labels for model selection (may be empty: the trainer then
            holds out some labeled cases itself).
        test: held-out cases (labels optional).
    """

    labeled: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    validation: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)

    def summary(self) -> str:
        """One line of counts, e.g. ``"8 labeled, 72 unlabeled, 0 validation, 20 test"``."""
        return (
            f"{len(self.labeled)} labeled, {len(self.unlabeled)} unlabeled, "
            f"{len(self.validation)} validation, {len(self.test)} test"
        )


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and volume_suffix(p) is not None
    )


def _case_name(path: Path, *, image: bool) -> str:
    """Case name from a file name, dropping nnU-Net's ``_0000`` channel suffix on images."""
    name = strip_volume_suffix(path)
    match = _CHANNEL_SUFFIX.search(name) if image else None
    if match:
        if match.group(1) != "0000":
            raise InputError(
                f"{path} is channel {int(match.group(1))} of a multi-channel case; "
                "only single-channel images are supported"
            )
        name = name[: match.start()]
    return name


def _by_name(files: list[Path], *, image: bool, folder: Path) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for path in files:
        name = _case_name(path, image=image)
        if name in named:
            raise InputError(
                f"two files for case {name!r} in {folder}: {named[name].name}, {path.name}"
            )
        named[name] = path
    return named


def _load_folder(root: Path) -> DatasetSplit:
    images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
    images_ts, labels_ts = root / "imagesTs", root / "labelsTs"
    if not images_tr.is_dir() and not images_ts.is_dir():
        raise InputError(
            f"{root} is not a dataset folder: expected imagesTr/ (and labelsTr/, imagesTs/, "
            "labelsTs/) as in the Medical Segmentation Decathlon, or a datalist .json file"
        )
    groups: dict[str, list[Case]] = {"labeled": [], "unlabeled": [], "test": []}
    for img_dir, lab_dir, role in ((images_tr, labels_tr, "train"), (images_ts, labels_ts, "test")):
        images = _by_name(_image_files(img_dir), image=True, folder=img_dir)
        labels = _by_name(_image_files(lab_dir), image=False, folder=lab_dir)
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise InputError(
                f"{len(orphans)} label(s) in {lab_dir} have no image in {img_dir}: "
                + ", ".join(labels[n].name for n in orphans[:5])
                + (" ..." if len(orphans) > 5 else "")
            )
        for name, image in images.items():
            case = Case(name, image, labels.get(name))
            if role == "test":
                groups["test"].append(case)
            else:
                groups["labeled" if case.label else "unlabeled"].append(case)
    return DatasetSplit(groups["labeled"], groups["unlabeled"], [], groups["test"])


def _entry(item: Any, base: Path, where: str, need_label: bool) -> Case:
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict) or "image" not in item:
        raise InputError(f"{where}: each entry needs an 'image' path, got {item!r}")
    if not isinstance(item["image"], str):
        raise InputError(f"{where}: 'image' must be one path (multi-channel is not supported)")
    image = (base / item["image"]).resolve()
    label_value = item.get("label")
    if need_label and not label_value:
        raise InputError(f"{where}: entry {item['image']!r} has no 'label'")
    label = (base / label_value).resolve() if label_value else None
    return Case(_case_name(image, image=True), image, label)


def _load_datalist(path: Path) -> DatasetSplit:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read datalist {path}: {exc}") from exc
    if not isinstance(content, dict):
        raise InputError(f"datalist {path} must be a JSON object with a 'training' list")
    known = ("training", "unlabeled", "validation", "test")
    if not any(k in content for k in known):
        raise InputError(f"datalist {path} has none of the lists {', '.join(known)}")
    base = path.parent
    lists: dict[str, list[Case]] = {}
    for key, need_label in zip(known, (True, False, True, False), strict=True):
        items = content.get(key, [])
        if not isinstance(items, list):
            raise InputError(f"datalist {path}: '{key}' must be a list")
        lists[key] = [_entry(it, base, f"datalist {path}, '{key}'", need_label) for it in items]
    return DatasetSplit(lists["training"], lists["unlabeled"], lists["validation"], lists["test"])


def _check_split(split: DatasetSplit, source: Path) -> None:
    everything = [
        (role, case)
        for role in ("labeled", "unlabeled", "validation", "test")
        for case in getattr(split, role)
    ]
    if not everything:
        raise InputError(f"no cases found in {source}")
    missing = [
        str(p)
        for _, c in everything
        for p in (c.image, c.label)
        if p is not None and not p.is_file()
    ]
    if missing:
        raise InputError(
            f"{len(missing)} file(s) listed in {source} do not exist: "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )
    seen: dict[Path, str] = {}
    for role, case in everything:
        key = case.image.resolve()
        if key in seen:
            raise InputError(f"image {case.image} is listed twice (as {seen[key]} and as {role})")
        seen[key] = role
    for role in ("labeled", "unlabeled", "validation", "test"):
        names = [c.name for c in getattr(split, role)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"{source}: case name(s) used twice among {role}: {', '.join(dupes)}")


def load_dataset(path: str | os.PathLike[str]) -> DatasetSplit:
    """Find the cases of a dataset.

    Two layouts are understood:

    * a Decathlon / nnU-Net folder: ``imagesTr/`` (an image with a same-named file in
      ``labelsTr/`` is labeled, without one unlabeled), ``imagesTs/`` with optional
      ``labelsTs/``. nnU-Net's ``_0000`` channel suffix on image names is dropped.
    * a MONAI decathlon datalist ``.json``: ``"training"`` (``image`` + ``label``),
      ``"unlabeled"`` (``image``), ``"validation"`` (``image`` + ``label``) and ``"test"``
      (``image``, optional ``label``) lists; entries may be plain path strings where no label
      is needed; relative paths are relative to the JSON file's folder.

    Args:
        path: the folder or the JSON file.

    Returns:
        The split; each list sorted as found (folders: by name; JSON: in file order).

    Raises:
        InputError: missing path, unknown layout, no cases, a label without image, listed
            files that do not exist, an image in two roles, duplicate case names.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(f"dataset not found: {source}")
    if source.is_dir():
        split = _load_folder(source)
    elif source.suffix.lower() == ".json":
        split = _load_datalist(source)
    else:
        raise InputError(f"dataset must be a folder or a datalist .json file, got {source}")
    _check_split(split, source)
    log.info("dataset %s: %s", source, split.summary())
    return split


# --------------------------------------------------------------------------------------------
# Two-stream patch sampler
# --------------------------------------------------------------------------------------------


def _slot_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class _Stream:
    """Deterministic case order for one stream: a DistributedSampler permutation per epoch."""

    def __init__(self, n_cases: int, per_rank_batch: int, seed: int, rank: int, world_size: int):
        from torch.utils.data import DistributedSampler

        self._sampler: DistributedSampler[int] = DistributedSampler(
            range(n_cases),  # type: ignore[arg-type]
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
        )
        self.per_rank_batch = per_rank_batch
        self._epochs: OrderedDict[int, list[int]] = OrderedDict()

    def indices(self, iteration: int) -> list[int]:
        """Case indices of this rank's slots in ``iteration``."""
        per_epoch = len(self._sampler)
        out = []
        for slot in range(self.per_rank_batch):
            position = iteration * self.per_rank_batch + slot
            epoch, offset = divmod(position, per_epoch)
            if epoch not in self._epochs:
                self._sampler.set_epoch(epoch)
                self._epochs[epoch] = list(self._sampler)
                while len(self._epochs) > 4:
                    self._epochs.popitem(last=False)
            out.append(self._epochs[epoch][offset])
        return out


class TwoStreamSampler:
    """Labeled and unlabeled training patches, deterministic in ``(seed, iteration, rank)``.

    Cases are read once (on first use), normalised with
    :func:`~dkuxnet.preprocessing.normalize_image` and kept in memory as channel-first arrays
    ``(1, Z, Y, X)``. For each slot of a batch a MONAI
    dictionary pipeline is seeded from ``(seed, iteration, rank, stream, slot)``:

    * labeled: ``SpatialPadd`` (only where the image is smaller than the patch) ->
      ``RandCropByPosNegLabeld`` (patch centred on foreground with probability
      ``foreground_ratio``) -> ``RandFlipd`` per axis in ``flip_axes`` -> in-plane
      ``RandRotate90d`` (only when the patch is square in-plane, so shapes never change);
    * unlabeled: the same with ``RandSpatialCropd`` instead of the foreground-biased crop.

    Which case goes into which slot comes from ``torch.utils.data.DistributedSampler``
    (``shuffle=True``, ``set_epoch(epoch)``), so ranks see disjoint cases within an epoch.
    With no unlabeled cases, the unlabeled stream draws images of the labeled cases.

    Args:
        labeled: cases with labels.
        unlabeled: cases without labels (may be empty).
        patch_size: ``(D, H, W)`` of every patch.
        labeled_batch: labeled patches per rank and iteration.
        unlabeled_batch: unlabeled patches per rank and iteration.
        seed: base seed.
        rank: this process's rank.
        world_size: number of processes.
        foreground_ratio: probability that a labeled patch is centred on a foreground voxel.
        flip_axes: spatial axes (0=z, 1=y, 2=x) that may be flipped, each with probability 1/2.
        rotate90: random in-plane (y, x) rotation by multiples of 90 degrees.
        num_classes: classes including background, to check label values.

    The sampler is also a map-style dataset (``sampler[iteration]``) so it can be wrapped in a
    ``DataLoader(sampler, batch_size=None, sampler=range(start, stop), num_workers=k)``.
    """

    def __init__(
        self,
        labeled: Sequence[Case],
        unlabeled: Sequence[Case],
        patch_size: tuple[int, int, int],
        labeled_batch: int = 2,
        unlabeled_batch: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        foreground_ratio: float = 0.8,
        flip_axes: tuple[int, ...] = (0, 1, 2),
        rotate90: bool = True,
        num_classes: int = 2,
    ) -> None:
        if not labeled:
            raise InputError("training needs at least one labeled case")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints (D, H, W), got {patch_size}")
        if labeled_batch < 1 or unlabeled_batch < 0:
            raise ValueError("labeled_batch must be >= 1 and unlabeled_batch >= 0")
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if any(a not in (0, 1, 2) for a in flip_axes):
            raise ValueError(f"flip_axes must be spatial axes 0, 1, 2, got {flip_axes}")
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.labeled_batch = labeled_batch
        self.unlabeled_batch = unlabeled_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_classes = num_classes
        # unlabeled stream source: unlabeled images, else the labeled images (images only)
        self._unlabeled_source = self.unlabeled or self.labeled
        self._labeled_stream = _Stream(len(self.labeled), labeled_batch, seed, rank, world_size)
        self._unlabeled_stream = _Stream(
            len(self._unlabeled_source), max(unlabeled_batch, 1), seed + 1, rank, world_size
        )
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray | None]] = {}
        # Flat foreground/background voxel indices of each label (int32), computed once:
        # finding them is most of the cost of a foreground-biased crop.
        self._indices: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        self._flip_axes = tuple(flip_axes)
        self._rotate90 = rotate90
        self._labeled_transform = self._build_transform(("image", "label"), foreground_ratio)
        self._unlabeled_transform = self._build_transform(("image",), None)

    def _build_transform(self, keys: tuple[str, ...], foreground_ratio: float | None) -> Any:
        from monai.transforms import (
            Compose,
            RandCropByPosNegLabeld,
            RandFlipd,
            RandRotate90d,
            RandSpatialCropd,
            SpatialPadd,
        )

        patch = self.patch_size
        crop: Any
        if foreground_ratio is not None:
            crop = RandCropByPosNegLabeld(
                keys=list(keys),
                label_key="label",
                spatial_size=patch,
                pos=foreground_ratio,
                neg=1.0 - foreground_ratio,
                num_samples=1,
                fg_indices_key="fg_indices",
                bg_indices_key="bg_indices",
            )
        else:
            crop = RandSpatialCropd(keys=list(keys), roi_size=patch, random_size=False)
        transforms: list[Callable[..., Any]] = [
            SpatialPadd(keys=list(keys), spatial_size=patch, mode="constant"),
            crop,
        ]
        for axis in self._flip_axes:
            transforms.append(RandFlipd(keys=list(keys), prob=0.5, spatial_axis=axis))
        if self._rotate90 and patch[1] == patch[2]:
            transforms.append(
                RandRotate90d(keys=list(keys), prob=0.75, max_k=3, spatial_axes=(1, 2))
            )
        return Compose(transforms)

    # -- data ---------------------------------------------------------------------------------

    def _load(self, case: Case, with_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
        cached = self._cache.get(case.image)
        if cached is not None and (cached[1] is not None or not with_label):
            return cached
        image = read_volume(case.image)
        label: np.ndarray | None = None
        if case.label is not None and with_label:
            label_volume = read_label(
                case.label,
                num_classes=self.num_classes,
                reference=image,
                reference_name=f"image {case.image}",
            )
            label = label_volume.array[None]
        entry = (normalize_image(image.array)[None], label)
        self._cache[case.image] = entry
        return entry

    def _crop_indices(self, case: Case, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Foreground and background voxel indices of ``label`` after padding to the patch."""
        indices = self._indices.get(case.image)
        if indices is None:
            from monai.transforms import SpatialPad

            padded = SpatialPad(self.patch_size, mode="constant")(torch.as_tensor(label))
            flat = np.asarray(padded).ravel() > 0  # padded exactly as the pipeline pads
            dtype = np.int32 if flat.size < 2**31 else np.int64
            indices = (np.flatnonzero(flat).astype(dtype), np.flatnonzero(~flat).astype(dtype))
            self._indices[case.image] = indices
        return indices

    def preload(self) -> None:
        """Read every case now (errors surface before training starts)."""
        for case in self.labeled:
            self._load(case, with_label=True)
        for case in self.unlabeled:
            self._load(case, with_label=False)

    def _patch(self, transform: Any, data: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
        transform.set_random_state(seed=seed)
        out = transform(data)
        return out[0] if isinstance(out, list) else out

    def batch(self, iteration: int) -> dict[str, torch.Tensor]:
        """The patches of one iteration for this rank.

        Returns:
            ``labeled_image`` ``(Bl, 1, D, H, W)`` float32, ``labeled_label``
            ``(Bl, 1, D, H, W)`` int64, ``unlabeled_image`` ``(Bu, 1, D, H, W)`` float32, and
            ``labeled_index`` / ``unlabeled_index`` ``(B,)`` int64 (case indices, for logging).
        """
        from monai.utils import convert_to_tensor

        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        images, labels = [], []
        l_idx = self._labeled_stream.indices(iteration)
        for slot, index in enumerate(l_idx):
            case = self.labeled[index]
            image, label = self._load(case, with_label=True)
            assert label is not None
            fg, bg = self._crop_indices(case, label)
            seed = _slot_seed(self.seed, iteration, self.rank, 0, slot)
            data = {"image": image, "label": label, "fg_indices": fg, "bg_indices": bg}
            out = self._patch(self._labeled_transform, data, seed)
            images.append(convert_to_tensor(out["image"], dtype=torch.float32, track_meta=False))
            labels.append(convert_to_tensor(out["label"], dtype=torch.int64, track_meta=False))
        u_images = []
        u_idx = self._unlabeled_stream.indices(iteration)[: self.unlabeled_batch]
        for slot, index in enumerate(u_idx):
            image, _ = self._load(self._unlabeled_source[index], with_label=False)
            seed = _slot_seed(self.seed, iteration, self.rank, 1, slot)
            out = self._patch(self._unlabeled_transform, {"image": image}, seed)
            u_images.append(convert_to_tensor(out["image"], dtype=torch.float32, track_meta=False))
        empty = torch.zeros((0, 1, *self.patch_size), dtype=torch.float32)
        return {
            "labeled_image": torch.stack(images).contiguous(),
            "labeled_label": torch.stack(labels).contiguous(),
            "unlabeled_image": torch.stack(u_images).contiguous() if u_images else empty,
            "labeled_index": torch.tensor(l_idx, dtype=torch.int64),
            "unlabeled_index": torch.tensor(u_idx, dtype=torch.int64),
        }

    def __getitem__(self, iteration: int) -> dict[str, torch.Tensor]:
        return self.batch(iteration)


# --------------------------------------------------------------------------------------------
# The 2018 LA challenge data
# --------------------------------------------------------------------------------------------

LA_SPACING_MM = 0.625
LA_H5_NAME = "mri_norm2.h5"
LA_RAW_IMAGE = "lgemri.nrrd"
LA_RAW_LABEL = "laendo.nrrd"
LA_RAW_FOREGROUND = 255


@dataclass(frozen=True)
class LACropSettings:
    """The UA-MT/DTC preprocessing of raw challenge volumes (``la_heart_processing.py``).

    The x/y extent is the label's bounding box, widened to at least ``min_size`` and by a
    random margin in ``[margin[0], margin[1])`` voxels on each side (seeded per case here, so
    imports are reproducible); the full depth is kept.
    """

    min_size: tuple[int, int] = (112, 112)  # (y, x) voxels
    margin: tuple[int, int] = (10, 20)


LA_CROP = LACropSettings()


def read_split_list(name: str) -> list[str]:
    """Case names of a shipped split list (``"train"`` or ``"test"``), in file order."""
    path = SPLITS_DIR / f"{name}.list"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _find_la_cases(src: Path) -> dict[str, Path]:
    """Case name -> folder holding ``mri_norm2.h5`` or ``lgemri.nrrd`` (searched 4 levels deep)."""
    found: dict[str, Path] = {}
    base_depth = len(src.parts)
    for folder, dirs, files in os.walk(src):
        depth = len(Path(folder).parts) - base_depth
        if depth >= 4:
            dirs[:] = []
        if LA_H5_NAME in files or LA_RAW_IMAGE in files:
            found.setdefault(Path(folder).name, Path(folder))
    return found


def _read_la_h5(path: Path) -> tuple[Volume, Volume]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()])
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read {path}: {exc} (need datasets 'image' and 'label')") from exc
    if image.ndim != 3 or image.shape != label.shape:
        raise InputError(f"{path}: image {image.shape} and label {label.shape} must be equal 3D")
    if not set(np.unique(label).tolist()) <= {0, 1}:
        raise InputError(f"{path}: label values must be 0/1, found {np.unique(label)[:8].tolist()}")
    # stored as (x, y, z); ours is (z, y, x)
    spacing = (LA_SPACING_MM,) * 3
    vol = Volume(np.ascontiguousarray(image.transpose(2, 1, 0)), spacing)  # type: ignore[arg-type]
    return vol, vol.with_array(np.ascontiguousarray(label.transpose(2, 1, 0).astype(np.uint8)))


def preprocess_la_raw(
    image: Volume, label: Volume, seed: int, crop: LACropSettings = LA_CROP
) -> tuple[Volume, Volume]:
    """Z-score the whole volume, then crop y/x around the atrium (full depth).

    Args:
        image: raw LGE-MRI, ``(Z, Y, X)``.
        label: raw label, atrium = 255 (anything else is background), same geometry.
        seed: seeds the random margins.
        crop: crop settings.

    Returns:
        ``(image, label)`` cropped, image float32 z-scored, label uint8 0/1; the geometry is
        the raw one with the origin moved to the crop.
    """
    fg = label.array == LA_RAW_FOREGROUND
    if not fg.any():
        raise InputError("label has no atrium voxel (value 255)")
    normalized = normalize_image(image.array)
    rng = np.random.default_rng(seed)
    start, stop = [0, 0, 0], list(fg.shape)
    for axis, min_size in ((1, crop.min_size[0]), (2, crop.min_size[1])):
        nz = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = int(nz[0]), int(nz[-1])
        pad = max(min_size - (hi - lo), 0) // 2
        start[axis] = max(lo - int(rng.integers(*crop.margin)) - pad, 0)
        stop[axis] = min(hi + int(rng.integers(*crop.margin)) + pad, fg.shape[axis])
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    origin = image.index_to_physical(start[::-1])  # (k, j, i) array start -> (i, j, k)
    cropped = Volume(
        np.ascontiguousarray(normalized[box]),
        image.spacing,
        tuple(origin.tolist()),  # type: ignore[arg-type]
        image.direction,
    )
    return cropped, cropped.with_array(np.ascontiguousarray(fg[box].astype(np.uint8)))


def _read_la_case(folder: Path, name: str, seed: int) -> tuple[Volume, Volume, str]:
    h5 = folder / LA_H5_NAME
    if h5.is_file():
        image, label = _read_la_h5(h5)
        return image, label, "h5"
    image = read_volume(folder / LA_RAW_IMAGE)
    raw_label = read_volume(folder / LA_RAW_LABEL, what="label")
    try:
        check_same_geometry(
            image,
            raw_label,
            names=(f"image {folder / LA_RAW_IMAGE}", f"label {folder / LA_RAW_LABEL}"),
        )
        image, label = preprocess_la_raw(
            image, raw_label, seed=_slot_seed(seed, zlib.crc32(name.encode()))
        )
    except InputError as exc:
        raise InputError(f"case {name} ({folder}): {exc}") from exc
    return image, label, "nrrd"


def import_la(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    labeled: int = 8,
    seed: int = 0,
    overwrite: bool = False,
    image_format: str = ".nii.gz",
    train_cases: Sequence[str] | None = None,
    test_cases: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> DatasetSplit:
    """Convert the 2018 LA challenge data into our decathlon layout with the standard split.

    Each case folder under ``src`` (searched a few levels deep, named by case) holds either
    ``mri_norm2.h5`` (preferred; already preprocessed, arrays ``(x, y, z)``, 0.625 mm) or the
    raw ``lgemri.nrrd`` + ``laendo.nrrd`` (then :func:`preprocess_la_raw` is applied).

    Output in ``out``: the first ``labeled`` cases of the train list in ``imagesTr/`` +
    ``labelsTr/``; the rest of the train list in ``imagesTr/`` only, their labels kept aside
    in ``labelsTr_hidden/`` (for ablations, never used by training); the test list in
    ``imagesTs/`` + ``labelsTs/``. A ``datalist.json`` records the split in list order.

    Args:
        src: folder containing the case folders.
        out: destination folder.
        labeled: how many train-list cases keep their labels (8 = 10 %, 16 = 20 %).
        seed: seeds the random crop margins of raw cases.
        overwrite: write into an existing non-empty ``out``.
        image_format: ``".nii.gz"`` (default) or another supported suffix.
        train_cases: train list (default: the shipped ``train.list``).
        test_cases: test list (default: the shipped ``test.list``).
        progress: called as ``progress(done, total, case)`` after each case.

    Returns:
        The split that was written.

    Raises:
        InputError: ``src`` missing, cases of the lists not found, unreadable files.
        OutputExistsError: ``out`` is not empty and ``overwrite`` is false.
    """
    src_path, out_path = Path(src), Path(out)
    if not src_path.is_dir():
        raise InputError(f"LA source folder not found: {src_path}")
    if image_format not in SUPPORTED_SUFFIXES:
        raise ValueError(f"image_format must be one of {SUPPORTED_SUFFIXES}")
    train = list(train_cases) if train_cases is not None else read_split_list("train")
    test = list(test_cases) if test_cases is not None else read_split_list("test")
    if not 1 <= labeled <= len(train):
        raise InputError(f"labeled must be between 1 and {len(train)}, got {labeled}")
    if out_path.exists() and any(out_path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_path} is not empty (use overwrite to write into it)")
    folders = _find_la_cases(src_path)
    missing = [n for n in train + test if n not in folders]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(train) + len(test)} LA cases not found under {src_path} "
            f"(need <case>/{LA_H5_NAME} or <case>/{LA_RAW_IMAGE} + {LA_RAW_LABEL}): "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else "")
        )
    log.info("found %d LA cases under %s", len(train) + len(test), src_path)
    plan = [(n, "labeled") for n in train[:labeled]]
    plan += [(n, "unlabeled") for n in train[labeled:]]
    plan += [(n, "test") for n in test]
    dirs = {
        "labeled": ("imagesTr", "labelsTr"),
        "unlabeled": ("imagesTr", "labelsTr_hidden"),
        "test": ("imagesTs", "labelsTs"),
    }
    groups: dict[str, list[Case]] = {"labeled": [], "unlabeled": [], "test": []}
    kinds: dict[str, int] = {}
    for done, (name, role) in enumerate(plan, start=1):
        image, label, kind = _read_la_case(folders[name], name, seed)
        kinds[kind] = kinds.get(kind, 0) + 1
        image_dir, label_dir = dirs[role]
        image_path = write_volume(
            image, out_path / image_dir / f"{name}{image_format}", overwrite=overwrite
        )
        label_path = write_volume(
            label, out_path / label_dir / f"{name}{image_format}", overwrite=overwrite
        )
        groups[role].append(Case(name, image_path, None if role == "unlabeled" else label_path))
        log.debug("%s: %s %s from %s", name, role, image.array.shape, kind)
        if progress is not None:
            progress(done, len(plan), name)
    split = DatasetSplit(groups["labeled"], groups["unlabeled"], [], groups["test"])

    def rel(p: Path | None) -> str | None:
        return None if p is None else p.relative_to(out_path).as_posix()

    datalist = {
        "description": f"2018 LA challenge, standard 80/20 split, {labeled} labeled",
        "training": [{"image": rel(c.image), "label": rel(c.label)} for c in split.labeled],
        "unlabeled": [{"image": rel(c.image)} for c in split.unlabeled],
        "test": [{"image": rel(c.image), "label": rel(c.label)} for c in split.test],
        "hidden_labels": {
            c.name: f"labelsTr_hidden/{c.name}{image_format}" for c in split.unlabeled
        },
    }
    (out_path / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n", encoding="utf-8")
    log.info("LA import: %s (sources: %s) -> %s", split.summary(), kinds, out_path)
    return split
