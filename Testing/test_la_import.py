"""dkuxnet la-import on tiny files in both source formats (never the real data)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from dkuxnet.cli import main
from dkuxnet.data import LACropSettings, import_la, load_dataset, preprocess_la_raw, read_split_list
from dkuxnet.errors import InputError, OutputExistsError
from dkuxnet.io import Volume, read_volume, write_volume

H5_SHAPE_XYZ = (9, 7, 5)


def _h5_case(folder: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=H5_SHAPE_XYZ).astype(np.float32)
    label = np.zeros(H5_SHAPE_XYZ, np.uint8)
    label[2:5, 1:4, 1:3] = 1
    folder.mkdir(parents=True)
    with h5py.File(folder / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")
    return image, label


def _raw_case(folder: Path, seed: int) -> None:
    shape = (4, 200, 190)  # (z, y, x)
    rng = np.random.default_rng(seed)
    image = Volume(
        rng.integers(0, 300, size=shape).astype(np.int16), (0.625, 0.625, 0.625), (5.0, -3.0, 1.0)
    )
    label = np.zeros(shape, np.uint8)
    label[1:3, 100:111, 80:121] = 255
    write_volume(image, folder / "lgemri.nrrd")
    write_volume(image.with_array(label), folder / "laendo.nrrd")


@pytest.fixture()
def source(tmp_path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    src = tmp_path / "2018LA_Seg_Training Set"
    arrays = {name: _h5_case(src / name, i) for i, name in enumerate(["CASEA", "CASEB"])}
    _raw_case(src / "CASEC", 2)
    arrays["CASED"] = _h5_case(src / "nested" / "CASED", 3)  # found a level deeper
    return src, arrays


def test_import_both_formats(tmp_path, source):
    src, arrays = source
    out = tmp_path / "out"
    split = import_la(
        src, out, labeled=2, train_cases=["CASEA", "CASEB", "CASEC"], test_cases=["CASED"]
    )
    assert split.summary() == "2 labeled, 1 unlabeled, 0 validation, 1 test"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"CASE{c}.nii.gz" for c in "ABC"
    ]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["CASEA.nii.gz", "CASEB.nii.gz"]
    assert [p.name for p in (out / "labelsTr_hidden").iterdir()] == ["CASEC.nii.gz"]
    assert [p.name for p in (out / "labelsTs").iterdir()] == ["CASED.nii.gz"]
    assert load_dataset(out) == load_dataset(out / "datalist.json")
    hidden = json.loads((out / "datalist.json").read_text())["hidden_labels"]
    assert hidden == {"CASEC": "labelsTr_hidden/CASEC.nii.gz"}

    # h5: stored (x, y, z), ours (z, y, x); 0.625 mm isotropic, identity direction
    image = read_volume(out / "imagesTr" / "CASEA.nii.gz")
    label = read_volume(out / "labelsTr" / "CASEA.nii.gz")
    np.testing.assert_array_equal(image.array, arrays["CASEA"][0].transpose(2, 1, 0))
    np.testing.assert_array_equal(label.array, arrays["CASEA"][1].transpose(2, 1, 0))
    assert image.array.shape == H5_SHAPE_XYZ[::-1]
    assert image.spacing == pytest.approx((0.625,) * 3)
    np.testing.assert_array_equal(image.direction, np.eye(3))

    # raw: z-scored, label 255 -> 1, y/x cropped around the label plus margins, full depth
    raw_image = read_volume(out / "imagesTr" / "CASEC.nii.gz")
    raw_label = read_volume(out / "labelsTr_hidden" / "CASEC.nii.gz")
    assert raw_image.array.dtype == np.float32 and raw_label.same_geometry(raw_image)
    assert raw_image.array.shape[0] == 4
    assert 132 <= raw_image.array.shape[1] <= 150  # 11-voxel box widened to 112, margins 10..19
    assert 142 <= raw_image.array.shape[2] <= 160
    assert int(raw_label.array.sum()) == 2 * 11 * 41
    assert abs(float(raw_image.array.mean())) < 0.2


def test_raw_crop_bounds_and_origin():
    shape = (3, 40, 50)
    image = Volume(
        np.arange(np.prod(shape), dtype=np.float32).reshape(shape),
        (0.5, 0.5, 2.0),
        (10.0, 20.0, 30.0),
    )
    label = np.zeros(shape, np.uint8)
    label[:, 10:15, 20:31] = 255
    crop = LACropSettings(min_size=(8, 4), margin=(2, 3))  # margins exactly 2
    img, lab = preprocess_la_raw(image, image.with_array(label), seed=0, crop=crop)
    # y: box 10..14 (extent 4) widened by (8-4)//2 = 2 and margin 2 -> 6..18 ; x: 18..32
    assert img.array.shape == (3, 12, 14)
    assert lab.array.sum() == 3 * 5 * 11 and lab.array[:, 4:9, 2:13].all()
    assert img.origin == pytest.approx((10.0 + 18 * 0.5, 20.0 + 6 * 0.5, 30.0))
    full = (image.array - image.array.mean()) / image.array.std()
    np.testing.assert_allclose(img.array, full[:, 6:18, 18:32], rtol=1e-5, atol=1e-5)


def test_missing_cases(tmp_path, source):
    src, _ = source
    with pytest.raises(InputError, match=r"1 of 2 LA cases not found under .*: NOPE"):
        import_la(src, tmp_path / "out", labeled=1, train_cases=["CASEA", "NOPE"], test_cases=[])


def test_default_lists_need_all_100_cases(tmp_path, source):
    src, _ = source
    with pytest.raises(InputError, match=r"100 of 100 LA cases not found"):
        import_la(src, tmp_path / "out")


def test_output_not_empty(tmp_path, source):
    src, _ = source
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(OutputExistsError, match="is not empty"):
        import_la(src, out, labeled=1, train_cases=["CASEA"], test_cases=[])


def test_labeled_out_of_range(tmp_path, source):
    src, _ = source
    with pytest.raises(InputError, match=r"labeled must be between 1 and 1, got 2"):
        import_la(src, tmp_path / "o", labeled=2, train_cases=["CASEA"], test_cases=[])


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="LA source folder not found"):
        import_la(tmp_path / "nothing", tmp_path / "o")


def test_bad_h5(tmp_path):
    (tmp_path / "src" / "BAD").mkdir(parents=True)
    with h5py.File(tmp_path / "src" / "BAD" / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((3, 3, 3), np.float32))
    with pytest.raises(InputError, match=r"BAD/mri_norm2\.h5.*need datasets 'image' and 'label'"):
        import_la(tmp_path / "src", tmp_path / "o", labeled=1, train_cases=["BAD"], test_cases=[])


def test_raw_label_without_atrium(tmp_path):
    folder = tmp_path / "src" / "EMPTY"
    image = Volume(np.ones((2, 4, 4), np.int16))
    write_volume(image, folder / "lgemri.nrrd")
    write_volume(image.with_array(np.zeros((2, 4, 4), np.uint8)), folder / "laendo.nrrd")
    with pytest.raises(InputError, match=r"case EMPTY .*no atrium voxel \(value 255\)"):
        import_la(tmp_path / "src", tmp_path / "o", labeled=1, train_cases=["EMPTY"], test_cases=[])


def test_shipped_split_lists():
    train, test = read_split_list("train"), read_split_list("test")
    assert len(train) == 80 and len(test) == 20
    assert len(set(train) | set(test)) == 100
    assert train[:2] == ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU"]


def test_la_import_command(tmp_path, source, capsys):
    src, _ = source
    (tmp_path / "train.txt").write_text("CASEA\nCASEC\n")
    (tmp_path / "test.txt").write_text("CASED\n")
    args = ["la-import", str(src), str(tmp_path / "out"), "--labeled", "1", "--format", "nrrd"]
    args += ["--train-list", str(tmp_path / "train.txt"), "--test-list", str(tmp_path / "test.txt")]
    assert main(args) == 0
    assert "1 labeled, 1 unlabeled, 0 validation, 1 test" in capsys.readouterr().out
    assert (tmp_path / "out" / "imagesTs" / "CASED.nrrd").is_file()
