"""Turn trained networks into segmentations that land on the voxels they were computed for.

A :class:`Predictor` is built once (from networks, or from a checkpoint that carries its own
config) and reused for any number of images. For one image it

1. optionally resamples the volume to the checkpoint's ``data.target_spacing`` (linear);
2. normalises intensities exactly as training did (:func:`dkuxnet.preprocessing.normalize_image`);
3. runs MONAI's ``sliding_window_inference`` with the training patch size, the configured
   overlap and Gaussian blending; each window is a batch on the compute device, the stitched
   result is kept on the CPU so a whole LA volume (576 x 576 x 88) never sits on the GPU;
4. averages softmax probabilities over the chosen networks (``both`` = the two networks of a
   dual checkpoint) and, with test-time augmentation, over all 2**3 axis-flip combinations
   (nnU-Net's mirroring), inside each window;
5. maps the class probabilities back onto the input grid (linear), takes the argmax there and
   keeps the largest connected component of each foreground class.

Optionally (``uncertainty=``) it also returns a per-voxel uncertainty map. Every measure compares
the members of an ensemble: the two networks of a dual model, or the flips of test-time
augmentation. It is computed inside each window from the members' foreground probabilities
``p = 1 - p(background)``, stitched by the same Gaussian blending as the probabilities and mapped
back onto the input grid by the same path (linear resampling, zero outside the foreground crop):

========================  ==========================================================  =======
measure                   per voxel                                                   range
========================  ==========================================================  =======
``entropy``               binary entropy (bits) of the ensemble's mean ``p`` (both     [0, 1]
                          networks, and every flip with TTA)
``disagreement``          ``|p_A - p_B|`` of networks A and B (each averaged over      [0, 1]
                          flips with TTA); dual models only
``flip-variance``         variance of ``p`` over the 8 flips of test-time              [0, 1/4]
                          augmentation (of the networks' mean); needs TTA
========================  ==========================================================  =======

``auto`` is ``entropy`` for a dual model predicting with both networks and ``flip-variance`` for
one network with TTA; one network without TTA has no second opinion to compare with and is
refused (:class:`~dkuxnet.errors.ConfigError`).

Entropy is the map for a dual model because it marks the wrong voxels best; the dual method
also trains its two networks to agree, which leaves less disagreement to measure. The figures
behind this choice (``benchmarks/uncertainty_measures.py``, phantoms and real LA scans) are in
``docs/uncertainty.md``.

The outputs always have the input's exact size, origin, spacing and direction.

Axis order follows :mod:`dkuxnet.io`: arrays are ``(Z, Y, X)``; network tensors
``(B, C, D, H, W)`` with ``(D, H, W) == (Z, Y, X)``; spacing and origin ``(x, y, z)``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from dkuxnet.config import NETWORK_CHOICES, UNCERTAINTY_CHOICES, TrainConfig
from dkuxnet.device import autocast_dtype, resolve_device
from dkuxnet.errors import CheckpointError, ConfigError, InputError
from dkuxnet.grid import count_windows
from dkuxnet.io import Volume
from dkuxnet.orientation import to_canonical
from dkuxnet.preprocessing import (
    check_grid_size,
    crop_volume,
    foreground_box,
    is_constant,
    normalize_image,
    resample_onto,
    resample_to_spacing,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

#: What each measure is, for tables and logs (the maps carry no unit).
UNCERTAINTY_DESCRIPTIONS: dict[str, str] = {
    "disagreement": "disagreement of networks A and B, |pA - pB| of the foreground probability",
    "entropy": "entropy (bits) of the ensemble's mean foreground probability",
    "flip-variance": "variance of the foreground probability over flip test-time augmentation",
}
#: Standard deviation of the Gaussian blending window as a fraction of the window side (MONAI).
GAUSSIAN_SIGMA_SCALE = 0.125
#: Spatial tensor dims of ``(B, K, D, H, W)`` that test-time augmentation flips.
_SPATIAL_DIMS = (2, 3, 4)
#: Which of a model's networks (one, or two of a dual model) each of
#: :data:`~dkuxnet.config.NETWORK_CHOICES` predicts with. That list is the one the config and the
#: CLI accept; a choice added there and not here stops this module at import.
NETWORK_SELECTORS: dict[str, Callable[[Sequence[torch.nn.Module]], list[torch.nn.Module]]] = {
    "both": lambda networks: list(networks),
    "a": lambda networks: [networks[0]],
    "b": lambda networks: [networks[-1]],
}
if set(NETWORK_SELECTORS) != set(NETWORK_CHOICES):
    raise RuntimeError(
        f"NETWORK_SELECTORS {sorted(NETWORK_SELECTORS)} do not match "
        f"dkuxnet.config.NETWORK_CHOICES {sorted(NETWORK_CHOICES)}"
    )


@dataclass(frozen=True)
class PredictionResult:
    """What :meth:`Predictor.predict_volume` returns.

    Attributes:
        label: ``uint8`` class map ``(Z, Y, X)`` with the input volume's exact geometry.
        probabilities: ``float32`` foreground probability ``(Z, Y, X)`` on the same grid, i.e.
            ``1 - p(background)`` (for two classes this is the foreground class probability;
            with more classes it is the probability of "any foreground"), or ``None`` when not
            asked for.
        uncertainty: ``float32`` per-voxel uncertainty ``(Z, Y, X)`` on the same grid (finite,
            ``>= 0``), or ``None`` when the predictor was built without ``uncertainty``.
        uncertainty_measure: which measure ``uncertainty`` holds (a key of
            :data:`UNCERTAINTY_DESCRIPTIONS`), or ``None``.
    """

    label: Volume
    probabilities: Volume | None = None
    uncertainty: Volume | None = None
    uncertainty_measure: str | None = None


def resolve_uncertainty(measure: str, networks: int, tta: bool) -> str:
    """The measure ``measure`` stands for with ``networks`` networks in use and ``tta``.

    Args:
        measure: one of :data:`UNCERTAINTY_CHOICES`.
        networks: how many networks the prediction averages (1, or 2 for both of a dual model).
        tta: whether it averages over flips.

    Returns:
        ``disagreement``, ``entropy`` or ``flip-variance``.

    Raises:
        ConfigError: an unknown measure, or one the model cannot give (see the module
            docstring).
    """
    if measure not in UNCERTAINTY_CHOICES:
        raise ConfigError(
            f"uncertainty must be one of {', '.join(UNCERTAINTY_CHOICES)}, got {measure!r}"
        )
    if networks < 2 and not tta:
        raise ConfigError(
            "an uncertainty map compares two opinions, and a single network without test-time "
            "augmentation gives one: use --tta (flip variance) or a dual model with both networks"
        )
    if measure == "auto":
        return "entropy" if networks >= 2 else "flip-variance"
    if measure == "disagreement" and networks < 2:
        raise ConfigError(
            "uncertainty 'disagreement' compares networks A and B: it needs a dual model "
            "predicting with both networks (for a single network use --tta: flip-variance)"
        )
    if measure == "flip-variance" and not tta:
        raise ConfigError("uncertainty 'flip-variance' needs test-time augmentation (--tta)")
    return measure


def keep_largest_component(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest 26-connected component of each foreground class.

    Same rule as MONAI's ``KeepLargestConnectedComponent(independent=True)`` with full
    connectivity, computed with ``scipy.ndimage`` (MONAI's needs scikit-image). Removed voxels
    become background.

    Args:
        label: class map ``(Z, Y, X)``.
        num_classes: K, background included.

    Returns:
        A new class map of the same shape and dtype.
    """
    out = label.copy()
    structure = ndimage.generate_binary_structure(label.ndim, label.ndim)
    for cls in range(1, num_classes):
        mask = label == cls
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def _pasted(
    inner: PredictionResult, volume: Volume, box: tuple[slice, slice, slice]
) -> PredictionResult:
    """A result computed on ``volume.array[box]`` put back on ``volume``'s grid (0 outside)."""

    def uncropped(part: Volume | None, dtype: type[np.generic]) -> Volume | None:
        if part is None:
            return None
        full: np.ndarray = np.zeros(volume.array.shape, dtype)
        full[box] = part.array
        return volume.with_array(full)

    label = uncropped(inner.label, np.uint8)
    assert label is not None
    return PredictionResult(
        label=label,
        probabilities=uncropped(inner.probabilities, np.float32),
        uncertainty=uncropped(inner.uncertainty, np.float32),
        uncertainty_measure=inner.uncertainty_measure,
    )


class Predictor:
    """Sliding-window prediction with one or two trained networks.

    Args:
        networks: one network (supervised run) or two (dual run), each mapping
            ``(B, C, D, H, W)`` to a :class:`~dkuxnet.model.ModelOutput`. They are moved to
            ``device`` once; every call runs them in eval mode and restores the mode they had
            (so a trainer can validate with its live networks).
        config: the run's recipe: patch size, preprocessing, inference settings, model head.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        tta: average over flips (``None`` = ``config.inference.tta``).
        networks_choice: ``both``, ``a`` or ``b`` (``None`` = ``config.inference.networks``).
            ``both`` with a single network uses that network.
        largest_component: keep the largest connected component per foreground class
            (``None`` = ``config.inference.largest_component``).
        sw_batch_size: windows per forward pass (``None`` = ``config.inference.sw_batch_size``).
        amp: mixed precision of the forward passes, ``auto`` | ``bf16`` | ``fp16`` | ``off``
            (``None`` = ``config.inference.amp``; see :func:`dkuxnet.device.autocast_dtype`:
            ``auto`` is fp16 on a GPU, bf16 on a CPU with native bf16, else fp32). Booleans
            are read as ``auto`` / ``off``.
        uncertainty: also compute a per-voxel uncertainty map with this measure, one of
            :data:`UNCERTAINTY_CHOICES` (module docstring); ``None`` (default) computes none.

    Raises:
        ConfigError: an unknown ``networks_choice``, ``b`` asked of a single-network model, a
            multi-channel model, an unavailable device, or an uncertainty measure the model
            cannot give (one network without TTA; ``disagreement`` without two networks;
            ``flip-variance`` without TTA).
    """

    def __init__(
        self,
        networks: Sequence[torch.nn.Module],
        config: TrainConfig,
        device: str | torch.device = "auto",
        *,
        tta: bool | None = None,
        networks_choice: str | None = None,
        largest_component: bool | None = None,
        sw_batch_size: int | None = None,
        amp: str | bool | None = None,
        uncertainty: str | None = None,
    ) -> None:
        if not networks:
            raise ConfigError("Predictor needs at least one network")
        if config.model.in_channels != 1:
            raise ConfigError(
                f"model.in_channels is {config.model.in_channels}; prediction supports "
                "single-channel images only"
            )
        overrides = {
            "tta": None if tta is None else bool(tta),
            "networks": networks_choice,
            "largest_component": None if largest_component is None else bool(largest_component),
            "sw_batch_size": sw_batch_size,
            "amp": amp,
        }
        # the overrides are checked as the config checks its own values (InferenceConfig)
        inference = config.inference.replace(
            **{name: value for name, value in overrides.items() if value is not None}
        )
        choice = inference.networks
        if choice == "b" and len(networks) < 2:
            raise ConfigError("networks 'b' asked for, but this model has a single network")
        self.config = config
        self.device = resolve_device(device)
        self.tta = inference.tta
        self.networks_choice = choice
        self.largest_component = inference.largest_component
        self.sw_batch_size = inference.sw_batch_size
        self.amp_dtype = autocast_dtype(self.device, str(inference.amp))
        self.num_classes = config.model.out_channels
        #: smallest and largest foreground volume (ml) of the training labels, when the
        #: checkpoint records them (:func:`dkuxnet.inference.roi.volume_warning`)
        self.label_volume_ml: tuple[float, float] | None = None
        self.patch_size = tuple(config.data.patch_size)
        selected = NETWORK_SELECTORS[choice](networks)
        self.networks: list[torch.nn.Module] = [net.to(self.device) for net in selected]
        for net in self.networks:
            net.eval()
        flips: list[tuple[int, ...]] = [()]
        if self.tta:
            flips += [
                axes
                for r in range(1, len(_SPATIAL_DIMS) + 1)
                for axes in itertools.combinations(_SPATIAL_DIMS, r)
            ]
        self._flips = flips
        self.uncertainty = (
            None
            if uncertainty is None
            else resolve_uncertainty(uncertainty, len(self.networks), self.tta)
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], device: str | torch.device = "auto", **overrides: Any
    ) -> Predictor:
        """Rebuild the networks of a checkpoint (file or run folder) and wrap them.

        Args:
            path: a ``.pt`` checkpoint, or a run folder (``best.pt``, else ``last.pt``).
            device: see :class:`Predictor`.
            **overrides: keyword arguments of :class:`Predictor` (``tta``, ``networks_choice``,
                ``largest_component``, ``sw_batch_size``, ``amp``, ``uncertainty``).

        Raises:
            CheckpointError: missing, foreign, newer or damaged checkpoint, or weights that do
                not fit the model its config describes.
        """
        from dkuxnet.checkpoint import load_checkpoint
        from dkuxnet.model import build_model

        record = load_checkpoint(path)
        config: TrainConfig = record["train_config"]
        networks: list[torch.nn.Module] = []
        for i, state in enumerate(record["networks"]):
            net = build_model(config.model.for_network(i))
            try:
                net.load_state_dict(state, strict=True)
            except (RuntimeError, TypeError, AttributeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise CheckpointError(
                    f"{record['path']}: network {i} does not fit the model its config "
                    f"describes: {first}"
                ) from exc
            networks.append(net)
        log.info(
            "loaded %s (%s, iteration %s, %d network(s))",
            record["path"],
            record.get("kind", "?"),
            record.get("iteration", "?"),
            len(networks),
        )
        predictor = cls(networks, config, device, **overrides)
        expected = record.get("label_volume_ml")
        if isinstance(expected, (list, tuple)) and len(expected) == 2:
            predictor.label_volume_ml = (float(expected[0]), float(expected[1]))
        return predictor

    # ------------------------------------------------------------------------------ arrays
    def predict_probabilities(
        self, image: np.ndarray, progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """Class probabilities of one image.

        Args:
            image: raw intensities ``(Z, Y, X)``, any size (smaller than the patch is padded).
            progress: called as ``progress(done, total)`` after each batch of windows.

        Returns:
            ``float32`` probabilities ``(K, Z, Y, X)``, summing to 1 over ``K``.

        Raises:
            InputError: the image is not 3D, is empty, or has non-finite values.
        """
        probs, _ = self._sliding_window(image, progress, with_uncertainty=False)
        return probs

    def predict_maps(
        self, image: np.ndarray, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and, when the predictor has a measure, the uncertainty map.

        Args:
            image: raw intensities ``(Z, Y, X)``.
            progress: see :meth:`predict_probabilities`.

        Returns:
            ``(probabilities, uncertainty)``: ``float32`` ``(K, Z, Y, X)`` as
            :meth:`predict_probabilities`, and ``float32`` ``(Z, Y, X)`` (``>= 0``) or ``None``.
        """
        return self._sliding_window(image, progress, with_uncertainty=self.uncertainty is not None)

    def _sliding_window(
        self, image: np.ndarray, progress: ProgressCallback | None, *, with_uncertainty: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Check the image, normalise it and stitch the windows of :meth:`_predict_windows`."""
        from monai.inferers import sliding_window_inference

        image = np.asarray(image)
        if image.ndim != 3:
            raise InputError(f"need a 3D image (z, y, x), got an array of shape {image.shape}")
        if image.size == 0:
            raise InputError("the image is empty (a side of length 0)")
        if not np.issubdtype(image.dtype, np.number) or np.issubdtype(
            image.dtype, np.complexfloating
        ):
            raise InputError(f"need a real-valued image, got dtype {image.dtype}")
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise InputError("the image has NaN or infinite values")
        x = torch.from_numpy(normalize_image(image))[None, None]  # (1, 1, Z, Y, X)
        total = count_windows(image.shape, self.patch_size, self.config.inference.overlap)
        done = [0]

        def windows(batch: torch.Tensor) -> torch.Tensor:  # (n, 1, *P) -> (n, K[+1], *P)
            probs = self._predict_windows(batch, with_uncertainty)
            done[0] += int(batch.shape[0])
            if progress is not None:
                progress(min(done[0], total), total)
            return probs

        with self._eval_mode(), torch.inference_mode():
            out = sliding_window_inference(
                x,
                roi_size=self.patch_size,
                sw_batch_size=self.sw_batch_size,
                predictor=windows,
                overlap=self.config.inference.overlap,
                mode=self.config.inference.blend,
                sigma_scale=GAUSSIAN_SIGMA_SCALE,
                padding_mode="constant",
                cval=0.0,
                sw_device=self.device,
                device=torch.device("cpu"),
            )
        assert isinstance(out, torch.Tensor)
        maps = out[0].float().numpy()  # (K[+1], Z, Y, X)
        log.debug("predicted %s in %d windows", image.shape, done[0])
        if not with_uncertainty:
            return np.ascontiguousarray(maps, dtype=np.float32), None
        # The blend of values >= 0 is >= 0 up to rounding; clip that rounding away.
        uncertainty = np.maximum(maps[self.num_classes], 0.0).astype(np.float32)
        return np.ascontiguousarray(maps[: self.num_classes], dtype=np.float32), uncertainty

    def predict_label(
        self, image: np.ndarray, progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """Class map of one image.

        Args:
            image: raw intensities ``(Z, Y, X)``.
            progress: see :meth:`predict_probabilities`.

        Returns:
            ``uint8`` argmax ``(Z, Y, X)``, post-processed as configured.
        """
        return self.label_from_probabilities(self.predict_probabilities(image, progress))

    def label_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Argmax ``(K, Z, Y, X) -> (Z, Y, X) uint8``, then the largest-component filter.

        Computed class by class (ties go to the lower class, as ``np.argmax``) so that a large
        volume needs one float and one byte map, not an int64 index array.
        """
        best = probabilities[0].copy()
        label = np.zeros(best.shape, dtype=np.uint8)
        for k in range(1, probabilities.shape[0]):
            better = probabilities[k] > best
            label[better] = k
            np.maximum(best, probabilities[k], out=best)
        del best
        if self.largest_component:
            label = keep_largest_component(label, self.num_classes)
        return label

    # ----------------------------------------------------------------------------- volumes
    def predict_volume(
        self,
        volume: Volume,
        progress: ProgressCallback | None = None,
        probabilities: bool = False,
        roi: tuple[slice, slice, slice] | None = None,
    ) -> PredictionResult:
        """Segment a volume; the result has the volume's exact geometry.

        Args:
            volume: the image with its geometry.
            progress: see :meth:`predict_probabilities`.
            probabilities: also return the foreground probability map.
            roi: segment only inside this ``(z, y, x)`` box of ``volume.array``
                (:func:`dkuxnet.inference.roi.box_from_ras`); outside it the label, the
                probability and the uncertainty are 0.

        Returns:
            A :class:`PredictionResult` on the input grid; it has an uncertainty map when the
            predictor was built with ``uncertainty``. Outside the foreground crop (constant
            padding, never segmented) the probability and the uncertainty are 0. A volume stored
            in another voxel order is predicted in the canonical one and mapped back exactly
            (:mod:`dkuxnet.orientation`). A constant image (inside the box) has nothing to
            segment: its label, probability and uncertainty are 0, without running the
            networks (which would otherwise find an "atrium" in it).

        Raises:
            InputError: resampling to the training spacing would need an absurdly large grid
                (a broken spacing in the header: :func:`check_grid_size`).
        """
        if roi is None and is_constant(volume.array):
            log.warning("the image is constant (every voxel is %s): nothing to segment",
                        volume.array.flat[0])  # fmt: skip
            zero = volume.with_array(np.zeros(volume.array.shape, np.float32))
            return PredictionResult(
                label=volume.with_array(np.zeros(volume.array.shape, np.uint8)),
                probabilities=zero if probabilities else None,
                uncertainty=zero if self.uncertainty is not None else None,
                uncertainty_measure=self.uncertainty,
            )
        if roi is not None:
            inner = self.predict_volume(crop_volume(volume, roi), progress, probabilities)
            return _pasted(inner, volume, roi)
        canonical, back = to_canonical(volume)
        if canonical is not volume:  # the network sees one voxel order (dkuxnet.orientation)
            log.debug("reoriented %s to the canonical voxel order", volume.size)
            result = self._predict_cropped(canonical, progress, probabilities)

            def restored(part: Volume | None) -> Volume | None:
                return None if part is None else volume.with_array(back(part.array))

            label = restored(result.label)
            assert label is not None
            return PredictionResult(
                label=label,
                probabilities=restored(result.probabilities),
                uncertainty=restored(result.uncertainty),
                uncertainty_measure=result.uncertainty_measure,
            )
        return self._predict_cropped(volume, progress, probabilities)

    def _predict_cropped(
        self, volume: Volume, progress: ProgressCallback | None, probabilities: bool
    ) -> PredictionResult:
        """Predict inside the foreground box (``inference.crop_foreground``), zero outside."""
        box = foreground_box(volume.array) if self.config.inference.crop_foreground else None
        if box is None:
            return self._predict_on_grid(volume, progress, probabilities)
        inner = self._predict_on_grid(crop_volume(volume, box), progress, probabilities)
        return _pasted(inner, volume, box)

    def _predict_on_grid(
        self, volume: Volume, progress: ProgressCallback | None, probabilities: bool
    ) -> PredictionResult:
        """Resample to the training spacing if needed, predict, and map back onto ``volume``."""
        target = tuple(self.config.data.target_spacing)
        work = volume
        resampled = bool(target) and not np.allclose(volume.spacing, target, rtol=1e-6, atol=0)
        if resampled:
            check_grid_size(volume, target, self.patch_size)
            work = resample_to_spacing(volume, target, interpolator=sitk.sitkLinear)
            log.debug(
                "resampled %s at %s mm to %s at %s mm",
                volume.size,
                volume.spacing,
                work.size,
                work.spacing,
            )
        probs, uncertainty = self.predict_maps(work.array, progress)
        if resampled:
            # Class probabilities go back onto the input grid linearly and the argmax is taken
            # there: the boundary falls between coarse voxels (mapping the coarse label back
            # by nearest neighbour made it blocky: -2.6 Dice points on LA labels at 1.25 mm).
            fine = np.empty((probs.shape[0], *volume.array.shape), np.float32)
            for k, coarse in enumerate(probs):  # one full-size map at a time, no stacked copy
                fine[k] = resample_onto(
                    work.with_array(coarse), volume, interpolator=sitk.sitkLinear
                )
            probs = fine
            del fine  # so that the `del probs` below frees it
            if uncertainty is not None:  # the same linear path as the probabilities
                uncertainty = resample_onto(
                    work.with_array(uncertainty), volume, interpolator=sitk.sitkLinear
                )
        label = self.label_from_probabilities(probs)
        foreground = (1.0 - probs[0]).astype(np.float32) if probabilities else None
        del probs
        return PredictionResult(
            label=volume.with_array(label),
            probabilities=None if foreground is None else volume.with_array(foreground),
            uncertainty=None if uncertainty is None else volume.with_array(uncertainty),
            uncertainty_measure=None if uncertainty is None else self.uncertainty,
        )

    # ----------------------------------------------------------------------------- helpers
    def _predict_windows(self, batch: torch.Tensor, with_uncertainty: bool = False) -> torch.Tensor:
        """Mean probabilities over networks and flips, then the uncertainty channel if asked.

        ``(n, 1, *P) -> (n, K, *P)``, or ``(n, K + 1, *P)`` with ``with_uncertainty`` (channel
        ``K`` = :attr:`uncertainty` of this window), float32. Per window only the sums the
        measure needs are kept: one foreground map per network (disagreement), or the sum and
        the sum of squares over flips (flip-variance).
        """
        head = self.config.model.prediction_head
        measure = self.uncertainty if with_uncertainty else None
        total: torch.Tensor | None = None
        per_network: list[torch.Tensor | None] = [None] * len(self.networks)  # (n, 1, *P) each
        flip_sum: torch.Tensor | None = None  # sum over flips of the networks' mean p
        flip_squares: torch.Tensor | None = None
        passes = 0
        for axes in self._flips:
            flipped = torch.flip(batch, axes) if axes else batch
            flip_foreground: torch.Tensor | None = None
            for i, net in enumerate(self.networks):
                with torch.autocast(
                    self.device.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    output = net(flipped)
                probs = output.probabilities(head).float()  # (n, K, *P)
                if axes:
                    probs = torch.flip(probs, axes)
                total = probs if total is None else total + probs
                passes += 1
                if measure is not None:
                    fg = 1.0 - probs[:, :1]  # (n, 1, *P)
                    if measure == "disagreement":
                        summed = per_network[i]
                        per_network[i] = fg if summed is None else summed + fg
                    flip_foreground = fg if flip_foreground is None else flip_foreground + fg
            if measure == "flip-variance":
                assert flip_foreground is not None
                fg = flip_foreground / len(self.networks)
                flip_sum = fg if flip_sum is None else flip_sum + fg
                flip_squares = fg * fg if flip_squares is None else flip_squares + fg * fg
        assert total is not None
        mean = total / passes
        if measure is None:
            return mean
        flips = len(self._flips)
        if measure == "disagreement":
            first, second = per_network[0], per_network[-1]
            assert first is not None and second is not None
            uncertainty = (first - second).abs() / flips
        elif measure == "entropy":
            p = (1.0 - mean[:, :1]).clamp(0.0, 1.0)
            q = 1.0 - p
            uncertainty = -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q)) / math.log(2)
        else:  # flip-variance
            assert flip_sum is not None and flip_squares is not None
            uncertainty = flip_squares / flips - (flip_sum / flips) ** 2
        return torch.cat([mean, uncertainty.clamp_min(0.0)], dim=1)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        modes = [net.training for net in self.networks]
        try:
            for net in self.networks:
                net.eval()
            yield
        finally:
            for net, mode in zip(self.networks, modes, strict=True):
                net.train(mode)
