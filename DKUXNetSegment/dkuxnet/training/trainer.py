"""The dual-network semi-supervised trainer (METHOD.md, "Training").

Two networks A and B (same architecture, different initialisation) see the same patches:
A a strongly augmented view, B a weakly augmented one (same spatial transform, so voxels
correspond). Each is supervised on the labeled patches and taught by the other on all patches
(labeled and unlabeled) with L_segc and L_qdc, weighted by a sigmoid ramp-up. ``supervised``
mode trains one network on labeled patches only: the baseline. ``pseudo`` mode (fine-tunes)
trains one network on labeled patches and on patches of the unlabeled scans labeled once,
whole, by the start model before the first iteration (:func:`pseudo_label_cases`).

The trainer reports through :mod:`dkuxnet.events`, checkpoints atomically (see
:mod:`dkuxnet.checkpoint`) and resumes exactly: batches and augmentations are pure
functions of ``(seed, iteration, rank)`` and every generator state is saved, so ``k`` iterations,
a kill and ``k`` more give the same weights as ``2k`` straight.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dkuxnet.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from dkuxnet.config import TrainConfig
from dkuxnet.data import Case, DatasetSplit, TwoStreamSampler
from dkuxnet.device import autocast_dtype, resolve_device
from dkuxnet.errors import CheckpointError, ConfigError, InputError, OutputExistsError
from dkuxnet.events import EventWriter
from dkuxnet.jobs import clear_stale_stop_request
from dkuxnet.losses import (
    affinity_sample,
    query_affinity_consistency,
    query_distribution_consistency,
    segmentation_consistency,
    supervised_loss,
)
from dkuxnet.model import build_model
from dkuxnet.preprocessing import resample_cases
from dkuxnet.runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    EVENTS_FILE,
    LAST_CHECKPOINT,
    STOP_REQUEST_FILE,
    can_resume,
    holds_a_run,
)
from dkuxnet.training.augment import strong_view
from dkuxnet.training.distributed import (
    DistInfo,
    barrier,
    broadcast_flag,
    cleanup_distributed,
    mean_across_ranks,
    setup_distributed,
)
from dkuxnet.training.prefetch import Prefetcher
from dkuxnet.training.runlock import RunLock
from dkuxnet.training.schedules import lr_factor, sigmoid_rampup

if TYPE_CHECKING:
    from dkuxnet.inference import Predictor

log = logging.getLogger(__name__)

#: Prefix of the gradient-norm probes (``training.grad_probe_every``) in an iteration event.
GRAD_NORM = "grad_norm_"


def _grad_norm(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> float:
    """L2 norm of d loss / d params, leaving ``.grad`` and the graph as they are."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


@dataclass(frozen=True)
class ValidationCase:
    name: str
    image: np.ndarray  # (z, y, x) raw intensities
    label: np.ndarray  # (z, y, x) uint8


@dataclass
class TrainingState:
    """What the iterations of a run share, built once by :meth:`Trainer._setup` (a run and
    :meth:`Trainer.time_iterations` alike).

    Attributes:
        networks: network A (and B in dual mode) on the trainer's device.
        models: what the forward passes call: the networks, DDP-wrapped in a distributed run.
        optimizer: over the parameters of every network.
        scheduler: the learning-rate schedule (``training.schedule``).
        scaler: loss scaling, enabled for fp16 only (bf16 has fp32's range).
        amp_dtype: the autocast dtype, ``None`` for fp32.
        iteration: iterations done (a resumed run's count, else 0).
        best_metric: the best validation mean Dice so far, ``None`` before the first.
        metrics: the last validation's metrics (saved in every checkpoint).
    """

    networks: list[nn.Module]
    models: list[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    iteration: int = 0
    best_metric: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def split_validation(data: DatasetSplit, fraction: float) -> tuple[list[Case], list[Case], str]:
    """Training and validation labeled cases, and a sentence saying how they were chosen."""
    labeled = list(data.labeled)
    if data.validation:
        return labeled, list(data.validation), f"{len(data.validation)} validation cases given"
    if len(labeled) == 1:
        return (
            labeled,
            labeled,
            "only one labeled case: validating on the training case itself (optimistic)",
        )
    n_val = max(1, round(fraction * len(labeled)))
    n_val = min(n_val, len(labeled) - 1)
    return (
        labeled[:-n_val],
        labeled[-n_val:],
        f"held out the last {n_val} of {len(labeled)} labeled cases for validation",
    )


def label_volume_range(cases: Sequence[Case]) -> list[float] | None:
    """``[smallest, largest]`` foreground volume (ml) of the labeled ``cases``; ``None`` if none.

    Kept in every checkpoint (``label_volume_ml``) so that a prediction far outside the range
    is reported (:func:`dkuxnet.inference.roi.volume_warning`).
    """
    from dkuxnet.inference.roi import volume_ml
    from dkuxnet.io import read_volume

    volumes = [
        volume_ml(label.array, label.spacing)
        for label in (read_volume(c.label, what="label") for c in cases if c.label is not None)
    ]
    return [min(volumes), max(volumes)] if volumes else None


def _union(a: list[float] | None, b: Any) -> list[float] | None:
    """The range covering ``a`` and ``b`` (either may be missing)."""
    if not (isinstance(b, (list, tuple)) and len(b) == 2):
        return a
    b = [float(b[0]), float(b[1])]
    return b if a is None else [min(a[0], b[0]), max(a[1], b[1])]


def _perturb(net: nn.Module, scale: float, seed: int) -> None:
    """Add Gaussian noise of ``scale`` x each floating parameter's standard deviation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            if not param.is_floating_point() or param.numel() < 2:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_(noise.to(param) * scale * param.detach().float().std())


PSEUDO_DIR = "pseudo"


def _pseudo_label_path(folder: Path, case: Case) -> Path:
    return folder / f"{case.name}.nii.gz"


def pseudo_label_cases(
    checkpoint: str | os.PathLike[str] | Predictor,
    cases: Sequence[Case],
    folder: Path,
    *,
    device: str | torch.device,
    tta: bool,
    on_case: Callable[[int, int, str], None] | None = None,
) -> list[Case]:
    """The ``cases`` with labels predicted by the model of ``checkpoint``, written once.

    Each whole scan is predicted as ``dkuxnet predict`` would on the grid it is given (the
    trainer gives the resampled, canonical scans it trains on), its label written atomically
    to ``folder/<name>.nii.gz``; a label already there (a restarted run) is used as it is. A
    scan where the model finds no foreground is left out (nothing to learn from it, and a
    foreground-centred crop needs some). ``on_case(done, total, name)`` follows the progress.
    ``checkpoint`` may also be a ready :class:`~dkuxnet.inference.Predictor` (the live network
    of a run that refreshes its labels); ``device`` and ``tta`` then are the predictor's own.
    """
    from dkuxnet.inference import Predictor
    from dkuxnet.io import read_volume, write_volume

    teacher: Predictor | None = checkpoint if isinstance(checkpoint, Predictor) else None
    out = []
    for done, case in enumerate(cases, start=1):
        path = _pseudo_label_path(folder, case)
        if path.exists():
            found = bool(read_volume(path, what="label").array.any())
        else:
            if teacher is None:
                assert not isinstance(checkpoint, Predictor)
                teacher = Predictor.from_checkpoint(checkpoint, device=device, tta=tta)
            image = read_volume(case.image)
            label = teacher.predict_label(image.array)
            write_volume(image.with_array(label.astype(np.uint8)), path)
            found = bool(label.any())
        if found:
            out.append(Case(case.name, case.image, path))
        else:
            log.info("pseudo-labels: the start model found nothing in %s; left out", case.name)
        if on_case is not None:
            on_case(done, len(cases), case.name)
    return out


def _improves(best: float | None, dice: float) -> bool:
    """A validation Dice makes a new ``best.pt`` when there is no best yet or it is strictly
    higher: a later tie keeps the earlier model."""
    return best is None or dice > best


def _restore(state: TrainingState, record: dict[str, Any]) -> None:
    """Continue where the checkpoint ``record`` (a ``last.pt``) stopped: weights, optimizer and
    schedule, loss scaling (fp16), iteration, best Dice and metrics, and the random streams.

    Raises:
        CheckpointError: the record holds another number of networks than its configuration.
    """
    if len(record["networks"]) != len(state.networks):
        raise CheckpointError(
            f"the checkpoint holds {len(record['networks'])} network(s) but its configuration "
            f"{len(state.networks)}: the file is damaged or was edited"
        )
    for net, saved in zip(state.networks, record["networks"], strict=True):
        net.load_state_dict(saved)
    state.optimizer.load_state_dict(record["optimizer"])
    state.scheduler.load_state_dict(record["scheduler"])
    if record.get("scaler"):
        state.scaler.load_state_dict(record["scaler"])
    state.iteration = int(record["iteration"])
    state.best_metric = record.get("best_metric")
    state.metrics = record.get("metrics") or {}
    restore_rng_state(record["rng"])


class Trainer:
    """Train one (supervised) or two (dual) networks into a run folder.

    Args:
        config: the whole recipe.
        data: labeled / unlabeled / validation cases.
        run_dir: output folder (``events.jsonl``, ``config.json``, ``last.pt``, ``best.pt``).
        device: ``auto``, ``cpu`` or ``cuda``.
        init: checkpoint whose network weights start the run (fine-tuning).
        resume: continue the run in ``run_dir`` from its ``last.pt``.
        stop_event: set it (from another thread) to stop after the current iteration.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: DatasetSplit,
        run_dir: str | os.PathLike[str],
        device: str = "auto",
        init: str | os.PathLike[str] | None = None,
        resume: bool = False,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.data = data
        self.init = Path(init) if init is not None else None
        self.resume = resume
        self.stop_event = stop_event or threading.Event()
        self.device = resolve_device(device)
        self._resume_record: dict[str, Any] | None = None
        if resume:
            if not can_resume(self.run_dir):
                raise CheckpointError(f"{self.run_dir}: nothing to resume (no {LAST_CHECKPOINT})")
            self._resume_record = load_checkpoint(self.run_dir / LAST_CHECKPOINT)
            saved: TrainConfig = self._resume_record["train_config"]
            if config.training.iterations != saved.training.iterations:
                saved = saved.replace(
                    training=saved.training.replace(iterations=config.training.iterations)
                )
            config = saved
        elif holds_a_run(self.run_dir):
            raise OutputExistsError(
                f"{self.run_dir} already holds a run; use --resume to continue it or choose "
                "another --out folder"
            )
        self.config = config
        self.dual = config.training.mode == "dual"
        self.pseudo = config.training.mode == "pseudo"
        if self.pseudo and self.init is None and not resume:
            raise ConfigError(
                "training.mode=pseudo labels the unlabeled scans with the start model: give "
                "--init (the model to fine-tune), or use training.mode=dual or supervised"
            )
        self._pseudo_sampler: TwoStreamSampler | None = None
        self._distributed = False  # set by _run (the gradient probe is single-process only)
        # training labels' volume range in ml, saved in checkpoints (set by _run)
        self._label_volume_ml: list[float] | None = None

    # -- setup --------------------------------------------------------------------------------

    def _build_networks(self) -> list[nn.Module]:
        seed = self.config.training.seed
        networks = []
        for i in range(2 if self.dual else 1):
            torch.manual_seed(seed * 1000 + 17 * i + 1)  # different initialisation per network
            networks.append(build_model(self.config.model.for_network(i)))
        if self.init is not None and self._resume_record is None:
            record = load_checkpoint(self.init)
            init_cfg = record["train_config"].model
            states = record["networks"]
            ours = self.config.model
            if len(states) < len(networks):  # a one-network model: B's own design may differ
                init_cfg, ours = (
                    init_cfg.replace(architecture_b=""),
                    ours.replace(architecture_b=""),
                )
            if init_cfg != ours:
                raise CheckpointError(
                    f"{self.init}: its model settings differ from this run's; train with the "
                    "same preset/model config (or omit --init)"
                )
            # a fine-tuned model has seen the labels of its starting model too
            self._label_volume_ml = _union(self._label_volume_ml, record.get("label_volume_ml"))
            how = self.config.training.init_b
            if self.config.model.for_network(1) is not self.config.model:
                how = "fresh"  # B of another design: A's weights do not fit it
            for i, net in enumerate(networks):
                if i >= len(states) and how == "fresh":
                    continue  # network B keeps its own random initialisation
                net.load_state_dict(states[min(i, len(states) - 1)])
                if i >= len(states) and how == "perturb":
                    _perturb(net, self.config.training.init_b_noise, seed * 1000 + 17 * i + 2)
            extra = f" (network B: {how})" if len(states) < len(networks) else ""
            log.info("initialised %d network(s) from %s%s", len(networks), self.init, extra)
        return networks

    def _validation_cases(self, cases: Sequence[Case]) -> list[ValidationCase]:
        from dkuxnet.io import read_label, read_volume

        out = []
        for case in cases:
            if case.label is None:
                raise InputError(f"validation case {case.name} has no label")
            image = read_volume(case.image)
            label = read_label(
                case.label, num_classes=self.config.model.out_channels, reference=image
            )
            out.append(ValidationCase(case.name, image.array, label.array))
        return out

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> str:
        """Train; returns the final status ``completed`` or ``cancelled`` (raises on failure)."""
        dist_info = setup_distributed(self.device)
        lock = RunLock(self.run_dir) if dist_info.is_main else None
        if lock is not None:
            lock.acquire()
            for stale in remove_stale_temporaries(self.run_dir):
                log.info("removed %s, left by an interrupted checkpoint write", stale.name)
            # keeps a Cancel for this run
            clear_stale_stop_request(self.run_dir / STOP_REQUEST_FILE)
        events = EventWriter(self.run_dir / EVENTS_FILE, enabled=dist_info.is_main)
        restore_signals = self._install_signal_handlers()
        try:
            status = self._run(dist_info, events)
            events.emit("finished", status=status, error=None)
            return status
        except BaseException as exc:
            events.emit("finished", status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            restore_signals()
            if lock is not None:
                lock.release()
            cleanup_distributed()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def request_stop(signum: int, frame: object) -> None:
            log.info("signal %d: stopping after the current iteration", signum)
            self.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, request_stop)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _run(self, dist_info: DistInfo, events: EventWriter) -> str:
        self._distributed = dist_info.enabled
        cfg = self.config
        tcfg = cfg.training
        if dist_info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / CONFIG_FILE)
        train_cases, val_cases, val_note = split_validation(self.data, tcfg.val_fraction)
        log.info(val_note)
        unlabeled_cases = list(self.data.unlabeled) if self.dual or self.pseudo else []
        if self._resume_record is not None:
            self._label_volume_ml = _union(None, self._resume_record.get("label_volume_ml"))
        else:
            self._label_volume_ml = label_volume_range([*train_cases, *val_cases])
        if cfg.data.target_spacing:
            cache = self.run_dir / "resampled" / f"rank{dist_info.rank}"
            train_cases = resample_cases(train_cases, cfg.data.target_spacing, cache)
            val_cases = resample_cases(val_cases, cfg.data.target_spacing, cache)
            unlabeled_cases = resample_cases(unlabeled_cases, cfg.data.target_spacing, cache)
        # pseudo mode: label the unlabeled scans only when patches of them are drawn; the
        # start model labels round 0, the network being trained each later round
        pseudo_stream = self.pseudo and cfg.data.unlabeled_batch > 0 and bool(unlabeled_cases)
        to_label = unlabeled_cases
        resumed_at = int(self._resume_record["iteration"]) if self._resume_record else 0
        first_round = self._pseudo_round(resumed_at)
        if pseudo_stream and first_round == 0:  # the start model's labels, before the networks
            unlabeled_cases = self._pseudo_labels(unlabeled_cases, None, dist_info, events)
        state = self._setup(dist_info)
        if pseudo_stream and first_round > 0:
            unlabeled_cases = self._pseudo_labels(to_label, state, dist_info, events)
        total, start = tcfg.iterations, state.iteration
        sampler = TwoStreamSampler(
            train_cases,
            unlabeled_cases if self.dual else [],  # pseudo mode: their own stream below
            cfg.data.patch_size,
            labeled_batch=cfg.data.labeled_batch,
            unlabeled_batch=cfg.data.unlabeled_batch if self.dual else 0,
            seed=tcfg.seed,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            foreground_ratio=cfg.data.foreground_ratio,
            num_classes=cfg.model.out_channels,
        )
        sampler.preload()
        if pseudo_stream and unlabeled_cases:
            self._pseudo_sampler = self._pseudo_stream(unlabeled_cases, dist_info)
        validation = self._validation_cases(val_cases) if dist_info.is_main else []
        events.emit(
            "started",
            job="train",
            total=total,
            device=str(self.device),
            precision=str(state.amp_dtype).removeprefix("torch.") if state.amp_dtype else "float32",
            mode=tcfg.mode,
            resumed_from=start,
            world_size=dist_info.world_size,
            labeled=len(train_cases),
            unlabeled=len(unlabeled_cases),
            validation=[c.name for c in validation],
            message=val_note,
        )
        if self.init is not None and self._resume_record is None and validation:
            check = tcfg.start_check
            if check == "on" or (check == "auto" and not self.pseudo):
                self._validate_start_model(state, validation, events)
        while True:
            # one pseudo-label round at a time (the whole run when the labels are not refreshed)
            every = tcfg.pseudo_refresh_every if pseudo_stream else 0
            until = min(total, (state.iteration // every + 1) * every) if every else total
            prefetch = Prefetcher(
                lambda i: self._prepare_batch(sampler, i),
                state.iteration,
                until,
                depth=cfg.data.prefetch,
            )
            try:
                status = self._loop(state, prefetch, validation, dist_info, events, until)
            finally:
                prefetch.close()
            if status != "completed" or state.iteration >= total:
                return status
            labeled = self._pseudo_labels(to_label, state, dist_info, events)
            if labeled:  # else the previous round's labels stay
                self._pseudo_sampler = self._pseudo_stream(labeled, dist_info)

    def _pseudo_round(self, iteration: int) -> int:
        """Which labels the iteration after ``iteration`` learns from: 0 = the start model's,
        k = those the network made at iteration ``k * training.pseudo_refresh_every``."""
        every = self.config.training.pseudo_refresh_every
        return iteration // every if every and self.pseudo else 0

    def _pseudo_stream(self, cases: Sequence[Case], dist_info: DistInfo) -> TwoStreamSampler:
        """The pseudo-labeled scans as a labeled stream of their own, with its own seed."""
        cfg = self.config
        sampler = TwoStreamSampler(
            cases,
            [],
            cfg.data.patch_size,
            labeled_batch=cfg.data.unlabeled_batch,
            unlabeled_batch=0,
            seed=cfg.training.seed + 7919,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            foreground_ratio=cfg.data.foreground_ratio,
            num_classes=cfg.model.out_channels,
        )
        sampler.preload()
        return sampler

    def _validate_start_model(
        self, state: TrainingState, validation: Sequence[ValidationCase], events: EventWriter
    ) -> None:
        """``training.start_check``: a fine-tune replaces its start model only by beating it.

        The start weights (``--init``) are validated as iteration 0 and saved as ``best.pt``
        (and ``last.pt``, so a run killed before its first checkpoint resumes); a later
        validation becomes ``best.pt`` only with a higher mean Dice. Why it is off for
        pseudo-label fine-tunes: see :class:`dkuxnet.config.TrainingConfig`.
        """
        state.metrics = self._validate(state.networks, validation, 0)
        state.best_metric = state.metrics["mean_dice"]
        events.emit("validation", iteration=0, best=True, start_model=True, **state.metrics)
        path = self._save(BEST_CHECKPOINT, state)
        events.emit("checkpoint", iteration=0, path=str(path), kind="best")
        path = self._save(LAST_CHECKPOINT, state)
        events.emit("checkpoint", iteration=0, path=str(path), kind="last")

    def _setup(self, dist_info: DistInfo | None = None) -> TrainingState:
        """Networks, optimizer, schedule and precision of this recipe, restored from the resume
        checkpoint if there is one, and DDP-wrapped in a distributed run (``dist_info``)."""
        tcfg = self.config.training
        networks = self._build_networks()
        for net in networks:
            net.to(self.device)  # keeps the channels-last layout build_model chose
        optimizer = self._optimizer(networks)
        total = tcfg.iterations
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: lr_factor(it, total, tcfg.schedule, tcfg.warmup_iterations)
        )
        amp_dtype = autocast_dtype(self.device, str(tcfg.amp))
        # loss scaling only for fp16 (bf16 has fp32's range)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        state = TrainingState(networks, list(networks), optimizer, scheduler, scaler, amp_dtype)
        if self._resume_record is not None:
            _restore(state, self._resume_record)
        if dist_info is not None and dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            state.models = [DDP(net, device_ids=ids) for net in networks]
        return state

    def _pseudo_labels(
        self,
        cases: list[Case],
        state: TrainingState | None,
        dist_info: DistInfo,
        events: EventWriter,
    ) -> list[Case]:
        """``pseudo`` mode: the unlabeled ``cases`` labeled (see :func:`pseudo_label_cases`)
        by the start model (round 0, ``state`` ``None``: before the networks are built) or,
        with ``training.pseudo_refresh_every``, by the network as it is at ``state.iteration``
        (a round boundary, checkpointed as ``last.pt`` just before). Cached per round in the
        run folder, so that a resume reuses them or, resumed at the boundary, makes the same."""
        every = self.config.training.pseudo_refresh_every
        round_ = 0 if state is None else self._pseudo_round(state.iteration)
        folder = self.run_dir / PSEUDO_DIR
        folder = (folder / f"round{round_}" if round_ else folder) / f"rank{dist_info.rank}"
        missing = [c for c in cases if not _pseudo_label_path(folder, c).exists()]
        if missing and round_ == 0 and self.init is None:
            raise CheckpointError(
                f"{folder}: the pseudo-labels of {len(missing)} unlabeled scan(s) are missing "
                "and this resumed run does not know its start model; start a new run"
            )
        if missing and state is not None and state.iteration != round_ * every:
            raise CheckpointError(
                f"{folder}: the pseudo-labels of round {round_} are missing, and this run "
                f"resumes at iteration {state.iteration}, past the iteration {round_ * every} "
                "that made them; start a new run"
            )

        def progress(done: int, total: int, name: str) -> None:
            events.emit("progress", stage="pseudo-labels", done=done, total=total, case=name)

        tta = self.config.training.pseudo_tta
        teacher: str | os.PathLike[str] | Predictor = self.init or ""
        who = "the start model"
        if state is not None and round_:
            from dkuxnet.inference import Predictor

            teacher = Predictor(state.networks[:1], self.config, self.device, tta=tta)
            who = f"the network of iteration {state.iteration}"
        labeled = pseudo_label_cases(
            teacher, cases, folder, device=self.device, tta=tta, on_case=progress
        )
        log.info("pseudo-labels: %d of %d unlabeled scans labeled by %s",
                 len(labeled), len(cases), who)  # fmt: skip
        return labeled

    def _optimizer(self, networks: Sequence[nn.Module]) -> torch.optim.Optimizer:
        tcfg = self.config.training
        params = [p for net in networks for p in net.parameters()]
        if tcfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        return torch.optim.SGD(
            params, lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay
        )

    def time_iterations(self, repeats: int = 2) -> float:
        """Median wall-clock seconds of one training iteration of this recipe on this machine.

        Runs ``repeats + 1`` real iterations (the first is a warm-up and not counted) on random
        patches of the configured size and batch, with the set-up of a run (:meth:`_setup`:
        networks, optimizer, schedule, precision) and its batch composition
        (:meth:`_compose_batch`: the strong views, the pseudo-labeled stream); nothing is
        written. What the Fine-tune estimate is made from.
        """
        import statistics

        data = self.config.data
        state = self._setup()
        generator = torch.Generator().manual_seed(0)
        # the sampler's batches: unlabeled patches in dual mode; in pseudo mode a labeled
        # stream of pseudo-labeled patches of its own (see _run)
        n_unlabeled = data.unlabeled_batch if self.dual else 0
        n_pseudo = data.unlabeled_batch if self.pseudo else 0
        times = []
        for it in range(repeats + 1):
            patches = self._random_patches(generator, data.labeled_batch, n_unlabeled)
            pseudo = self._random_patches(generator, n_pseudo, 0) if n_pseudo else None
            batch = self._compose_batch(patches, pseudo, it)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            self._step(state, batch, it)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if it > 0:
                times.append(time.perf_counter() - start)
        return float(statistics.median(times))

    def _random_patches(
        self, generator: torch.Generator, labeled: int, unlabeled: int
    ) -> dict[str, torch.Tensor]:
        """Random patches in the form of :meth:`TwoStreamSampler.batch` (for the estimate)."""
        shape = (1, *self.config.data.patch_size)
        return {
            "labeled_image": torch.randn(labeled, *shape, generator=generator),
            "labeled_label": (torch.rand(labeled, *shape, generator=generator) > 0.8).long(),
            "unlabeled_image": torch.randn(unlabeled, *shape, generator=generator),
            "labeled_index": torch.arange(labeled),
            "unlabeled_index": torch.arange(unlabeled),
        }

    def _prepare_batch(self, sampler: TwoStreamSampler, iteration: int) -> dict[str, torch.Tensor]:
        """The batch of ``iteration``: the sampler's patches (and the pseudo-labeled stream's)
        as :meth:`_compose_batch` makes them into what :meth:`_step` takes."""
        pseudo = None
        if self._pseudo_sampler is not None:
            pseudo = self._pseudo_sampler.batch(iteration)
        return self._compose_batch(sampler.batch(iteration), pseudo, iteration)

    def _compose_batch(
        self,
        batch: dict[str, torch.Tensor],
        pseudo: dict[str, torch.Tensor] | None,
        iteration: int,
    ) -> dict[str, torch.Tensor]:
        """Add the views the step needs to the sampled ``batch`` (changed in place).

        In dual mode network A's strong view of the patches (``weak`` = labeled then unlabeled
        patches, ``strong`` = their perturbed copy); in supervised mode with
        ``supervised_view="strong"`` the labeled patches are replaced by that perturbation; in
        pseudo mode ``pseudo_image`` / ``pseudo_label`` from the ``pseudo`` stream's labeled
        patches (perturbed with ``pseudo_view="strong"``). The perturbation is the configured
        ``strong_*`` recipe, seeded by ``(seed, iteration)``.
        """
        tcfg = self.config.training
        gen = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + iteration)

        def strong(images: torch.Tensor) -> torch.Tensor:
            return strong_view(
                images,
                gen,
                tcfg.strong_noise_std,
                tcfg.strong_gamma,
                tcfg.strong_blur_sigma,
                tcfg.strong_bias_coeff,
            )

        if self.dual:
            weak = torch.cat([batch["labeled_image"], batch["unlabeled_image"]])
            batch["weak"] = weak
            batch["strong"] = strong(weak)
            return batch
        if tcfg.supervised_view == "strong":
            batch["labeled_image"] = strong(batch["labeled_image"])
        if pseudo is not None:
            images = pseudo["labeled_image"]
            batch["pseudo_image"] = strong(images) if tcfg.pseudo_view == "strong" else images
            batch["pseudo_label"] = pseudo["labeled_label"]
        return batch

    def _loop(
        self,
        state: TrainingState,
        prefetch: Prefetcher[dict[str, torch.Tensor]],
        validation: Sequence[ValidationCase],
        dist_info: DistInfo,
        events: EventWriter,
        until: int | None = None,
    ) -> str:
        """Train from ``state.iteration`` to ``until`` (default: the end), validating and
        checkpointing as configured and at ``until`` (a pseudo-label round's end)."""
        tcfg = self.config.training
        total = tcfg.iterations
        until = total if until is None else until
        status = "completed"
        t_last = time.perf_counter()
        while state.iteration < until:
            it = state.iteration
            wait_before = prefetch.wait_s
            batch = prefetch.get(it)
            data_wait_s = prefetch.wait_s - wait_before
            losses = self._step(state, batch, it)
            state.scheduler.step()
            it = state.iteration = it + 1
            now = time.perf_counter()
            it_per_s = 1.0 / max(now - t_last, 1e-9)
            t_last = now
            grad_norms = {k: losses.pop(k) for k in list(losses) if k.startswith(GRAD_NORM)}
            losses = mean_across_ranks(losses, dist_info)
            if it % tcfg.log_every == 0 or it == total or grad_norms:
                extra = {"grad_norms": grad_norms} if grad_norms else {}
                events.emit(
                    "iteration",
                    iteration=it,
                    total=total,
                    losses=losses,
                    lr=state.optimizer.param_groups[0]["lr"],
                    it_per_s=it_per_s,
                    eta_s=(total - it) / max(it_per_s, 1e-9),
                    data_wait_s=data_wait_s,
                    **extra,
                )
            if dist_info.is_main and (self.run_dir / STOP_REQUEST_FILE).exists():
                log.info("%s found: stopping after this iteration", STOP_REQUEST_FILE)
                self.stop_event.set()
            stop = broadcast_flag(self.stop_event.is_set(), dist_info)
            if dist_info.is_main and (it % tcfg.val_every == 0 or it == total):
                state.metrics = self._validate(state.networks, validation, it)
                mean_dice = state.metrics["mean_dice"]
                improved = _improves(state.best_metric, mean_dice)
                if improved:
                    state.best_metric = mean_dice
                events.emit("validation", iteration=it, best=improved, **state.metrics)
                if improved:
                    path = self._save(BEST_CHECKPOINT, state)
                    events.emit("checkpoint", iteration=it, path=str(path), kind="best")
            at_end = it in (total, until)
            if dist_info.is_main and (it % tcfg.checkpoint_every == 0 or at_end or stop):
                path = self._save(LAST_CHECKPOINT, state)
                events.emit("checkpoint", iteration=it, path=str(path), kind="last")
            barrier(dist_info)
            if stop and it < total:
                status = "cancelled"
                break
        return status

    def _step(
        self, state: TrainingState, batch: dict[str, torch.Tensor], iteration: int
    ) -> dict[str, float]:
        """One optimizer step on ``batch`` (what :meth:`_compose_batch` made); the losses."""
        tcfg = self.config.training
        models, optimizer, scaler = state.models, state.optimizer, state.scaler
        amp_dtype = state.amp_dtype
        for m in models:
            m.train()
        dev = self.device
        labeled, labels = batch["labeled_image"], batch["labeled_label"].to(dev)
        n_lab = labeled.shape[0]
        autocast = torch.autocast(
            device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        )
        optimizer.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        if not self.dual and "pseudo_image" in batch:
            # pseudo mode: the labeled and the pseudo-labeled patches in one forward pass
            images = torch.cat([labeled, batch["pseudo_image"]])
            with autocast:
                out = models[0](images.to(dev))
            sup = supervised_loss(
                out.batch_slice(0, n_lab), labels, tcfg.lambda_query, tcfg.lambda_aux
            )
            pseudo = supervised_loss(
                out.batch_slice(n_lab, images.shape[0]),
                batch["pseudo_label"].to(dev),
                tcfg.lambda_query,
                tcfg.lambda_aux,
            )
            total = sup["total"] + tcfg.pseudo_weight * pseudo["total"]
            parts = {"sup": float(sup["total"].detach()), "pseudo": float(pseudo["total"].detach())}
        elif not self.dual:
            with autocast:
                out = models[0](labeled.to(dev))
            sup = supervised_loss(out, labels, tcfg.lambda_query, tcfg.lambda_aux)
            total = sup["total"]
            parts = {f"{k}": float(v.detach()) for k, v in sup.items() if k != "total"}
        else:
            weak, strong = batch["weak"], batch["strong"]
            with autocast:
                out_a = models[0](strong.to(dev))  # A: strong view
                out_b = models[1](weak.to(dev))  # B: weak view
            sup_a = supervised_loss(
                out_a.batch_slice(0, n_lab), labels, tcfg.lambda_query, tcfg.lambda_aux
            )
            sup_b = supervised_loss(
                out_b.batch_slice(0, n_lab), labels, tcfg.lambda_query, tcfg.lambda_aux
            )
            zero = sup_a["total"].new_zeros(())
            segc_a = segc_b = qdc_a = qdc_b = zero
            if tcfg.use_segc:
                segc_a = segmentation_consistency(out_a, out_b, tcfg.segc_form, tcfg.confidence)
                segc_b = segmentation_consistency(out_b, out_a, tcfg.segc_form, tcfg.confidence)
            if tcfg.use_qdc and tcfg.qdc_form == "affinity":
                grid = out_a.query_logits[0, 0].numel()
                index = affinity_sample(grid, tcfg.qdc_samples, tcfg.seed * 1_000_003 + iteration)
                index = index.to(out_a.query_logits.device)
                qdc_a = query_affinity_consistency(out_a, out_b, index)
                qdc_b = query_affinity_consistency(out_b, out_a, index)
            elif tcfg.use_qdc:
                qdc_a = query_distribution_consistency(out_a, out_b)
                qdc_b = query_distribution_consistency(out_b, out_a)
            weight = sigmoid_rampup(
                iteration, tcfg.rampup_fraction * tcfg.iterations, tcfg.consistency_weight
            )
            supervised = sup_a["total"] + sup_b["total"]
            consistency = weight * (segc_a + segc_b + qdc_a + qdc_b)
            total = supervised + consistency
            probe = tcfg.grad_probe_every
            if probe and (iteration + 1) % probe == 0 and not self._distributed:
                params = [p for m in models for p in m.parameters() if p.requires_grad]
                parts.update(
                    {
                        f"{GRAD_NORM}sup": _grad_norm(supervised, params),
                        f"{GRAD_NORM}consistency": _grad_norm(consistency, params),
                    }
                )
            parts |= {
                "sup_a": float(sup_a["total"].detach()),
                "sup_b": float(sup_b["total"].detach()),
                "segc": float((segc_a + segc_b).detach()) / 2,
                "qdc": float((qdc_a + qdc_b).detach()) / 2,
                "weight": weight,
            }
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {float(total)} at iteration {iteration + 1}")
        scaler.scale(total).backward()
        if tcfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for m in models for p in m.parameters()], tcfg.grad_clip
            )
        scaler.step(optimizer)
        scaler.update()
        parts["total"] = float(total.detach())
        return parts

    def _validate(
        self, networks: Sequence[nn.Module], cases: Sequence[ValidationCase], iteration: int
    ) -> dict[str, Any]:
        from monai.metrics import compute_dice

        from dkuxnet.inference import Predictor

        predictor = Predictor(networks, self.config, device=self.device, tta=False)
        dice: dict[str, float] = {}
        k = self.config.model.out_channels
        for case in cases:
            pred = predictor.predict_label(case.image)
            p = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), k)
            y = torch.nn.functional.one_hot(torch.from_numpy(case.label.astype(np.int64)), k)
            p = p.movedim(-1, 0)[None].float()
            y = y.movedim(-1, 0)[None].float()
            value = compute_dice(p, y, include_background=False, ignore_empty=False)
            dice[case.name] = float(torch.nan_to_num(value, nan=0.0).mean())
        for net in networks:
            net.train()
        mean = float(np.mean(list(dice.values()))) if dice else math.nan
        log.info(
            "iteration %d: validation mean Dice %.4f",
            iteration,
            mean,
            extra={"rendered_event": "validation"},  # a progress bar shows it instead
        )
        return {"dice": dice, "mean_dice": mean}

    def _save(self, name: str, state: TrainingState) -> Path:
        payload = {
            "kind": name.removesuffix(".pt"),
            "config": self.config.to_dict(),
            "networks": [
                {k: v.detach().cpu() for k, v in n.state_dict().items()} for n in state.networks
            ],
            "iteration": state.iteration,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
            "rng": capture_rng_state(),
            "best_metric": state.best_metric,
            "metrics": state.metrics,
            "label_volume_ml": self._label_volume_ml,
        }
        return save_checkpoint(payload, self.run_dir / name)
