"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts::

    format          "dkuxnet"                 (anything else is a foreign file)
    format_version  int                       (newer than FORMAT_VERSION is refused)
    dkuxnet_version str
    kind            "last" | "best" | "model" (a model file carries no training state)
    config          TrainConfig.to_dict()     (rebuilds the model and preprocessing)
    networks        [state_dict, ...]         (two for a dual run, one for supervised)
    iteration       int                       (iterations completed)
    optimizer, scheduler, scaler   state dicts or None
    rng             {"torch", "numpy", "python", "cuda"} generator states, as plain values
    best_metric     float or None;  metrics  dict of the latest validation
    label_volume_ml [smallest, largest] foreground volume of the training labels, or None
                    (missing in files from before it; see dkuxnet.inference.roi)

Saving goes to a temporary file in the same folder, is fsync'ed, then ``os.replace``'d over
the target: a crash at any moment leaves either the old or the new file, never half of one
(a SIGKILL mid-write may leave a hidden ``.NAME.*.tmp`` file, which nothing reads and the next
run in that folder removes: :func:`remove_stale_temporaries`). A failed
write (disk full) raises :class:`CheckpointError` and leaves the old file in place.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dkuxnet import __version__
from dkuxnet.config import TrainConfig
from dkuxnet.errors import CheckpointError, ConfigError
from dkuxnet.runs import model_checkpoint

FORMAT = "dkuxnet"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically write ``payload`` (format fields are added) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dkuxnet_version": __version__,
        **payload,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; use the usual mode
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full, quota, permissions: the old file is intact
            raise CheckpointError(
                f"cannot write checkpoint {path}: {exc.strerror or exc} "
                "(the previous checkpoint, if any, is unchanged)"
            ) from exc
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden ``.NAME.*.tmp`` files an interrupted :func:`save_checkpoint` left.

    Call it only while holding the folder's run lock (no save can be in progress then).
    Other files are never touched. Returns what was removed.
    """
    removed = []
    for stale in sorted(Path(folder).glob(".*.pt.*.tmp")):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; raise :class:`CheckpointError` naming the problem."""
    path = Path(path)
    if path.is_dir():
        found = model_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: run folder has no best.pt or last.pt")
        path = found
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        text = str(exc)
        # torch words every weights-only failure alike; a pickle that names code says GLOBAL
        # (or "Unsupported global"), while random or truncated bytes fail on an opcode
        names_code = "GLOBAL" in text or "Unsupported global" in text
        if names_code and ("Weights only load failed" in text or "weights_only" in text):
            raise CheckpointError(
                f"{path}: refused to load: it contains Python objects or code, not plain "
                "weights (only torch.load(weights_only=True) files are accepted)"
            ) from exc
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {text.splitlines()[0] if text else type(exc).__name__}"
        ) from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a DKUXNetSegment checkpoint (for weights of the public 3D UX-Net / "
            "DK-UXNet code use load_reference_weights)"
        )
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this dkuxnet "
            f"({__version__}) understands ({FORMAT_VERSION}); update dkuxnet"
        )
    networks = record.get("networks")
    if not isinstance(networks, list) or not networks:
        raise CheckpointError(f"{path}: checkpoint holds no network weights")
    try:
        record["train_config"] = TrainConfig.from_dict(record.get("config") or {})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: checkpoint config is invalid: {exc}") from exc
    record["path"] = str(path)
    return record


def capture_rng_state() -> dict[str, Any]:
    """All random generator states as plain values (loadable with ``weights_only=True``)."""
    np_state: Any = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


def export_model(record: dict[str, Any], path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write a model-only checkpoint (networks + config, no training state) from ``record``."""
    payload = {
        "kind": "model",
        "config": record["config"],
        "networks": record["networks"],
        "iteration": record.get("iteration", 0),
        "best_metric": record.get("best_metric"),
        "metrics": record.get("metrics", {}),
        "label_volume_ml": record.get("label_volume_ml"),
        **extra,
    }
    return save_checkpoint(payload, path)
