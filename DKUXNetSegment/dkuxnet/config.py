"""Configuration: frozen dataclasses, validated on construction, saved as JSON.

Every constant the model, trainer and predictor use lives here. ``TrainConfig`` is the whole
recipe of a run (it travels inside every checkpoint, so a checkpoint rebuilds its own model and
preprocessing). Unknown or mistyped keys are an error that names the key and the closest valid
one; values are type-checked and range-checked in ``__post_init__``.

Axis order: ``patch_size`` is in array order ``(D, H, W)`` = ``(z, y, x)``, the order of
``dkuxnet.io.Volume.array`` and of the network input ``(B, C, D, H, W)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from dkuxnet.errors import ConfigError

T = TypeVar("T", bound="_Section")

PRESETS = ("paper", "lite", "unet")
ARCHITECTURES = ("dual_kmax_uxnet", "unet")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
PREDICTION_HEADS = ("cnn", "kmax", "mean")
#: Which networks of a checkpoint predict: ``both`` (averaged; the one of a one-network model)
#: or network ``a`` / ``b`` of a dual model alone.
NETWORK_CHOICES = ("both", "a", "b")
#: Per-voxel uncertainty measures of a prediction (see :mod:`dkuxnet.inference.predictor`).
UNCERTAINTY_CHOICES = ("auto", "disagreement", "entropy", "flip-variance")


def _fail(section: str, name: str, message: str) -> ConfigError:
    return ConfigError(f"{section}.{name}: {message}")


class _Section:
    """Shared JSON/dict helpers of the config dataclasses."""

    SECTION: typing.ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
        prefix = prefix or cls.SECTION
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"unknown config key '{prefix}.{key}'{hint}; valid keys: {', '.join(valid)}"
                )
            kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}")
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a JSON value to the annotated type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, _Section):
        return hint.from_dict(value, prefix=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # JSON's NaN/Infinity would slip through every range check
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _check_choice(section: str, name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise _fail(section, name, f"must be one of {', '.join(choices)}, got {value!r}")


def _normalise_amp(section_obj: Any, section: str) -> None:
    """``amp`` of a frozen section: a bool from an older config -> auto/off; then checked."""
    value = section_obj.amp
    if isinstance(value, bool):
        value = "auto" if value else "off"
        object.__setattr__(section_obj, "amp", value)
    _check_choice(section, "amp", value, AMP_CHOICES)


def _check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise _fail(section, name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """One Dual kMaX UX-Net network.

    Attributes:
        spatial_dims: 3 for volumes (2 works for slices; used in tests only).
        in_channels: image channels.
        out_channels: classes K, background included.
        feature_sizes: encoder stage widths; also the CNN decoder widths.
        depths: UX-Net blocks per encoder stage.
        hidden_size: width of the bottleneck block on the last encoder stage.
        kernel_size: depthwise kernel of the UX-Net blocks (7 in the paper).
        drop_path_rate: stochastic depth, linearly increasing over all encoder blocks.
        layer_scale_init: initial layer-scale value of the UX-Net blocks.
        norm_name: normalisation of the MONAI decoder blocks.
        full_res_channels: width of the CNN decoder's full-resolution (stride 1) stage;
            0 = ``feature_sizes[0]`` (the public model). The stage runs over every voxel, so
            it dominates the cost of a small network.
        refine_block: the extra residual block after the last up block (public model: on).
        num_queries: N cluster centres of the kMaX decoder.
        query_dim: width of a cluster centre (256 in kMaX-DeepLab).
        embed_dim: width of the L2-normalised pixel/centre embeddings (128).
        kmax_strides: decoder strides the kMaX layers read (coarse to fine), each a power of 2
            that the decoder produces.
        kmax_layers_per_stride: kMaX layers at each of those strides.
        kmax_heads: heads of the self-attention among centres.
        kmax_ffn_dim: hidden width of the centres' feed-forward block.
        mask_stride: stride of the final kMaX pixel head; 1 is full resolution (the public code),
            2 or 4 predict masks at lower resolution and upsample the class maps.
        query_groups: sizes of the K query groups (sum = N); empty = proportional default with
            the background group largest.
        prediction_head: what ``ModelOutput.probabilities`` averages: cnn, kmax or mean.
        architecture: ``dual_kmax_uxnet`` (this network) or ``unet``: MONAI's residual UNet
            as a baseline (:mod:`dkuxnet.model.baseline`; the widths above are then unused).
        architecture_b: network B's architecture in dual training when it should differ from
            ``architecture`` (e.g. ``unet``: two different designs make fewer of the same
            mistakes, see the README's semi-supervised study); empty: the same as A.
    """

    SECTION: typing.ClassVar[str] = "model"

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    feature_sizes: tuple[int, ...] = (48, 96, 192, 384)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    hidden_size: int = 768
    kernel_size: int = 7
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-6
    norm_name: str = "instance"
    full_res_channels: int = 0
    refine_block: bool = True
    num_queries: int = 128
    query_dim: int = 256
    embed_dim: int = 128
    kmax_strides: tuple[int, ...] = (8, 4)
    kmax_layers_per_stride: int = 2
    kmax_heads: int = 8
    kmax_ffn_dim: int = 2048
    mask_stride: int = 1
    query_groups: tuple[int, ...] = ()
    prediction_head: str = "mean"
    architecture: str = "dual_kmax_uxnet"
    architecture_b: str = ""

    def __post_init__(self) -> None:
        s = self.SECTION
        _check_choice(s, "architecture", self.architecture, ARCHITECTURES)
        if self.architecture_b:
            _check_choice(s, "architecture_b", self.architecture_b, ARCHITECTURES)
        if self.spatial_dims not in (2, 3):
            raise _fail(s, "spatial_dims", f"must be 2 or 3, got {self.spatial_dims}")
        for name in ("in_channels", "hidden_size", "num_queries", "query_dim", "embed_dim"):
            _check_positive(s, name, getattr(self, name))
        if self.out_channels < 2:
            raise _fail(
                s, "out_channels", f"needs >= 2 classes (background + 1), got {self.out_channels}"
            )
        if len(self.feature_sizes) < 2 or any(w <= 0 for w in self.feature_sizes):
            raise _fail(s, "feature_sizes", f"need >= 2 positive widths, got {self.feature_sizes}")
        if len(self.depths) != len(self.feature_sizes) or any(d <= 0 for d in self.depths):
            raise _fail(
                s,
                "depths",
                f"need one positive depth per stage ({len(self.feature_sizes)}), got {self.depths}",
            )
        _check_positive(s, "full_res_channels", self.full_res_channels, allow_zero=True)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise _fail(s, "kernel_size", f"must be odd and >= 1, got {self.kernel_size}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise _fail(s, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        _check_positive(s, "kmax_heads", self.kmax_heads)
        if self.query_dim % self.kmax_heads != 0:
            raise _fail(
                s, "kmax_heads", f"must divide query_dim {self.query_dim}, got {self.kmax_heads}"
            )
        _check_positive(s, "kmax_ffn_dim", self.kmax_ffn_dim)
        _check_positive(s, "kmax_layers_per_stride", self.kmax_layers_per_stride, allow_zero=True)
        strides = self.decoder_strides
        for stride in self.kmax_strides:
            if stride not in strides:
                raise _fail(s, "kmax_strides", f"{stride} is not a decoder stride {strides}")
        if self.mask_stride not in strides:
            raise _fail(
                s,
                "mask_stride",
                f"must be one of the decoder strides {strides}, got {self.mask_stride}",
            )
        if self.num_queries < self.out_channels:
            raise _fail(s, "num_queries", f"needs >= out_channels ({self.out_channels}) queries")
        if self.query_groups:
            if len(self.query_groups) != self.out_channels:
                raise _fail(
                    s,
                    "query_groups",
                    f"needs {self.out_channels} group sizes, got {self.query_groups}",
                )
            if any(g <= 0 for g in self.query_groups) or sum(self.query_groups) != self.num_queries:
                raise _fail(
                    s,
                    "query_groups",
                    f"sizes must be positive and sum to num_queries={self.num_queries}",
                )
        _check_choice(s, "prediction_head", self.prediction_head, PREDICTION_HEADS)
        _check_choice(s, "norm_name", self.norm_name, ("instance", "batch", "group"))

    def for_network(self, index: int) -> ModelConfig:
        """The settings network ``index`` (0: A, 1: B) is built from."""
        if index == 0 or not self.architecture_b or self.architecture_b == self.architecture:
            return self
        return self.replace(architecture=self.architecture_b, architecture_b="")

    @property
    def total_stride(self) -> int:
        """Every input side must be divisible by this (stem stride 2, then one 2 per stage)."""
        return 2 ** len(self.feature_sizes)

    @property
    def decoder_strides(self) -> tuple[int, ...]:
        """Strides of the CNN decoder outputs, coarse to fine, e.g. (8, 4, 2, 1)."""
        return tuple(2**i for i in reversed(range(len(self.feature_sizes))))

    def group_sizes(self) -> tuple[int, ...]:
        """Sizes of the K query groups (configured, or proportional with background largest)."""
        if self.query_groups:
            return self.query_groups
        k, n = self.out_channels, self.num_queries
        base = n // k
        sizes = [base] * k
        sizes[0] += n - base * k
        return tuple(sizes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """``paper``: the published widths; ``lite``: same design, narrow, for CPU work;
        ``unet``: MONAI's UNet baseline (:mod:`dkuxnet.model.baseline`)."""
        if name == "paper":
            base = cls()
        elif name == "unet":
            base = cls(architecture="unet")
        elif name == "lite":
            base = cls(
                feature_sizes=(16, 32, 64, 128),
                hidden_size=192,
                num_queries=32,
                query_dim=96,
                embed_dim=48,
                kmax_heads=4,
                kmax_ffn_dim=256,
                mask_stride=2,
                full_res_channels=8,
                refine_block=False,
            )
        else:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(base, **overrides) if overrides else base


@dataclass(frozen=True)
class DataConfig(_Section):
    """Sampling and preprocessing (shared by training and prediction).

    Attributes:
        patch_size: training patch and sliding-window size, array order (D, H, W) = (z, y, x).
            LA practice is 112 x 112 x 80 in (x, y, z), i.e. (80, 112, 112) here.
        labeled_batch / unlabeled_batch: patches per iteration from each stream.
        foreground_ratio: probability that a labeled patch is centred on foreground.
        target_spacing: resample images to this spacing (x, y, z mm) first; empty = keep.
        prefetch: iterations whose batches a worker thread prepares ahead (0 = none, in line).
    """

    SECTION: typing.ClassVar[str] = "data"

    patch_size: tuple[int, int, int] = (80, 112, 112)
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    foreground_ratio: float = 0.8
    target_spacing: tuple[float, ...] = ()
    prefetch: int = 2

    def __post_init__(self) -> None:
        s = self.SECTION
        if any(p <= 0 for p in self.patch_size):
            raise _fail(s, "patch_size", f"sides must be positive, got {self.patch_size}")
        _check_positive(s, "labeled_batch", self.labeled_batch)
        _check_positive(s, "unlabeled_batch", self.unlabeled_batch, allow_zero=True)
        _check_positive(s, "prefetch", self.prefetch, allow_zero=True)
        if not 0.0 <= self.foreground_ratio <= 1.0:
            raise _fail(s, "foreground_ratio", f"must be in [0, 1], got {self.foreground_ratio}")
        if self.target_spacing and (
            len(self.target_spacing) != 3 or any(v <= 0 for v in self.target_spacing)
        ):
            raise _fail(s, "target_spacing", f"needs 3 positive values, got {self.target_spacing}")


#: ``training.mode`` choices.
TRAINING_MODES = ("dual", "supervised", "pseudo")
START_CHECK_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """The dual-network semi-supervised recipe (METHOD.md, "Training").

    Attributes:
        mode: ``dual`` (two networks teaching each other), ``supervised`` (one network,
            labeled data only: the baseline) or ``pseudo`` (one network; the start model of
            ``--init`` labels each unlabeled scan once, whole, before training, and the network
            learns from the labeled and the pseudo-labeled scans: self-training for fine-tunes).
        pseudo_weight: weight of the pseudo-labeled patches' supervised loss (``pseudo`` mode);
            ``data.unlabeled_batch`` of them join each iteration's labeled patches.
        pseudo_tta: the start model labels the unlabeled scans with flip test-time
            augmentation (8 passes per window instead of 1; on by default). On the fine-tune
            benchmark (docs/fine_tune_bench.md: 3 simulated scanners, 3 seeds, 100 iterations)
            its labels taught a little more than the plain ones: +0.4 / +0.3 Dice points on
            the thick-slices scanner (3 of 3 seeds), about even on the other two; they cost
            ~10-15 s a scan instead of ~1.4 s on a 2-core CPU without bf16.
        pseudo_view: what the network sees of the pseudo-labeled patches: ``weak`` (as
            sampled) or ``strong`` (the ``strong_*`` intensity perturbation, as network A of the
            dual mode: the label comes from the clean scan, the network learns to give it on a
            perturbed one).
        pseudo_refresh_every: in ``pseudo`` mode, every this many iterations the network being
            trained labels the unlabeled scans again, whole, and the rest of the run learns
            from those labels (rounds of self-training: the student, better on the new scans
            than the start model, becomes the teacher); ``0`` (default) keeps the start
            model's labels for the whole run. Each refresh costs one more labelling pass.
        start_check: whether a fine-tune (``--init``) first validates its start model, as
            iteration 0, so that only a fine-tuned model with a higher validation Dice replaces
            it (``on``), or adopts its own best validation (``off``). ``auto``: ``on``, except
            in ``pseudo`` mode. Measured on the fine-tune benchmark (docs/fine_tune_bench.md):
            judged on the one labeled validation scan, the check kept the start model in every
            seed-0 fine-tune; that saved the supervised fine-tunes (held-out Dice +1.5 on
            average) and undid the pseudo-label ones' gain (-0.7 on the unlabeled scans).
        supervised_view: what the one network of ``supervised`` mode sees: ``weak`` (the
            patches as sampled) or ``strong`` (network A's strong-view perturbation: isolates
            the augmentation's share of the dual gain).
        use_segc / use_qdc: switch the segmentation / query-distribution consistency off for
            ablations.
        segc_form: ``cps`` (cross pseudo-supervision, CE against the other's confident
            argmax, mean over all voxels), ``dicece`` (DiceCE against it on the confident voxels
            only) or ``mse`` (MSE between the softmaxes).
        qdc_form: ``groups`` (symmetric KL between the two networks' group distributions G,
            the method's form) or ``affinity`` (symmetric KL between their query co-assignment
            maps on ``qdc_samples`` sampled voxels: which voxels each network puts in the same
            cluster; see :func:`dkuxnet.losses.query_affinity_consistency`).
        qdc_samples: voxels sampled per iteration for the ``affinity`` form.
        confidence: tau, the pseudo-label confidence threshold of ``cps``.
        consistency_weight: w_max of the sigmoid ramp-up.
        rampup_fraction: T_r as a fraction of the iterations.
        lambda_query: weight of CE(groups, y); lambda_aux: weight of the per-layer kMaX losses.
        grad_probe_every: in dual mode, every this many iterations also measure the gradient
            norm of the supervised losses and of the weighted consistency losses apart (two extra
            backward passes; the update is unchanged) and log them (``grad_norms`` in the
            iteration event); 0 = never. Single-process runs only.
        init_b: how network B of a dual run starts when ``--init`` names a one-network model
            (the bundled one, a supervised run): ``copy`` (A and B both get its weights),
            ``perturb`` (B gets them plus Gaussian noise of ``init_b_noise`` times each
            tensor's standard deviation, so the two networks disagree from the start) or
            ``fresh`` (B keeps its random initialisation and learns from the labels and A).
            A two-network model always starts both networks from their own weights.
        amp: mixed precision: ``auto`` (fp16 on a GPU, bf16 on a CPU with native bf16, else
            fp32), ``bf16``, ``fp16`` (GPU only) or ``off``. Configs from before this setting
            said ``true`` / ``false``: read as ``auto`` / ``off``.
    """

    SECTION: typing.ClassVar[str] = "training"

    mode: str = "dual"
    iterations: int = 6000
    use_segc: bool = True
    use_qdc: bool = True
    segc_form: str = "cps"
    qdc_form: str = "groups"
    qdc_samples: int = 1024
    confidence: float = 0.8
    consistency_weight: float = 0.1
    rampup_fraction: float = 0.4
    lambda_query: float = 0.5
    lambda_aux: float = 0.2
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "poly"
    warmup_iterations: int = 0
    grad_clip: float = 12.0
    amp: str | bool = "auto"  # a bool only as read from an older config; normalised to str
    strong_noise_std: float = 0.1
    strong_gamma: float = 0.3
    strong_blur_sigma: float = 1.0
    strong_bias_coeff: float = 0.3
    val_every: int = 500
    val_fraction: float = 0.2
    checkpoint_every: int = 100
    log_every: int = 1
    grad_probe_every: int = 0
    seed: int = 0
    supervised_view: str = "weak"
    init_b: str = "copy"
    init_b_noise: float = 0.05
    pseudo_weight: float = 1.0
    pseudo_tta: bool = True
    pseudo_view: str = "strong"
    pseudo_refresh_every: int = 0
    start_check: str = "auto"

    def __post_init__(self) -> None:
        s = self.SECTION
        _normalise_amp(self, s)
        _check_choice(s, "mode", self.mode, TRAINING_MODES)
        _check_choice(s, "pseudo_view", self.pseudo_view, ("weak", "strong"))
        _check_choice(s, "start_check", self.start_check, START_CHECK_CHOICES)
        _check_positive(s, "pseudo_weight", self.pseudo_weight, allow_zero=True)
        _check_positive(s, "pseudo_refresh_every", self.pseudo_refresh_every, allow_zero=True)
        _check_choice(s, "supervised_view", self.supervised_view, ("weak", "strong"))
        _check_choice(s, "init_b", self.init_b, ("copy", "perturb", "fresh"))
        _check_positive(s, "init_b_noise", self.init_b_noise, allow_zero=True)
        _check_choice(s, "segc_form", self.segc_form, ("cps", "dicece", "mse"))
        _check_choice(s, "qdc_form", self.qdc_form, ("groups", "affinity"))
        _check_positive(s, "qdc_samples", self.qdc_samples)
        _check_choice(s, "optimizer", self.optimizer, ("adamw", "sgd"))
        _check_choice(s, "schedule", self.schedule, ("poly", "cosine", "constant"))
        _check_positive(s, "iterations", self.iterations)
        _check_positive(s, "lr", self.lr)
        for name in (
            "weight_decay",
            "consistency_weight",
            "lambda_query",
            "lambda_aux",
            "grad_clip",
            "warmup_iterations",
            "strong_noise_std",
            "strong_gamma",
            "strong_blur_sigma",
            "strong_bias_coeff",
        ):
            _check_positive(s, name, getattr(self, name), allow_zero=True)
        if not 0.0 <= self.confidence < 1.0:
            raise _fail(s, "confidence", f"must be in [0, 1), got {self.confidence}")
        if not 0.0 <= self.rampup_fraction <= 1.0:
            raise _fail(s, "rampup_fraction", f"must be in [0, 1], got {self.rampup_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise _fail(s, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check_positive(s, "grad_probe_every", self.grad_probe_every, allow_zero=True)
        for name in ("val_every", "checkpoint_every", "log_every"):
            _check_positive(s, name, getattr(self, name))


@dataclass(frozen=True)
class InferenceConfig(_Section):
    """Sliding-window prediction (METHOD.md, "Inference").

    Attributes:
        overlap: window overlap fraction.
        sw_batch_size: windows per forward pass.
        blend: ``gaussian`` or ``constant`` window weighting.
        networks: ``both`` averages the two networks of a dual checkpoint; ``a`` / ``b`` one.
        tta: average over flips along every spatial axis.
        largest_component: keep only the largest connected component of each foreground class.
        crop_foreground: predict only inside the bounding box of the voxels brighter than the
            image minimum (constant padding or an exactly-zero background is left out).
        amp: mixed precision of the forward passes, as ``training.amp``.
    """

    SECTION: typing.ClassVar[str] = "inference"

    overlap: float = 0.5
    sw_batch_size: int = 1
    blend: str = "gaussian"
    networks: str = "both"
    tta: bool = False
    largest_component: bool = True
    crop_foreground: bool = True
    amp: str | bool = "auto"

    def __post_init__(self) -> None:
        s = self.SECTION
        _normalise_amp(self, s)
        if not 0.0 <= self.overlap < 1.0:
            raise _fail(s, "overlap", f"must be in [0, 1), got {self.overlap}")
        _check_positive(s, "sw_batch_size", self.sw_batch_size)
        _check_choice(s, "blend", self.blend, ("gaussian", "constant"))
        _check_choice(s, "networks", self.networks, NETWORK_CHOICES)


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The whole recipe of a run; saved in the run folder and inside every checkpoint."""

    SECTION: typing.ClassVar[str] = ""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        stride = self.model.total_stride
        bad = [p for p in self.data.patch_size if p % stride]
        if bad:
            raise ConfigError(
                f"data.patch_size {self.data.patch_size}: every side must be divisible by the "
                f"model's total stride {stride}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "") -> TrainConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        sections = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in sections:
                close = difflib.get_close_matches(str(key), list(sections), n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"unknown config section '{key}'{hint}; valid sections: {', '.join(sections)}"
                )
            section_type = typing.get_type_hints(cls)[key]
            kwargs[key] = section_type.from_dict(value, prefix=key)
        return cls(**kwargs)

    @classmethod
    def preset(cls, name: str) -> TrainConfig:
        """A complete recipe around a model preset."""
        return cls(model=ModelConfig.preset(name))

    def with_overrides(self, assignments: Sequence[str]) -> TrainConfig:
        """Apply ``section.key=value`` strings (value parsed as JSON, else taken as a string)."""
        data = self.to_dict()
        for assignment in assignments:
            if "=" not in assignment:
                raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
            path, raw = assignment.split("=", 1)
            parts = path.strip().split(".")
            if len(parts) != 2:
                raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
            section, key = parts
            if section not in data:
                valid = ", ".join(data)
                raise ConfigError(f"unknown config section '{section}'; valid sections: {valid}")
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON (or too long/deep): keep the text
                value = raw
            data[section][key] = value
        return TrainConfig.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config {path} is not a UTF-8 text (JSON) file: {exc}") from exc
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # also too long an integer, too deep nesting
            raise ConfigError(f"config {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
