"""Reliability: bad inputs, faults and hostile files through the public entry points.

Every bad input goes through ``dkuxnet.cli.main`` (and a few through ``python -m dkuxnet``) and
must give a non-zero exit code, one clear line naming the file or key and the problem, no
traceback, and leave every input file byte for byte as it was. The fault tests kill writers
(SIGKILL) at random moments, fill the disk, and run two jobs into one folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny import TINY_MODEL, save_random_checkpoint

from dkuxnet.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from dkuxnet.cli import main
from dkuxnet.config import DataConfig, ModelConfig, TrainConfig
from dkuxnet.errors import CheckpointError
from dkuxnet.events import read_events
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.model import build_model

REPO = Path(__file__).resolve().parent.parent
PATCH = (16, 32, 32)
SHAPE = (16, 32, 32)


def tiny_config(patch: tuple[int, int, int] = PATCH, **training: Any) -> TrainConfig:
    base = TrainConfig.preset("lite")
    return TrainConfig(
        model=ModelConfig.preset("lite", **TINY_MODEL),
        data=DataConfig(patch_size=patch, labeled_batch=1, unlabeled_batch=1),
        training=base.training.replace(
            **{"iterations": 1, "val_every": 1000, "checkpoint_every": 1, **training}
        ),
        inference=base.inference.replace(overlap=0.25, largest_component=False),
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "DKUXNetSegment") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the user's inputs)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _image(shape: tuple[int, int, int] = SHAPE, seed: int = 0, **geometry: Any) -> Volume:
    array = np.random.default_rng(seed).normal(100, 20, shape).astype(np.int16)
    return Volume(array, **geometry)


def _label(shape: tuple[int, int, int] = SHAPE, value: int = 1, **geometry: Any) -> Volume:
    array = np.zeros(shape, np.uint8)
    z, y, x = shape
    array[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = value
    return Volume(array, **geometry)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """One torch thread, as in the subprocesses: on a busy machine, several are far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dual model checkpoint (random weights) for the predict cases."""
    return save_random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_config())


# -------------------------------------------------------------------------- bad-input table
# A case writes its files under ``inputs`` and returns (argv, words the message must contain).
# ``out`` is a fresh folder for outputs; ``model`` a valid checkpoint.
Case = Callable[[Path, Path, Path], tuple[list[str], list[str]]]


def _predict(model: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(image), "--output", str(out), *extra]


def _write_raw(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def _predict_image(make: Callable[[Path], Path], *words: str) -> Case:
    def case(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
        image = make(inputs)
        return _predict(model, image, out / "pred.nii.gz", "--device", "cpu"), [image.name, *words]

    return case


def _two_d(inputs: Path) -> Path:
    return _write_raw(sitk.GetImageFromArray(np.zeros((10, 12), np.float32)), inputs / "flat.nrrd")


def _four_d(inputs: Path) -> Path:
    return _write_raw(
        sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), inputs / "t.nii"
    )


def _rgb(inputs: Path) -> Path:
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    return _write_raw(rgb, inputs / "rgb.mha")


def _empty_file(inputs: Path) -> Path:
    path = inputs / "empty.nrrd"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _truncated_nrrd(inputs: Path) -> Path:
    path = _write_raw(_image().to_sitk(), inputs / "cut.nrrd")
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def _checkpoint_case(make: Callable[[Path, Path], Path], *words: str) -> Case:
    def case(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
        write_volume(_image(), inputs / "in.nrrd")
        bad = make(inputs, model)
        argv = _predict(bad, inputs / "in.nrrd", out / "pred.nrrd", "--device", "cpu")
        return argv, [bad.name, *words]

    return case


def _truncated_checkpoint(inputs: Path, model: Path) -> Path:
    data = model.read_bytes()
    (inputs / "cut.pt").write_bytes(data[: len(data) // 2])
    return inputs / "cut.pt"


def _plain_state_dict(inputs: Path, model: Path) -> Path:
    torch.save(build_model(tiny_config().model).state_dict(), inputs / "state_dict.pt")
    return inputs / "state_dict.pt"


def _other_format(inputs: Path, model: Path) -> Path:
    record = torch.load(model, weights_only=True)
    torch.save({**record, "format": "nnunet"}, inputs / "other.pt")
    return inputs / "other.pt"


def _newer_format(inputs: Path, model: Path) -> Path:
    record = torch.load(model, weights_only=True)
    torch.save({**record, "format_version": 99}, inputs / "newer.pt")
    return inputs / "newer.pt"


class _Payload:
    """Unpickling this runs ``os.system(command)``: what a hostile checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _code_pickle(inputs: Path, model: Path) -> Path:
    marker = inputs.parent / "PWNED"
    record = torch.load(model, weights_only=True)
    record["payload"] = _Payload(f"touch {marker}")
    torch.save(record, inputs / "evil.pt")
    return inputs / "evil.pt"


def _train_case(
    image: Volume | None = None, label: Volume | None = None, *, words: tuple[str, ...] = ()
) -> Case:
    """A one-case decathlon dataset with the given (bad) image or label."""

    def case(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
        data = inputs / "data"
        write_volume(image or _image(), data / "imagesTr" / "c1.nii.gz")
        write_volume(label or _label(), data / "labelsTr" / "c1.nii.gz")
        config = inputs / "cfg.json"
        tiny_config().save(config)
        argv = ["train", "--data", str(data), "--out", str(out / "run"), "--config", str(config)]
        return [*argv, "--device", "cpu", "--quiet"], ["c1.nii.gz", *words]

    return case


def _train_argv(inputs: Path, out: Path, *extra: str) -> list[str]:
    data = inputs / "data"
    write_volume(_image(), data / "imagesTr" / "c1.nii.gz")
    write_volume(_label(), data / "labelsTr" / "c1.nii.gz")
    argv = ["train", "--data", str(data), "--out", str(out / "run"), "--device", "cpu"]
    return [*argv, "--quiet", *extra]


def _config_file(content: bytes, *words: str) -> Case:
    def case(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
        inputs.mkdir(parents=True, exist_ok=True)
        (inputs / "my.json").write_bytes(content)
        return _train_argv(inputs, out, "--config", str(inputs / "my.json")), list(words)

    return case


def _train_flags(*flags: str, words: tuple[str, ...]) -> Case:
    def case(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
        return _train_argv(inputs, out, *flags), list(words)

    return case


def _no_labeled_case(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
    write_volume(_image(), inputs / "data" / "imagesTr" / "u1.nii.gz")
    argv = ["train", "--data", str(inputs / "data"), "--out", str(out / "run"), "--quiet"]
    return argv, ["data", "no labeled case"]


def _init_checkpoint(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
    argv = _train_argv(inputs, out)
    bad = _truncated_checkpoint(inputs, model)
    argv += ["--init", str(bad)]
    config = inputs / "cfg.json"
    tiny_config().save(config)
    return [*argv, "--config", str(config)], ["cut.pt", "truncated"]


def _output_exists(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
    write_volume(_image(), inputs / "in.nrrd")
    write_volume(_label(), inputs / "mine.nrrd")  # the user's file, in the output's place
    return _predict(model, inputs / "in.nrrd", inputs / "mine.nrrd"), ["mine.nrrd", "exists"]


def _evaluate_foreign_label(inputs: Path, out: Path, model: Path) -> tuple[list[str], list[str]]:
    write_volume(_image(), inputs / "data" / "imagesTs" / "t1.nii.gz")
    write_volume(_label(value=7), inputs / "data" / "labelsTs" / "t1.nii.gz")
    argv = ["evaluate", "--model", str(model), "--data", str(inputs / "data"), "--device", "cpu"]
    return [*argv, "--json", str(out / "m.json")], ["t1.nii.gz", "outside 0..1", "7"]


TILTED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
BAD_INPUTS: dict[str, Case] = {
    "image-2d": _predict_image(_two_d, "2D"),
    "image-4d": _predict_image(_four_d, "4D"),
    "image-rgb": _predict_image(_rgb, "components"),
    "image-empty-file": _predict_image(_empty_file, "cannot read"),
    "image-truncated-nrrd": _predict_image(_truncated_nrrd, "cannot read"),
    "image-missing": _predict_image(lambda inputs: inputs / "nowhere.nrrd", "not found"),
    "label-foreign-values": _train_case(label=_label(value=3), words=("outside 0..1", "3")),
    "label-empty": _train_case(label=_label(value=0), words=("empty",)),
    "label-size-mismatch": _train_case(label=_label((16, 32, 30)), words=("size",)),
    "label-spacing-mismatch": _train_case(label=_label(spacing=(1, 1, 2)), words=("spacing",)),
    "label-direction-mismatch": _train_case(label=_label(direction=TILTED), words=("direction",)),
    "dataset-no-labeled-case": _no_labeled_case,
    "config-unknown-key": _config_file(
        b'{"training": {"iteratons": 3}}', "training.iteratons", "did you mean 'iterations'"
    ),
    "config-wrong-type": _config_file(b'{"training": {"lr": "fast"}}', "training.lr", "number"),
    "config-not-json": _config_file(b'{"training": ', "my.json", "not valid JSON"),
    "config-binary": _config_file(bytes(range(256)), "my.json", "UTF-8"),
    "config-nan": _config_file(b'{"training": {"lr": NaN}}', "training.lr", "finite"),
    "set-wrong-type": _train_flags("--set", "training.iterations=many", words=("integer",)),
    "set-unknown-section": _train_flags("--set", "trainig.lr=1", words=("trainig",)),
    "iterations-negative": _train_flags("--iterations", "-5", words=("--iterations", "-5")),
    "checkpoint-truncated": _checkpoint_case(_truncated_checkpoint, "truncated"),
    "checkpoint-plain-state-dict": _checkpoint_case(_plain_state_dict, "not a DKUXNetSegment"),
    "checkpoint-other-format": _checkpoint_case(_other_format, "not a DKUXNetSegment"),
    "checkpoint-newer-format": _checkpoint_case(_newer_format, "version 99"),
    "checkpoint-code-pickle": _checkpoint_case(_code_pickle, "refused", "code"),
    "init-checkpoint-truncated": _init_checkpoint,
    "output-exists": _output_exists,
    "evaluate-foreign-label": _evaluate_foreign_label,
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_changes_nothing(
    name: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    argv, words = BAD_INPUTS[name](inputs, out, checkpoint)
    before = _hashes(inputs)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith(f"dkuxnet {argv[0]}: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _hashes(inputs) == before
    assert not (out / "pred.nii.gz").exists() and not (out / "pred.nrrd").exists()
    assert not (out / "run" / "last.pt").exists() and not (out / "m.json").exists()
    assert not (tmp_path / "PWNED").exists()  # the code-carrying pickle never ran


def test_failed_training_on_bad_data_can_be_retried_in_the_same_folder(tmp_path: Path) -> None:
    """A run that failed before it started holds nothing: after fixing the data, rerun there."""
    argv, _ = _train_case(label=_label(value=3))(tmp_path / "inputs", tmp_path / "out", Path())
    assert main(argv) == 1
    write_volume(_label(), tmp_path / "inputs" / "data" / "labelsTr" / "c1.nii.gz", overwrite=True)
    assert main(argv) == 0
    assert load_checkpoint(tmp_path / "out" / "run" / "last.pt")["iteration"] == 1
    assert main(argv) == 1  # now it holds a run


def test_patch_larger_than_image_is_padded(tmp_path: Path) -> None:
    """Images smaller than the patch on every axis: training pads, prediction keeps the grid."""
    small = (10, 20, 24)
    geometry = {"spacing": (0.8, 0.8, 2.0), "origin": (1.0, 2.0, 3.0)}
    data = tmp_path / "data"
    write_volume(_image(small, **geometry), data / "imagesTr" / "c1.nii.gz")
    write_volume(_label(small, **geometry), data / "labelsTr" / "c1.nii.gz")
    write_volume(_image(small, seed=1, **geometry), data / "imagesTr" / "u1.nii.gz")
    tiny_config(iterations=2).save(tmp_path / "cfg.json")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main([*argv, "--config", str(tmp_path / "cfg.json"), "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "run")["iteration"] == 2
    image, pred = data / "imagesTr" / "u1.nii.gz", tmp_path / "pred.nii.gz"
    assert main(_predict(tmp_path / "run", image, pred, "--device", "cpu")) == 0
    assert read_volume(pred).same_geometry(read_volume(image))


# ------------------------------------------------------------------------ through python -m
@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
def test_python_m_dkuxnet_refuses_code_pickle_without_running_it(
    tmp_path: Path, checkpoint: Path, verbose: bool
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_volume(_image(), inputs / "in.nrrd")
    evil = _code_pickle(inputs, checkpoint)
    before = _hashes(inputs)
    cmd = [sys.executable, "-m", "dkuxnet", *(["--verbose"] if verbose else [])]
    cmd += _predict(evil, inputs / "in.nrrd", tmp_path / "out.nrrd", "--device", "cpu")
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode != 0
    assert "evil.pt: refused to load" in done.stderr
    assert ("Traceback" in done.stderr) is verbose  # a traceback only when asked for
    if not verbose:
        assert done.stderr.strip().splitlines() == [
            line for line in done.stderr.strip().splitlines() if line.startswith("dkuxnet ")
        ]
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out.nrrd").exists()
    assert _hashes(inputs) == before


def test_python_m_dkuxnet_bad_image_and_bad_config(tmp_path: Path, checkpoint: Path) -> None:
    inputs = tmp_path / "inputs"
    image = _four_d(inputs)
    (inputs / "cfg.json").write_text('{"model": {"kmax_heads": 0}}')
    before = _hashes(inputs)
    runs = {
        "4D": ["predict", "--model", str(checkpoint), "--input", str(image), "--output", "o.nrrd"],
        "model.kmax_heads": ["train", "--data", str(inputs), "--out", str(tmp_path / "r")]
        + ["--config", str(inputs / "cfg.json")],
    }
    for word, argv in runs.items():
        done = subprocess.run(
            [sys.executable, "-m", "dkuxnet", *argv],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
            cwd=tmp_path,
        )
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
        assert done.returncode == 1 and len(errors) == 1, done.stderr  # (info lines may precede)
        assert errors[0] == done.stderr.strip().splitlines()[-1]
        assert errors[0].startswith(f"dkuxnet {argv[0]}: error: ") and word in errors[0]
        assert "Traceback" not in done.stderr
    assert _hashes(inputs) == before
    assert not (tmp_path / "r").exists() and not (tmp_path / "o.nrrd").exists()


# ------------------------------------------------------------------------------------ faults
_SAVE_LOOP = textwrap.dedent(
    """
    import sys, torch
    from dkuxnet.checkpoint import save_checkpoint
    path = sys.argv[1]
    big = torch.arange(6_000_000, dtype=torch.float32)  # 24 MB: each save takes a while
    i = 0
    while True:
        i += 1
        save_checkpoint(
            {"kind": "last", "config": {}, "networks": [{"w": big + i}], "iteration": i}, path
        )
        print(i, flush=True)
    """
)


def test_sigkill_while_saving_checkpoints_keeps_a_loadable_one(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    rng = random.Random(9)
    seen: list[int] = []
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVE_LOOP, str(target)],
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # one complete save happened
            assert first.strip(), "the save loop did not start"
            time.sleep(rng.uniform(0.0, 0.6))  # then kill it at a random moment
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
        record = load_checkpoint(target)
        i = record["iteration"]
        assert torch.equal(record["networks"][0]["w"][:3], torch.tensor([0.0, 1.0, 2.0]) + i)
        seen.append(i)
    # a kill mid-write may leave hidden temporaries; the checkpoint and its folder are fine
    strays = [p.name for p in tmp_path.iterdir() if p != target]
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in strays)
    assert load_checkpoint(tmp_path)["iteration"] == seen[-1]  # a run folder resolves too
    # the next run in the folder (holding its lock) removes those temporaries and nothing else
    (tmp_path / ".best.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".notes.tmp").write_text("the user's")
    removed = remove_stale_temporaries(tmp_path)
    assert {p.name for p in removed} == set(strays) | {".best.pt.abc123.tmp"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "last.pt"]


def _train_cmd(data: Path, run: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dkuxnet", "train", "--data", str(data), "--out", str(run),
        "--config", str(config), "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def _wait_for(run: Path, predicate: Callable[[dict[str, Any]], bool], proc: Any) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(predicate(e) for e in read_events(run / "events.jsonl")):
            return
        assert proc.poll() is None, f"training exited early ({proc.returncode})"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting in {run}")


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    write_volume(_image(), root / "imagesTr" / "c1.nii.gz")
    write_volume(_label(), root / "labelsTr" / "c1.nii.gz")
    write_volume(_image(seed=1), root / "imagesTr" / "c2.nii.gz")
    write_volume(_label(), root / "labelsTr" / "c2.nii.gz")
    write_volume(_image(seed=2), root / "imagesTr" / "u1.nii.gz")
    return root


def test_resume_after_sigkill_at_random_moments_is_exact(tmp_path: Path, train_data: Path) -> None:
    """Kill two runs at random iterations (mid-save too), resume: weights equal a straight run,
    bit for bit, in the precision ``auto`` picks on this machine (bf16 on a CPU with native bf16,
    else fp32; forced bf16 is test_trainer's test_bf16_training_keeps_losses_finite)."""
    config = tmp_path / "cfg.json"
    total = 6
    tiny_config(iterations=total).save(config)
    runs = {"straight": tmp_path / "straight", "kill-a": tmp_path / "a", "kill-b": tmp_path / "b"}
    procs = {name: subprocess.Popen(_train_cmd(train_data, run, config), env=_env())
             for name, run in runs.items()}  # fmt: skip
    try:
        for seed, name in enumerate(["kill-a", "kill-b"]):
            rng = random.Random(seed)
            after = rng.randint(1, total // 2)
            _wait_for(runs[name], lambda e, n=after: e.get("iteration", 0) >= n, procs[name])
            time.sleep(rng.uniform(0.0, 0.1))
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait(timeout=30)
        assert procs["straight"].wait(timeout=300) == 0
    finally:
        for proc in procs.values():
            proc.kill()
    killed = [runs["kill-a"], runs["kill-b"]]
    assert all(load_checkpoint(run / "last.pt")["iteration"] < total for run in killed)
    resumes = [
        subprocess.Popen(_train_cmd(train_data, run, config, "--resume"), env=_env())
        for run in killed
    ]
    assert [p.wait(timeout=300) for p in resumes] == [0, 0]
    expected = load_checkpoint(runs["straight"] / "last.pt")["networks"]
    for run in killed:
        got = load_checkpoint(run / "last.pt")
        assert got["iteration"] == total
        assert not list(run.glob(".*.tmp"))  # what a kill mid-save left is cleaned on resume
        for a, b in zip(expected, got["networks"], strict=True):
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), run


def test_two_runs_into_one_folder_are_refused(
    tmp_path: Path, train_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfg.json"
    tiny_config(iterations=10_000).save(config)
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(train_data, run, config), env=_env())
    try:
        _wait_for(run, lambda e: e["event"] == "checkpoint", proc)
        argv = _train_cmd(train_data, run, config)[3:]
        assert main(argv) == 1  # a new run into a live run's folder
        assert "already holds a run" in capsys.readouterr().err
        assert main([*argv, "--resume"]) == 1  # resuming it while it is alive
        assert "another process is already writing" in capsys.readouterr().err
        assert proc.poll() is None  # the live run goes on
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not any(e["event"] == "finished" for e in read_events(run / "events.jsonl"))
    assert load_checkpoint(run / "last.pt")["iteration"] >= 1


def test_full_disk_is_a_clear_error_and_keeps_last_checkpoint(
    tmp_path: Path,
    train_data: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "cfg.json"
    tiny_config(iterations=1).save(config)
    argv = _train_cmd(train_data, tmp_path / "run", config)[3:]
    assert main(argv) == 0
    last = tmp_path / "run" / "last.pt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    real_save = torch.save

    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    code = main([*argv, "--resume", "--iterations", "3"])
    monkeypatch.setattr(torch, "save", real_save)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dkuxnet")]
    assert code == 1 and "Traceback" not in err
    assert len(lines) == 1 and "last.pt" in lines[0] and os.strerror(errno.ENOSPC) in lines[0]
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
    assert load_checkpoint(last)["iteration"] == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")) == []
    finished = [
        e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "finished"
    ]
    assert finished[-1]["status"] == "failed"


def test_save_checkpoint_disk_full_raises_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*x.pt"):
        save_checkpoint({"networks": [{}]}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


_WRITE_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    from dkuxnet.io import Volume, write_volume
    base = np.random.default_rng(0).integers(0, 1000, (64, 128, 128)).astype(np.int16)
    i = 0
    while True:
        i += 1
        write_volume(Volume(base + i), sys.argv[1], overwrite=True)
        print(i, flush=True)
    """
)


def test_sigkill_while_writing_an_output_never_leaves_half_a_file(tmp_path: Path) -> None:
    out = tmp_path / "pred.nrrd"
    base = np.random.default_rng(0).integers(0, 1000, (64, 128, 128)).astype(np.int16)
    rng = random.Random(4)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITE_LOOP, str(out)], env=_env(), stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip()
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
        array = read_volume(out).array  # complete: one of the generations, whole
        generation = int(array[0, 0, 0]) - int(base[0, 0, 0])
        assert generation >= 1 and np.array_equal(array, base + generation)
    # leftovers are hidden temporary folders, never a visible half-written image
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == ["pred.nrrd"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_during_prediction_leaves_no_output(tmp_path: Path, checkpoint: Path) -> None:
    write_volume(_image((48, 96, 96)), tmp_path / "in.nrrd")
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "dkuxnet"]
    cmd += _predict(
        checkpoint, tmp_path / "in.nrrd", tmp_path / "out.nrrd", "--events", str(events)
    )
    proc = subprocess.Popen([*cmd, "--tta", "--device", "cpu"], env=_env())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e.get("stage") == "predicting" for e in read_events(events)):
                break
            time.sleep(0.05)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (tmp_path / "out.nrrd").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "in.nrrd"]


def test_random_bytes_are_called_corrupt_not_code(tmp_path: Path) -> None:
    from dkuxnet.checkpoint import load_checkpoint
    from dkuxnet.errors import CheckpointError

    bad = tmp_path / "noise.pt"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert "not a readable checkpoint" in str(info.value)
    assert "Python objects or code" not in str(info.value)
