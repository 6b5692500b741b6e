"""``training.start_check``: a fine-tune (``--init``) replaces its start model only by beating
it on the validation scans (``auto``: except in pseudo mode).

The start weights are validated as iteration 0 and become ``best.pt`` (and ``last.pt``); the
validation Dice is scripted with ``test_selection.py``'s helpers, so which weights end in
``best.pt`` is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_selection import _same, _scripted, _validations
from tiny import TINY_MODEL

from dkuxnet.checkpoint import load_checkpoint
from dkuxnet.config import ModelConfig, TrainConfig
from dkuxnet.data import load_dataset
from dkuxnet.synthetic import write_synthetic_dataset
from dkuxnet.training import Trainer

Weights = list[dict[str, torch.Tensor]]  # what _scripted keeps of each validation


def _config(iterations: int, mode: str = "supervised", start_check: str = "auto") -> TrainConfig:
    base = TrainConfig.preset("lite")
    return TrainConfig(
        model=ModelConfig.preset("lite", **TINY_MODEL),
        data=base.data.replace(patch_size=(16, 32, 32), labeled_batch=1, unlabeled_batch=1),
        training=base.training.replace(
            mode=mode,
            start_check=start_check,
            iterations=iterations,
            val_every=1,
            checkpoint_every=1,
            schedule="constant",
        ),
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, n_labeled=3, n_unlabeled=0, n_test=0, shape=(24, 40, 40), seed=3)
    return root


@pytest.fixture(scope="module")
def start_model(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("start") / "run"
    trainer = Trainer(_config(1), load_dataset(dataset), run, device="cpu")
    _scripted(trainer, [0.5], {})
    assert trainer.run() == "completed"
    return run / "best.pt"


def test_a_fine_tune_that_does_not_beat_its_start_model_keeps_it(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    run = tmp_path / "tuned"
    trainer = Trainer(_config(3), load_dataset(dataset), run, device="cpu", init=start_model)
    seen: dict[int, Weights] = {}
    _scripted(trainer, [0.8, 0.7, 0.8, 0.75], seen)  # start, then worse, a tie, worse
    assert trainer.run() == "completed"
    assert _validations(run) == {0: True, 1: False, 2: False, 3: False}
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == 0 and best["best_metric"] == 0.8
    start = load_checkpoint(start_model)["networks"]
    assert _same(best["networks"], start) and _same(seen[0], start)
    assert not _same(load_checkpoint(run / "last.pt")["networks"], start)  # it did train


def test_a_fine_tune_that_beats_its_start_model_replaces_it(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    run = tmp_path / "tuned"
    trainer = Trainer(_config(2), load_dataset(dataset), run, device="cpu", init=start_model)
    seen: dict[int, Weights] = {}
    _scripted(trainer, [0.6, 0.65, 0.62], seen)
    assert trainer.run() == "completed"
    assert _validations(run) == {0: True, 1: True, 2: False}
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == 1 and _same(best["networks"], seen[1])


def test_a_new_model_is_not_validated_before_training(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "new"
    trainer = Trainer(_config(1), load_dataset(dataset), run, device="cpu")
    _scripted(trainer, [0.4], {})
    assert trainer.run() == "completed"
    assert _validations(run) == {1: True}


def test_a_fine_tune_killed_before_its_first_step_resumes_with_the_start_models_score(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    run = tmp_path / "tuned"
    first = Trainer(_config(2), load_dataset(dataset), run, device="cpu", init=start_model)
    _scripted(first, [0.9], {})
    first.stop_event.set()  # stops after its first iteration: last.pt at iteration 1
    first._loop = lambda *a, **k: "cancelled"  # type: ignore[method-assign]  # killed at once
    first.run()
    last = load_checkpoint(run / "last.pt")
    assert last["iteration"] == 0 and last["best_metric"] == 0.9

    resumed = Trainer(_config(2), load_dataset(dataset), run, device="cpu", resume=True)
    _scripted(resumed, [0.85, 0.95], {})  # no second look at the start model
    assert resumed.run() == "completed"
    assert _validations(run) == {0: True, 1: False, 2: True}
    assert load_checkpoint(run / "best.pt")["iteration"] == 2


@pytest.mark.parametrize(
    ("mode", "check", "checked"),
    [
        ("supervised", "auto", True),
        ("supervised", "off", False),
        ("pseudo", "auto", False),
        ("pseudo", "on", True),
    ],
)
def test_start_check_setting(
    dataset: Path, start_model: Path, tmp_path: Path, mode: str, check: str, checked: bool
) -> None:
    run = tmp_path / "tuned"
    cfg = _config(1, mode=mode, start_check=check)
    trainer = Trainer(cfg, load_dataset(dataset), run, device="cpu", init=start_model)
    _scripted(trainer, [0.9, 0.5] if checked else [0.5], {})
    assert trainer.run() == "completed"
    assert _validations(run) == ({0: True, 1: False} if checked else {1: True})


def test_start_check_rejects_an_unknown_choice() -> None:
    from dkuxnet.errors import ConfigError

    with pytest.raises(ConfigError, match="start_check"):
        TrainConfig.preset("lite").training.replace(start_check="always")
