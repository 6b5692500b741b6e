"""Two inputs a new user may try: an absurd spacing (a broken header) and a constant image.

The spacing 1e-6 x 1e-6 x 1e6 mm ended in a traceback after trying to allocate hundreds of GB
while resampling; it is now refused with a clear error before anything is allocated. An
all-zero image got an 8.9 ml "left atrium" and no warning; it now gets an empty label and a
warning that there is nothing to segment. Both at the core, and through ``dkuxnet predict``
(the Slicer panel shows the same messages: ``test_slicer_logic``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_predictor import Constant
from test_predictor import tiny_config as oracle_config
from tiny import save_random_checkpoint, tiny_model_config

from dkuxnet.cli import main
from dkuxnet.config import DataConfig, TrainConfig
from dkuxnet.errors import InputError
from dkuxnet.events import read_events
from dkuxnet.inference import Predictor
from dkuxnet.inference import predictor as predictor_module
from dkuxnet.inference.roi import constant_image_warning
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.preprocessing import MAX_GRID_VOXELS, check_grid_size

TARGET = (1.25, 1.25, 1.25)
ABSURD = (1e-6, 1e-6, 1e6)  # (x, y, z) mm


def absurd_volume(shape=(16, 20, 24)) -> Volume:
    array = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    return Volume(array, ABSURD, (0.0, 0.0, 0.0), np.eye(3))


def resampling_config() -> TrainConfig:
    base = oracle_config(largest_component=False)
    return TrainConfig(
        model=base.model, data=base.data.replace(target_spacing=TARGET), inference=base.inference
    )


# ------------------------------------------------------------------ the core
def test_an_absurd_spacing_is_refused_before_anything_is_allocated(monkeypatch) -> None:
    def no_resampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was resampled (the grid was allocated)")

    monkeypatch.setattr(predictor_module, "resample_to_spacing", no_resampling)
    predictor = Predictor([Constant(0.9)], resampling_config(), "cpu", largest_component=False)
    with pytest.raises(InputError) as caught:
        predictor.predict_volume(absurd_volume())
    message = str(caught.value)
    assert "1e-06 x 1e-06 x 1e+06 mm over 24 x 20 x 16 voxels" in message
    assert "spacing in the file header is probably wrong" in message
    assert "Volume Information" in message


def test_the_grid_limit_is_the_padded_resampled_size() -> None:
    """Independent arithmetic: the resampled size, each side padded to the window."""
    volume = absurd_volume()
    z = round(16 * 1e6 / 1.25)
    window = (32, 64, 80)  # (D, H, W)
    expected = 80 * 64 * max(z, 32)  # x, y round to 0 -> 1 -> padded to the window
    assert expected > MAX_GRID_VOXELS
    with pytest.raises(InputError, match=f"80 x 64 x {z} grid"):
        check_grid_size(volume, TARGET, window)
    # a real whole-chest CT at 0.7 mm is far below the limit
    ct = Volume(np.zeros((400, 512, 512), np.int8), (0.7, 0.7, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    check_grid_size(ct, TARGET, window)
    check_grid_size(ct, (0.5, 0.5, 0.5), window)  # 717 x 717 x 800 = 411 M voxels


def test_a_constant_image_gets_an_empty_label_and_a_warning() -> None:
    predictor = Predictor([Constant(0.9)], oracle_config(), "cpu", largest_component=False)
    image = Volume(np.zeros((12, 14, 20), np.int16), (1.0, 1.0, 2.0), (1.0, 2.0, 3.0), np.eye(3))
    result = predictor.predict_volume(image, probabilities=True)
    assert result.label.same_geometry(image)
    assert not result.label.array.any()  # the network would call every voxel atrium (p = 0.9)
    assert result.probabilities is not None and not result.probabilities.array.any()
    warning = constant_image_warning(image.array)
    assert warning is not None
    assert warning.startswith("the image is constant (every voxel is 0): there is nothing to")
    assert constant_image_warning(np.full((3, 3, 3), 7.5)) is not None
    varied = image.array.copy()
    varied[0, 0, 0] = 1
    assert constant_image_warning(varied) is None
    assert predictor.predict_volume(image.with_array(varied)).label.array.any()


# ------------------------------------------------------------------ dkuxnet predict
@pytest.fixture(scope="module")
def resampling_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(
        model=tiny_model_config(), data=DataConfig(patch_size=(16, 16, 32), target_spacing=TARGET)
    )
    return save_random_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", config)


def predict(model: Path, image: Volume, folder: Path) -> tuple[int, list[dict]]:
    write_volume(image, folder / "in.nrrd")
    events = folder / "events.jsonl"
    argv = ["predict", "--model", str(model), "--input", str(folder / "in.nrrd")]
    argv += ["--output", str(folder / "out.nrrd"), "--device", "cpu", "--events", str(events)]
    return main(argv), read_events(events)


def test_predict_refuses_an_absurd_spacing_in_one_line(resampling_model, tmp_path, capsys) -> None:
    code, events = predict(resampling_model, absurd_volume(), tmp_path)
    assert code == 1
    assert not (tmp_path / "out.nrrd").exists()
    assert events[-1]["status"] == "failed"
    assert "spacing in the file header is probably wrong" in events[-1]["error"]
    error_lines = [
        line for line in capsys.readouterr().err.splitlines() if "dkuxnet predict: error:" in line
    ]
    assert len(error_lines) == 1 and "1e+06" in error_lines[0]


def test_predict_says_a_constant_image_has_nothing_to_segment(resampling_model, tmp_path) -> None:
    image = Volume(np.zeros((10, 12, 14), np.int16), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), np.eye(3))
    code, events = predict(resampling_model, image, tmp_path)
    assert code == 0
    out = read_volume(tmp_path / "out.nrrd")
    assert out.same_geometry(image) and not out.array.any()
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert (
        "in's image is constant (every voxel is 0): there is nothing to segment"
        in (warning["message"])
    )
    assert warning["check"] == "constant"
    assert events[-1]["status"] == "completed"
