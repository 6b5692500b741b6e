"""``training.mode=pseudo``: the start model labels the unlabeled scans once; one network learns
from labeled and pseudo-labeled patches (the fine-tune of issue 24)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_trainer import STRONG, _assert_same_weights, record_recipe, tiny_config

from dkuxnet.checkpoint import export_model, load_checkpoint
from dkuxnet.data import Case, load_dataset
from dkuxnet.errors import ConfigError
from dkuxnet.events import read_events
from dkuxnet.inference import Predictor
from dkuxnet.io import read_volume
from dkuxnet.synthetic import write_synthetic_dataset
from dkuxnet.training import Trainer
from dkuxnet.training.trainer import PSEUDO_DIR, pseudo_label_cases


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, n_labeled=3, n_unlabeled=2, n_test=0, shape=(24, 40, 40), seed=5)
    return root


@pytest.fixture(scope="module")
def start_model(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-network model that has learnt the phantoms a little (finds some foreground)."""
    run = tmp_path_factory.mktemp("start") / "run"
    cfg = tiny_config(mode="supervised", iterations=40, lr=3e-3, schedule="constant")
    Trainer(cfg, load_dataset(dataset), run, device="cpu").run()
    return export_model(load_checkpoint(run / "last.pt"), run.parent / "start.pt")


def test_pseudo_mode_needs_a_start_model(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--init"):
        Trainer(tiny_config(mode="pseudo"), load_dataset(dataset), tmp_path / "run", device="cpu")


def test_pseudo_labels_are_the_start_models_prediction(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    cases = list(load_dataset(dataset).unlabeled)
    calls: list[tuple[int, int, str]] = []
    out = pseudo_label_cases(
        start_model, cases, tmp_path, device="cpu", tta=False, on_case=lambda *a: calls.append(a)
    )
    assert calls == [(i + 1, len(cases), c.name) for i, c in enumerate(cases)]
    predictor = Predictor.from_checkpoint(start_model, device="cpu", tta=False)
    assert out, "the start model should find foreground in the phantoms"
    for case in out:
        image = read_volume(case.image)
        label = read_volume(case.label, what="label")
        assert label.same_geometry(image)
        np.testing.assert_array_equal(label.array, predictor.predict_label(image.array))
    # a second call reuses the written labels (a restarted run): the files are not rewritten
    stamps = {c.name: c.label.stat().st_mtime_ns for c in out}
    again = pseudo_label_cases(start_model, cases, tmp_path, device="cpu", tta=False)
    assert {c.name: c.label.stat().st_mtime_ns for c in again} == stamps


def test_a_scan_where_the_start_model_finds_nothing_is_left_out(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    cases = list(load_dataset(dataset).unlabeled)
    image = read_volume(cases[0].image)
    from dkuxnet.io import write_volume

    write_volume(image.with_array(np.zeros(image.array.shape, np.uint8)), tmp_path / "a.nii.gz")
    (tmp_path / "a.nii.gz").rename(tmp_path / f"{cases[0].name}.nii.gz")
    out = pseudo_label_cases(start_model, cases, tmp_path, device="cpu", tta=False)
    assert [c.name for c in out] == [c.name for c in cases[1:]]


def test_pseudo_run_trains_one_network_on_both_streams_and_resumes(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(mode="pseudo", iterations=3, pseudo_tta=False)
    Trainer(cfg, load_dataset(dataset), run, device="cpu", init=start_model).run()
    events = read_events(run / "events.jsonl")
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [1, 2] and progress[0]["stage"] == "pseudo-labels"
    iters = [e for e in events if e["event"] == "iteration"]
    assert [e["iteration"] for e in iters] == [1, 2, 3]
    for e in iters:  # both parts are real losses, and the total is their weighted sum
        parts = e["losses"]
        assert parts["sup"] > 0 and parts["pseudo"] > 0
        assert parts["total"] == pytest.approx(parts["sup"] + parts["pseudo"], rel=1e-5)
    assert len(load_checkpoint(run / "last.pt")["networks"]) == 1
    assert sorted(p.name for p in (run / PSEUDO_DIR / "rank0").iterdir()) == sorted(
        f"{c.name}.nii.gz" for c in load_dataset(dataset).unlabeled
    )
    # resume to 5 iterations: the pseudo-labels are reused, not recomputed
    folder = run / PSEUDO_DIR / "rank0"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    cfg5 = tiny_config(mode="pseudo", iterations=5, pseudo_tta=False)
    Trainer(cfg5, load_dataset(dataset), run, device="cpu", resume=True).run()
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert load_checkpoint(run / "last.pt")["iteration"] == 5


def test_pseudo_weight_zero_is_the_supervised_step(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    """With weight 0 the pseudo patches change nothing but the batch: the labeled loss is the
    whole total, and the gradient is that of the labeled patches alone."""
    cfg = tiny_config(mode="pseudo", iterations=1, pseudo_tta=False, pseudo_weight=0.0)
    Trainer(cfg, load_dataset(dataset), tmp_path / "run", device="cpu", init=start_model).run()
    it = next(
        e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "iteration"
    )
    assert it["losses"]["total"] == pytest.approx(it["losses"]["sup"], rel=1e-6)
    assert it["losses"]["pseudo"] > 0


def test_estimate_times_the_pseudo_step(dataset: Path, start_model: Path, tmp_path: Path) -> None:
    cfg = tiny_config(mode="pseudo", pseudo_tta=False)
    trainer = Trainer(cfg, load_dataset(dataset), tmp_path / "run", device="cpu", init=start_model)
    seen: list[int] = []
    original = trainer._step

    def spy(state, batch, iteration):  # type: ignore[no-untyped-def]
        seen.append(batch["pseudo_image"].shape[0])
        return original(state, batch, iteration)

    trainer._step = spy  # type: ignore[method-assign]
    assert trainer.time_iterations(repeats=1) > 0
    assert seen == [cfg.data.unlabeled_batch] * 2


def test_tta_labels_are_the_flip_averaged_prediction(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    cases = [Case("x", c.image, None) for c in list(load_dataset(dataset).unlabeled)[:1]]
    out = pseudo_label_cases(start_model, cases, tmp_path, device="cpu", tta=True)
    assert [c.image for c in out] == [cases[0].image]
    image = read_volume(cases[0].image).array
    expected = Predictor.from_checkpoint(start_model, device="cpu", tta=True).predict_label(image)
    np.testing.assert_array_equal(read_volume(out[0].label, what="label").array, expected)


def test_estimate_and_run_build_the_same_pseudo_recipe(
    dataset: Path, start_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Estimate times the batch a pseudo run trains on: the pseudo_image / pseudo_label
    stream, perturbed by the configured strong_* recipe."""
    cfg = tiny_config(mode="pseudo", iterations=1, pseudo_tta=False, **STRONG)
    views, batches = record_recipe(monkeypatch)
    data = load_dataset(dataset)
    Trainer(cfg, data, tmp_path / "run", device="cpu", init=start_model).run()
    trained = (set(views), batches[0])
    views.clear()
    batches.clear()
    Trainer(cfg, data, tmp_path / "estimate", device="cpu", init=start_model).time_iterations(1)
    assert (set(views), batches[0]) == trained
    assert {"pseudo_image", "pseudo_label"} <= set(trained[1])
    assert trained[0] == {tuple(STRONG.values())}


def test_refreshed_labels_are_the_trained_networks_and_a_resume_makes_the_same(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    """``pseudo_refresh_every=2``: at iteration 2 the network being trained labels the
    unlabeled scans again (its prediction, not the start model's), the rest of the run learns
    from them, and a run stopped at that boundary and resumed makes the same labels and ends
    with the same weights, bit for bit."""
    data = load_dataset(dataset)
    recipe = {"mode": "pseudo", "pseudo_tta": False, "schedule": "constant"}
    cfg = tiny_config(iterations=4, pseudo_refresh_every=2, **recipe)
    straight = tmp_path / "straight"
    Trainer(cfg, data, straight, device="cpu", init=start_model).run()
    stopped = tmp_path / "stopped"
    Trainer(cfg.replace(training=cfg.training.replace(iterations=2)), data, stopped,
            device="cpu", init=start_model).run()  # fmt: skip
    assert not (stopped / PSEUDO_DIR / "round1").exists()  # a run's end is no boundary
    at_boundary = tmp_path / "at2.pt"
    at_boundary.write_bytes((stopped / "last.pt").read_bytes())
    Trainer(cfg, data, stopped, device="cpu", resume=True).run()
    _assert_same_weights(straight / "last.pt", stopped / "last.pt")

    teacher = Predictor.from_checkpoint(at_boundary, device="cpu", tta=False)
    start = Predictor.from_checkpoint(start_model, device="cpu", tta=False)
    changed = 0
    for case in data.unlabeled:
        image = read_volume(case.image).array
        expected = teacher.predict_label(image)
        for run in (straight, stopped):
            label = run / PSEUDO_DIR / "round1" / "rank0" / f"{case.name}.nii.gz"
            np.testing.assert_array_equal(read_volume(label, what="label").array, expected)
        changed += int((expected != start.predict_label(image)).sum())
    assert changed > 0, "the trained network should label some voxels otherwise"
    assert not (straight / PSEUDO_DIR / "round2").exists()
    progress = [e for e in read_events(straight / "events.jsonl") if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [1, 2, 1, 2]


def test_a_resume_past_a_refresh_without_its_labels_is_refused(
    dataset: Path, start_model: Path, tmp_path: Path
) -> None:
    import shutil

    from dkuxnet.errors import CheckpointError

    recipe = {"mode": "pseudo", "pseudo_tta": False, "pseudo_refresh_every": 2}
    run = tmp_path / "run"
    data = load_dataset(dataset)
    Trainer(tiny_config(iterations=3, **recipe), data, run, device="cpu", init=start_model).run()
    shutil.rmtree(run / PSEUDO_DIR / "round1")
    with pytest.raises(CheckpointError, match="round 1 are missing.*iteration 3"):
        Trainer(tiny_config(iterations=4, **recipe), data, run, device="cpu", resume=True).run()
