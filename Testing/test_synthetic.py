"""dkuxnet.synthetic: phantoms have the promised content and geometry; the dataset writer."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from dkuxnet.cli import main
from dkuxnet.data import load_dataset
from dkuxnet.errors import OutputExistsError
from dkuxnet.io import read_label, read_volume
from dkuxnet.synthetic import make_phantom, write_synthetic_dataset

SMALL = (24, 48, 48)


def test_phantom_arrays_and_geometry():
    start = time.perf_counter()
    image, label = make_phantom(seed=1)
    # a regression to a slow phantom (minutes), not a benchmark: a busy 2-core CI machine
    # takes several times the ~0.3 s this needs alone
    assert time.perf_counter() - start < 30.0
    assert image.array.shape == label.array.shape == (48, 96, 96)
    assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
    assert set(np.unique(label.array).tolist()) == {0, 1}
    assert label.same_geometry(image)
    sx, sy, sz = image.spacing
    assert sx == sy and sz > 1.15 * sx  # anisotropic: thicker slices
    assert not np.allclose(image.direction, np.eye(3))  # oblique
    np.testing.assert_allclose(image.direction.T @ image.direction, np.eye(3), atol=1e-12)


def test_phantom_is_deterministic_per_seed():
    a, la = make_phantom(SMALL, seed=7)
    b, lb = make_phantom(SMALL, seed=7)
    c, _ = make_phantom(SMALL, seed=8)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(la.array, lb.array)
    assert a.origin == b.origin and a.origin != c.origin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bright_distractors_are_not_labelled(seed):
    image, label = make_phantom(seed=seed)
    atrium = label.array.astype(bool)
    assert 0.002 < atrium.mean() < 0.15
    assert ndimage.label(atrium)[1] == 1  # the atrium and its veins are one object
    bright_level = np.median(image.array[atrium])
    bright = ndimage.binary_opening(image.array > 0.7 * bright_level, iterations=1)
    outside = bright & ~ndimage.binary_dilation(atrium, iterations=2)
    assert outside.sum() > 0.2 * atrium.sum()  # same-intensity structures outside the label
    background = image.array[~ndimage.binary_dilation(atrium | bright, iterations=3)]
    assert np.median(background) < 0.6 * bright_level


def test_write_dataset_layout_and_reload(tmp_path):
    split = write_synthetic_dataset(tmp_path, 2, 3, 1, shape=SMALL, seed=0)
    assert split.summary() == "2 labeled, 3 unlabeled, 0 validation, 1 test"
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == [
        "synth_000.nii.gz",
        "synth_001.nii.gz",
    ]
    assert len(list((tmp_path / "imagesTr").iterdir())) == 5
    loaded = load_dataset(tmp_path)
    assert loaded == split
    case = loaded.test[0]
    assert case.label is not None
    image = read_volume(case.image)
    assert read_label(case.label, reference=image).array.any()


def test_write_dataset_nrrd_and_overwrite(tmp_path):
    write_synthetic_dataset(tmp_path, 1, 0, 0, shape=(8, 16, 16), image_format=".nrrd")
    assert (tmp_path / "imagesTr" / "synth_000.nrrd").is_file()
    with pytest.raises(OutputExistsError, match="already exist"):
        write_synthetic_dataset(tmp_path, 1, 0, 0, shape=(8, 16, 16), image_format=".nrrd")
    write_synthetic_dataset(
        tmp_path, 1, 0, 0, shape=(8, 16, 16), image_format=".nrrd", overwrite=True
    )


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        main(["synth", str(out), "4", "--labeled", "1", "--test", "1", "--shape", "16", "24", "24"])
        == 0
    )
    assert "1 labeled, 2 unlabeled, 0 validation, 1 test" in capsys.readouterr().out
    assert main(["synth", str(out), "3", "--labeled", "2", "--test", "2"]) == 1
    assert "smaller than --labeled" in capsys.readouterr().err
