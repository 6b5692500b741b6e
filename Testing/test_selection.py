"""Which checkpoint becomes ``best.pt``: the one Slicer's Segment and ``dkuxnet predict`` use.

The validation Dice is scripted (the trainer's ``_validate`` is replaced), so a run whose Dice
goes up, ties, then goes down has a known best iteration, and a resumed run must remember the
best Dice of the part before it. Every other test validates once, where the first validation
always "improves".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TINY_MODEL

from dkuxnet.checkpoint import load_checkpoint
from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import load_dataset
from dkuxnet.events import read_events
from dkuxnet.synthetic import write_synthetic_dataset
from dkuxnet.training import Trainer
from dkuxnet.training.trainer import TrainingState


def _config(iterations: int) -> TrainConfig:
    base = TrainConfig.preset("lite")
    return TrainConfig(
        model=ModelConfig.preset("lite", **TINY_MODEL),
        data=base.data.replace(patch_size=(16, 32, 32), labeled_batch=1, unlabeled_batch=1),
        training=base.training.replace(
            mode="supervised",
            iterations=iterations,
            val_every=1,
            checkpoint_every=1,
            lr=1e-2,
            schedule="constant",
        ),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, n_labeled=3, n_unlabeled=0, n_test=0, shape=(24, 40, 40), seed=3)
    return root


Snapshots = dict[int, list[dict[str, torch.Tensor]]]


def _scripted(trainer: Trainer, dice: Sequence[float], snapshots: Snapshots) -> None:
    """Make ``trainer`` validate with the next value of ``dice``, keeping the weights it saw.

    Its training step only nudges every weight (what is tested is which weights are kept, and
    a real step costs seconds on a busy CPU).
    """
    values = iter(dice)

    def step(state: TrainingState, *args: Any) -> dict[str, float]:
        with torch.no_grad():
            for model in state.models:
                for p in model.parameters():
                    p.add_(0.01)
        state.optimizer.step()  # no gradients: changes nothing, but the scheduler expects it
        return {"total": 1.0}

    def validate(networks: Sequence[torch.nn.Module], cases: Any, iteration: int) -> dict:
        snapshots[iteration] = [
            {k: v.detach().clone() for k, v in n.state_dict().items()} for n in networks
        ]
        mean = next(values)
        return {"dice": {"case": mean}, "mean_dice": mean}

    trainer._validate = validate  # type: ignore[method-assign]
    trainer._step = step  # type: ignore[method-assign,assignment]


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def _validations(run: Path) -> dict[int, bool]:
    events = read_events(run / "events.jsonl")
    return {e["iteration"]: e["best"] for e in events if e["event"] == "validation"}


def _best_checkpoints(run: Path) -> list[int]:
    events = read_events(run / "events.jsonl")
    return [e["iteration"] for e in events if e["event"] == "checkpoint" and e["kind"] == "best"]


def test_best_is_the_highest_dice_not_the_last_or_a_later_tie(
    dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    trainer = Trainer(_config(5), load_dataset(dataset), run, device="cpu")
    snapshots: Snapshots = {}
    _scripted(trainer, [0.3, 0.6, 0.6, 0.4, 0.5], snapshots)
    assert trainer.run() == "completed"
    # up, up, tie (not an improvement: the earlier model is kept), down, up but below the best
    assert _validations(run) == {1: True, 2: True, 3: False, 4: False, 5: False}
    assert _best_checkpoints(run) == [1, 2]
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == 2 and best["best_metric"] == 0.6
    assert best["metrics"]["mean_dice"] == 0.6
    assert _same(best["networks"], snapshots[2])
    assert not _same(best["networks"], snapshots[5])  # the weights did move after the best
    last = load_checkpoint(run / "last.pt")
    assert last["iteration"] == 5 and last["best_metric"] == 0.6
    assert (best["kind"], last["kind"]) == ("best", "last")
    # the range of the training labels' volumes, for the predictor's volume check
    low, high = last["label_volume_ml"]
    assert 0 < low <= high and best["label_volume_ml"] == [low, high]


def test_a_resumed_run_remembers_the_best_dice(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = Trainer(_config(3), load_dataset(dataset), run, device="cpu")
    snapshots: Snapshots = {}
    _scripted(first, [0.3, 0.6, 0.4], snapshots)
    assert first.run() == "completed"
    saved = load_checkpoint(run / "last.pt")
    assert saved["best_metric"] == 0.6

    # what a resume starts from: the iteration, best Dice and metrics of last.pt
    state = Trainer(_config(6), load_dataset(dataset), run, device="cpu", resume=True)._setup()
    assert (state.iteration, state.best_metric) == (3, 0.6)
    assert state.metrics == saved["metrics"] and state.metrics["mean_dice"] == 0.4

    # continued to 6 iterations: 0.5 and 0.55 are below the 0.6 of iteration 2; 0.65 is not
    resumed = Trainer(_config(6), load_dataset(dataset), run, device="cpu", resume=True)
    _scripted(resumed, [0.5, 0.55, 0.65], snapshots)
    original_save = resumed._save
    best_after: dict[int, int] = {}

    def save(name: str, *args: Any, **kwargs: Any) -> Path:
        path = original_save(name, *args, **kwargs)
        if name == "last.pt":  # which model best.pt holds at the end of each iteration
            iteration = load_checkpoint(path)["iteration"]
            best_after[iteration] = load_checkpoint(run / "best.pt")["iteration"]
        return path

    resumed._save = save  # type: ignore[method-assign]
    assert resumed.run() == "completed"
    flags = _validations(run)
    assert [flags[i] for i in (4, 5, 6)] == [False, False, True]
    assert best_after == {4: 2, 5: 2, 6: 6}  # iteration 2's model until a better one came
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == 6 and best["best_metric"] == 0.65
    assert _same(best["networks"], snapshots[6])


def _tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested) checkpoint entry, in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_an_in_process_resume_continues_exactly(dataset: Path, tmp_path: Path) -> None:
    """Stopped after 2 of 4 real steps, then resumed: the weights, the optimizer's moments and
    the schedule equal 4 straight steps, bit for bit (test_reliability's SIGKILL test says the
    same of child processes, where mutation testing cannot see the code)."""
    cfg = _config(4)
    cfg = cfg.replace(training=cfg.training.replace(schedule="poly", val_every=1000, lr=1e-3))
    straight = tmp_path / "straight"
    Trainer(cfg, load_dataset(dataset), straight, device="cpu").run()

    run = tmp_path / "resumed"
    first = Trainer(cfg, load_dataset(dataset), run, device="cpu")
    step = first._step

    def step_then_stop(state: TrainingState, batch: Any, iteration: int) -> dict[str, float]:
        losses = step(state, batch, iteration)
        if iteration == 1:  # the second step: the run stops after it
            first.stop_event.set()
        return losses

    first._step = step_then_stop  # type: ignore[method-assign]
    assert first.run() == "cancelled"
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    assert Trainer(cfg, load_dataset(dataset), run, device="cpu", resume=True).run() == "completed"

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["iteration"] == b["iteration"] == 4
    for key in ("networks", "optimizer", "scheduler"):
        x, y = _tensors(a[key]), _tensors(b[key])
        assert len(x) == len(y) > 0 or key == "scheduler", key
        assert all(torch.equal(p, q) for p, q in zip(x, y, strict=True)), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_a_checkpoint_with_a_network_missing_is_refused_on_resume(
    dataset: Path, tmp_path: Path
) -> None:
    from dkuxnet.checkpoint import save_checkpoint
    from dkuxnet.errors import CheckpointError

    run = tmp_path / "run"
    cfg = _config(1).replace(training=_config(1).training.replace(mode="dual"))
    trainer = Trainer(cfg, load_dataset(dataset), run, device="cpu")
    _scripted(trainer, [0.5], {})
    trainer.run()
    record = load_checkpoint(run / "last.pt")
    record["networks"] = record["networks"][:1]
    record.pop("train_config", None)
    save_checkpoint(record, run / "last.pt")
    resumed = Trainer(cfg.replace(training=cfg.training.replace(iterations=2)),
                      load_dataset(dataset), run, device="cpu", resume=True)  # fmt: skip
    with pytest.raises(CheckpointError, match="holds 1 network.s. but its configuration 2"):
        resumed._setup()
