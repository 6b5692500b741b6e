"""The trainer: every mode runs, learns, resumes exactly after SIGKILL, refuses clashes, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_MODEL

from dkuxnet.checkpoint import export_model, load_checkpoint
from dkuxnet.cli import main as cli_main
from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import load_dataset
from dkuxnet.errors import CheckpointError, ConfigError, OutputExistsError, RunLockedError
from dkuxnet.events import read_events
from dkuxnet.io import read_volume
from dkuxnet.run_config import FINE_TUNE_MODE
from dkuxnet.synthetic import write_synthetic_dataset
from dkuxnet.training import Trainer
from dkuxnet.training.runlock import RunLock


def tiny_config(**training: object) -> TrainConfig:
    base = TrainConfig.preset("lite")
    return TrainConfig(
        model=ModelConfig.preset("lite", **TINY_MODEL),
        data=base.data.replace(patch_size=(16, 32, 32), labeled_batch=2, unlabeled_batch=2),
        training=base.training.replace(
            **{"iterations": 2, "val_every": 1000, "checkpoint_every": 1, "lr": 1e-3, **training}
        ),
        inference=base.inference.replace(overlap=0.25, largest_component=False),
    )


#: strong_* values other than the defaults (what an estimate used to ignore)
STRONG = {
    "strong_noise_std": 0.05,
    "strong_gamma": 0.2,
    "strong_blur_sigma": 0.5,
    "strong_bias_coeff": 0.1,
}


def record_recipe(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[tuple[float, ...]], list[dict[str, tuple[tuple[int, ...], torch.dtype]]]]:
    """Spy on what the trainer's steps see: the parameters of every strong view it makes, and
    the layout (key -> shape, dtype) of every batch its step gets."""
    from dkuxnet.training import trainer as trainer_module

    views: list[tuple[float, ...]] = []
    batches: list[dict[str, tuple[tuple[int, ...], torch.dtype]]] = []
    strong_view, step = trainer_module.strong_view, Trainer._step

    def view(images, generator, *params):  # type: ignore[no-untyped-def]
        views.append(params)
        return strong_view(images, generator, *params)

    def spy(self, state, batch, iteration):  # type: ignore[no-untyped-def]
        batches.append({k: (tuple(v.shape), v.dtype) for k, v in batch.items()})
        return step(self, state, batch, iteration)

    monkeypatch.setattr(trainer_module, "strong_view", view)
    monkeypatch.setattr(Trainer, "_step", spy)
    return views, batches


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, n_labeled=3, n_unlabeled=2, n_test=0, shape=(24, 40, 40), seed=3)
    return root


def _finished(run: Path) -> dict:
    events = read_events(run / "events.jsonl")
    assert events[0]["event"] == "started"
    return [e for e in events if e["event"] == "finished"][-1]


@pytest.mark.parametrize(
    "training",
    [
        {"mode": "dual"},
        {"mode": "supervised"},
        {"mode": "dual", "use_segc": False},
        {"mode": "dual", "use_qdc": False},
        {"mode": "dual", "segc_form": "mse", "optimizer": "sgd", "schedule": "cosine"},
        {"mode": "dual", "segc_form": "dicece"},
        {"mode": "dual", "qdc_form": "affinity", "qdc_samples": 64},
    ],
    ids=["dual", "supervised", "no-segc", "no-qdc", "mse-sgd", "dicece", "affinity"],
)
def test_each_mode_runs_and_checkpoints(dataset: Path, tmp_path: Path, training: dict) -> None:
    cfg = tiny_config(**training)
    status = Trainer(cfg, load_dataset(dataset), tmp_path / "run", device="cpu").run()
    assert status == "completed"
    assert _finished(tmp_path / "run") == {**_finished(tmp_path / "run"), "status": "completed"}
    events = read_events(tmp_path / "run" / "events.jsonl")
    iters = [e for e in events if e["event"] == "iteration"]
    assert [e["iteration"] for e in iters] == [1, 2]
    for e in iters:
        assert all(torch.isfinite(torch.tensor(v)) for v in e["losses"].values())
    val = [e for e in events if e["event"] == "validation"]
    assert len(val) == 1 and 0.0 <= val[0]["mean_dice"] <= 1.0
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["iteration"] == 2
    assert len(last["networks"]) == (1 if training["mode"] == "supervised" else 2)
    assert (tmp_path / "run" / "best.pt").is_file()
    assert TrainConfig.load(tmp_path / "run" / "config.json") == cfg


def test_losses_decrease_on_learnable_case(phantom_run: Path) -> None:
    """The supervised losses of the shared phantom run (40 dual iterations, lr 3e-3)."""
    iters = [e for e in read_events(phantom_run / "events.jsonl") if e["event"] == "iteration"]
    assert len(iters) == 40
    sup = [(e["losses"]["sup_a"] + e["losses"]["sup_b"]) / 2 for e in iters]
    first, last = sum(sup[:5]) / 5, sum(sup[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_existing_run_is_refused_and_locked_run_too(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(iterations=1), load_dataset(dataset), run, device="cpu").run()
    with pytest.raises(OutputExistsError, match="already holds a run"):
        Trainer(tiny_config(iterations=1), load_dataset(dataset), run, device="cpu")
    with RunLock(run), pytest.raises(RunLockedError, match="another process"):
        Trainer(
            tiny_config(iterations=2), load_dataset(dataset), run, resume=True, device="cpu"
        ).run()


def _train_cmd(data: Path, run: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dkuxnet", "train", "--data", str(data), "--out", str(run),
        "--config", str(config), "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def _weights(path: Path) -> list[dict[str, torch.Tensor]]:
    return load_checkpoint(path)["networks"]


def _assert_same_weights(first: Path, second: Path) -> None:
    """The networks of two checkpoints are bit for bit the same."""
    for a, b in zip(_weights(first), _weights(second), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def _wait_for(run: Path, predicate, timeout: float = 240.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(predicate(e) for e in read_events(run / "events.jsonl")):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting in {run}")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigterm_cancels_cleanly(dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    tiny_config(iterations=500, checkpoint_every=1000).save(config)
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(dataset, run, config), env=_env())
    try:
        _wait_for(run, lambda e: e["event"] == "iteration" and e["iteration"] >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 3
    finally:
        proc.kill()
    assert _finished(run)["status"] == "cancelled"
    it = load_checkpoint(run / "last.pt")["iteration"]
    assert 2 <= it < 500


def test_unknown_config_key_is_a_clear_cli_error(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        [
            "train",
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "training.iteratons=5",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "training.iteratons" in err and "did you mean 'iterations'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_torchrun_ddp_on_cpu(dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    tiny_config(iterations=2).save(config)
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += _train_cmd(dataset, run, config)[1:]
    subprocess.run(cmd, check=True, env=_env(), timeout=300)
    events = read_events(run / "events.jsonl")
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 1 and started[0]["world_size"] == 2  # only rank 0 writes
    assert _finished(run)["status"] == "completed"
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    assert json.loads((run / "config.json").read_text())["training"]["iterations"] == 2


def test_target_spacing_trains_on_resampled_cases(dataset: Path, tmp_path: Path) -> None:
    """With data.target_spacing set, training sees the spacing the predictor will feed it."""
    from dkuxnet.io import read_volume

    cfg = tiny_config(iterations=1)
    cfg = cfg.replace(data=cfg.data.replace(target_spacing=(1.7, 1.7, 2.3)))
    run = tmp_path / "run"
    assert Trainer(cfg, load_dataset(dataset), run, device="cpu").run() == "completed"
    cached = sorted((run / "resampled").rglob("*.nii.gz"))
    assert cached, "no resampled cases were written"
    for path in cached:
        spacing = read_volume(path).spacing
        assert spacing == pytest.approx((1.7, 1.7, 2.3), rel=1e-5), path


def test_fine_tune_from_init_keeps_the_init_model_settings(dataset: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    cfg = tiny_config(iterations=1, mode="supervised")
    data = load_dataset(dataset)
    Trainer(cfg, data, first, device="cpu").run()
    # the training labels' volume range travels in the checkpoints (the predictor's volume check)
    labels = [read_volume(c.label) for c in [*data.labeled, *data.validation] if c.label]
    ml = [float((v.array > 0).sum() * np.prod(v.spacing) / 1000) for v in labels]
    record = load_checkpoint(first / "best.pt")
    assert record["label_volume_ml"] == pytest.approx([min(ml), max(ml)])
    record["label_volume_ml"] = [0.5 * min(ml), 3.0]  # the init model saw other labels too
    export_model(record, first / "model.pt")
    code = cli_main(
        [
            "train", "--data", str(dataset), "--out", str(tmp_path / "tuned"), "--init",
            str(first / "model.pt"), "--iterations", "1", "--device", "cpu", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert tuned["label_volume_ml"] == pytest.approx([0.5 * min(ml), max(3.0, max(ml))])
    assert tuned["train_config"].model == cfg.model
    assert tuned["train_config"].data.patch_size == cfg.data.patch_size
    # the fine-tune's own method, not the init's recipe (supervised here)
    assert tuned["train_config"].training.mode == FINE_TUNE_MODE == "pseudo"
    assert len(tuned["networks"]) == 1


def test_prefetching_does_not_change_the_run(dataset: Path, tmp_path: Path) -> None:
    """Batches prepared in the worker thread are the batches prepared in line: same weights."""
    for depth in (0, 2):
        cfg = tiny_config(iterations=3, amp="off")
        cfg = cfg.replace(data=cfg.data.replace(prefetch=depth))
        Trainer(cfg, load_dataset(dataset), tmp_path / f"p{depth}", device="cpu").run()
    _assert_same_weights(tmp_path / "p0" / "last.pt", tmp_path / "p2" / "last.pt")
    iters = [e for e in read_events(tmp_path / "p2" / "events.jsonl") if e["event"] == "iteration"]
    assert all(e["data_wait_s"] >= 0.0 for e in iters)
    started = next(
        e for e in read_events(tmp_path / "p2" / "events.jsonl") if e["event"] == "started"
    )
    assert started["precision"] == "float32"


def test_bf16_training_keeps_losses_finite(dataset: Path, tmp_path: Path) -> None:
    """Two steps (the second after an update) of the smallest batch: bf16 forced on a CPU
    without it is emulated, ~9 s per step of the usual 2 + 2 patches on a 2-core AVX2 EPYC."""
    cfg = tiny_config(iterations=2, amp="bf16", val_fraction=0.0)  # no emulated-bf16 validation
    cfg = cfg.replace(data=cfg.data.replace(labeled_batch=1, unlabeled_batch=1))
    Trainer(cfg, load_dataset(dataset), tmp_path / "run", device="cpu").run()
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert next(e for e in events if e["event"] == "started")["precision"] == "bfloat16"
    for e in (e for e in events if e["event"] == "iteration"):
        assert all(torch.isfinite(torch.tensor(v)) for v in e["losses"].values())


def test_stop_file_stops_after_the_current_iteration(dataset: Path, tmp_path: Path) -> None:
    from dkuxnet.runs import STOP_REQUEST_FILE as STOP_FILE

    run = tmp_path / "run"
    run.mkdir()
    (run / STOP_FILE).write_text("")  # a stale request from an earlier start is ignored...
    trainer = Trainer(tiny_config(iterations=3), load_dataset(dataset), run, device="cpu")
    original = trainer._step

    def step_then_ask_to_stop(*args: object, **kwargs: object) -> dict[str, float]:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        (run / STOP_FILE).write_text("")  # ...a new one stops the run after this iteration
        return out

    trainer._step = step_then_ask_to_stop  # type: ignore[method-assign]
    assert trainer.run() == "cancelled"
    assert load_checkpoint(run / "last.pt")["iteration"] == 1


def test_a_stop_written_for_this_run_before_it_started_is_honoured(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel pressed while the child starts: the stop file names the run's token and stays.

    The trainer used to delete every stop file at its start, so this Cancel was lost (on
    Windows the job was then killed after the grace period instead of stopping cleanly).
    """
    from dkuxnet.jobs import RUN_TOKEN_ENV
    from dkuxnet.runs import STOP_REQUEST_FILE as STOP_FILE

    monkeypatch.setenv(RUN_TOKEN_ENV, "this-run")
    run = tmp_path / "run"
    run.mkdir()
    (run / STOP_FILE).write_text("stop requested at 0\nrun this-run\n")
    trainer = Trainer(tiny_config(iterations=3), load_dataset(dataset), run, device="cpu")
    assert trainer.run() == "cancelled"
    assert load_checkpoint(run / "last.pt")["iteration"] == 1


def test_a_stop_of_an_earlier_run_is_cleared(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dkuxnet.jobs import RUN_TOKEN_ENV
    from dkuxnet.runs import STOP_REQUEST_FILE as STOP_FILE

    monkeypatch.setenv(RUN_TOKEN_ENV, "this-run")
    run = tmp_path / "run"
    run.mkdir()
    (run / STOP_FILE).write_text("stop requested at 0\nrun an-earlier-run\n")
    trainer = Trainer(tiny_config(iterations=2), load_dataset(dataset), run, device="cpu")
    assert trainer.run() == "completed"
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    assert not (run / STOP_FILE).exists()


def test_gradient_probe_logs_both_norms_and_leaves_the_run_unchanged(
    dataset: Path, tmp_path: Path
) -> None:
    for every in (0, 2):
        cfg = tiny_config(iterations=3, amp="off", grad_probe_every=every, log_every=3)
        Trainer(cfg, load_dataset(dataset), tmp_path / f"g{every}", device="cpu").run()
    _assert_same_weights(tmp_path / "g0" / "last.pt", tmp_path / "g2" / "last.pt")
    iters = [e for e in read_events(tmp_path / "g2" / "events.jsonl") if e["event"] == "iteration"]
    probed = {e["iteration"]: e["grad_norms"] for e in iters if "grad_norms" in e}
    assert sorted(probed) == [2]  # logged on a probe iteration even off the log_every grid
    assert [e["iteration"] for e in iters] == [2, 3]  # and 3 (the last) without grad norms
    for norms in probed.values():
        assert set(norms) == {"grad_norm_sup", "grad_norm_consistency"}
        assert norms["grad_norm_sup"] > 0 and norms["grad_norm_consistency"] > 0
        assert all(math.isfinite(v) for v in norms.values())
    assert all(not k.startswith("grad_norm") for e in iters for k in e["losses"])
    with pytest.raises(ConfigError, match="grad_probe_every"):
        tiny_config(grad_probe_every=-1)


@pytest.mark.parametrize("how", ["copy", "perturb", "fresh"])
def test_fine_tune_start_of_network_b(dataset: Path, tmp_path: Path, how: str) -> None:
    """From a one-network model: B is A's copy, a noisy copy, or its own random start."""
    first = tmp_path / "first"
    Trainer(
        tiny_config(iterations=1, mode="supervised"), load_dataset(dataset), first, device="cpu"
    ).run()
    init = load_checkpoint(first / "best.pt")["networks"][0]
    cfg = tiny_config(mode="dual", init_b=how, init_b_noise=0.1)
    trainer = Trainer(
        cfg, load_dataset(dataset), tmp_path / "tuned", device="cpu", init=first / "best.pt"
    )
    a, b = (n.state_dict() for n in trainer._build_networks())
    assert all(torch.equal(a[k], init[k]) for k in init)  # A always starts from the model
    weights = [k for k in init if init[k].is_floating_point() and init[k].numel() > 1]
    if how == "copy":
        assert all(torch.equal(b[k], init[k]) for k in init)
    elif how == "perturb":
        for k in weights:
            if init[k].numel() >= 100 and float(init[k].std()) > 0:  # a steady std estimate
                rel = float((b[k] - init[k]).std() / init[k].std())
                assert 0.05 < rel < 0.2, (k, rel)
        assert all(torch.equal(b[k], init[k]) for k in init if k not in weights)  # buffers kept
    else:
        differs = [k for k in weights if not torch.equal(b[k], init[k])]
        assert len(differs) > 0.9 * len(weights)
    again = Trainer(
        cfg, load_dataset(dataset), tmp_path / "again", device="cpu", init=first / "best.pt"
    )
    b2 = again._build_networks()[1].state_dict()
    assert all(torch.equal(b[k], b2[k]) for k in b)  # reproducible from the seed


def test_network_b_of_another_design_trains_checkpoints_and_predicts(
    dataset: Path, tmp_path: Path
) -> None:
    """``model.architecture_b``: A our network, B MONAI's UNet, through training, checkpoints,
    a fine-tune from a one-network model (B starts on its own) and the predictor."""
    from dkuxnet.inference import Predictor
    from dkuxnet.model.baseline import UNetBaseline
    from dkuxnet.model.network import DualKMaXUXNet

    base = tiny_config(mode="dual")
    cfg = base.replace(model=base.model.replace(architecture_b="unet"))
    run = tmp_path / "run"
    assert Trainer(cfg, load_dataset(dataset), run, device="cpu").run() == "completed"
    iters = [e for e in read_events(run / "events.jsonl") if e["event"] == "iteration"]
    assert {"sup_b", "segc", "qdc"} <= set(iters[-1]["losses"])
    assert all(math.isfinite(v) for e in iters for v in e["losses"].values())
    predictor = Predictor.from_checkpoint(run, "cpu")
    a, b = predictor.networks
    assert isinstance(a, DualKMaXUXNet) and isinstance(b, UNetBaseline)
    image = read_volume(load_dataset(dataset).labeled[0].image)
    probs = predictor.predict_probabilities(image.array)
    assert probs.shape == (2, *image.array.shape) and np.allclose(probs.sum(axis=0), 1, atol=1e-4)
    # a fine-tune from a one-network model of A's design: A from the model, B its own start
    first = tmp_path / "first"
    Trainer(tiny_config(iterations=1, mode="supervised"), load_dataset(dataset), first, "cpu").run()
    init = load_checkpoint(first / "best.pt")["networks"][0]
    trainer = Trainer(cfg, load_dataset(dataset), tmp_path / "tuned", "cpu", init=first / "best.pt")
    net_a, net_b = trainer._build_networks()
    assert all(torch.equal(net_a.state_dict()[k], init[k]) for k in init)
    assert isinstance(net_b, UNetBaseline)
    # a two-network model of other designs is refused as an init
    with pytest.raises(CheckpointError, match="model settings differ"):
        Trainer(
            base, load_dataset(dataset), tmp_path / "x", "cpu", init=run / "best.pt"
        )._build_networks()


def test_architecture_b_is_checked_and_only_changes_network_b() -> None:
    with pytest.raises(ConfigError, match="architecture_b"):
        ModelConfig.preset("lite", architecture_b="resnet")
    lite = ModelConfig.preset("lite")
    assert lite.for_network(1) is lite  # empty: B as A
    mixed = lite.replace(architecture_b="unet")
    assert mixed.for_network(0) is mixed
    assert mixed.for_network(1) == lite.replace(architecture="unet")


@pytest.mark.parametrize(
    "training",
    [{"mode": "dual"}, {"mode": "supervised", "supervised_view": "strong"}],
    ids=["dual", "supervised-strong"],
)
def test_estimate_and_run_build_the_same_recipe(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training: dict
) -> None:
    """time_iterations (Estimate time) and a run share one set-up: the same batch layout and
    the configured strong_* perturbation (the estimate used strong_view's own defaults)."""
    cfg = tiny_config(iterations=1, **STRONG, **training)
    views, batches = record_recipe(monkeypatch)
    data = load_dataset(dataset)
    Trainer(cfg, data, tmp_path / "run", device="cpu").run()
    trained = (set(views), batches[0])
    views.clear()
    batches.clear()
    Trainer(cfg, data, tmp_path / "estimate", device="cpu").time_iterations(repeats=1)
    assert (set(views), batches[0]) == trained
    assert trained[0] == {tuple(STRONG.values())}
