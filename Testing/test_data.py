"""dkuxnet.data: both dataset layouts with their errors, normalisation, the two-stream sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dkuxnet.data import Case, DatasetSplit, TwoStreamSampler, load_dataset
from dkuxnet.errors import InputError
from dkuxnet.io import Volume, write_volume
from dkuxnet.preprocessing import normalize_image

SHAPE = (12, 20, 22)  # (z, y, x)


def _write_case(
    folder: Path, name: str, label: bool | np.ndarray = True, seed: int = 0, shape=SHAPE
):
    """An image (and label) pair; the label is a small box of foreground."""
    rng = np.random.default_rng(seed)
    image = Volume(rng.normal(100.0, 20.0, size=shape).astype(np.float32), (0.8, 0.8, 1.5))
    write_volume(image, folder / f"{name}.nii.gz", overwrite=True)
    if label is False:
        return image, None
    if isinstance(label, np.ndarray):
        lab = label
    else:
        lab = np.zeros(shape, np.uint8)
        lab[4:7, 8:11, 9:12] = 1
    return image, image.with_array(lab)


def _decathlon(root: Path, n_labeled=2, n_unlabeled=3, n_test=1, channel_suffix=False) -> Path:
    suffix = "_0000" if channel_suffix else ""
    for i in range(n_labeled + n_unlabeled):
        _, lab = _write_case(root / "imagesTr", f"case{i}{suffix}", label=i < n_labeled, seed=i)
        if lab is not None:
            write_volume(lab, root / "labelsTr" / f"case{i}.nii.gz")
    for i in range(n_test):
        _, lab = _write_case(root / "imagesTs", f"test{i}{suffix}", seed=100 + i)
        write_volume(lab, root / "labelsTs" / f"test{i}.nii.gz")
    return root


# ---------------------------------------------------------------------------- dataset layouts


def test_decathlon_folder(tmp_path, caplog):
    caplog.set_level("INFO")
    split = load_dataset(_decathlon(tmp_path))
    assert [c.name for c in split.labeled] == ["case0", "case1"]
    assert [c.name for c in split.unlabeled] == ["case2", "case3", "case4"]
    assert all(c.label is None for c in split.unlabeled)
    assert split.test[0].label == tmp_path / "labelsTs" / "test0.nii.gz"
    assert split.validation == []
    assert split.summary() == "2 labeled, 3 unlabeled, 0 validation, 1 test"
    assert "2 labeled, 3 unlabeled" in caplog.text


def test_nnunet_channel_suffix(tmp_path):
    split = load_dataset(_decathlon(tmp_path, channel_suffix=True))
    assert [c.name for c in split.labeled] == ["case0", "case1"]
    assert split.labeled[0].image.name == "case0_0000.nii.gz"


def test_multichannel_is_refused(tmp_path):
    _decathlon(tmp_path, channel_suffix=True)
    _write_case(tmp_path / "imagesTr", "case0_0001", label=False)
    with pytest.raises(InputError, match=r"case0_0001\.nii\.gz is channel 1 of a multi-channel"):
        load_dataset(tmp_path)


def test_label_without_image(tmp_path):
    _decathlon(tmp_path)
    _, lab = _write_case(tmp_path / "scratch", "ghost")
    write_volume(lab, tmp_path / "labelsTr" / "ghost.nii.gz")
    with pytest.raises(
        InputError, match=r"1 label\(s\) in .*labelsTr have no image .*ghost\.nii\.gz"
    ):
        load_dataset(tmp_path)


def test_missing_dataset(tmp_path):
    with pytest.raises(InputError, match=r"dataset not found: .*nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_folder_without_layout(tmp_path):
    with pytest.raises(InputError, match=r"is not a dataset folder: expected imagesTr/"):
        load_dataset(tmp_path)


def test_empty_dataset(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(InputError, match=r"no cases found in"):
        load_dataset(tmp_path)


def test_not_a_folder_or_json(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("x")
    with pytest.raises(InputError, match=r"folder or a datalist \.json file"):
        load_dataset(path)


def _datalist(tmp_path: Path, content: dict) -> Path:
    _decathlon(tmp_path / "data")
    path = tmp_path / "data" / "datalist.json"
    path.write_text(json.dumps(content))
    return path


def test_datalist_json(tmp_path):
    path = _datalist(
        tmp_path,
        {
            "training": [{"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}],
            "validation": [{"image": "imagesTr/case1.nii.gz", "label": "labelsTr/case1.nii.gz"}],
            "unlabeled": [{"image": "imagesTr/case2.nii.gz"}, "imagesTr/case3.nii.gz"],
            "test": ["imagesTs/test0.nii.gz"],
        },
    )
    split = load_dataset(path)
    assert split.summary() == "1 labeled, 2 unlabeled, 1 validation, 1 test"
    assert split.labeled[0] == Case(
        "case0",
        (tmp_path / "data/imagesTr/case0.nii.gz").resolve(),
        (tmp_path / "data/labelsTr/case0.nii.gz").resolve(),
    )
    assert split.test[0].label is None


def test_datalist_training_needs_label(tmp_path):
    path = _datalist(tmp_path, {"training": [{"image": "imagesTr/case0.nii.gz"}]})
    with pytest.raises(
        InputError, match=r"'training': entry 'imagesTr/case0\.nii\.gz' has no 'label'"
    ):
        load_dataset(path)


def test_datalist_missing_files(tmp_path):
    path = _datalist(tmp_path, {"unlabeled": ["imagesTr/nope.nii.gz"]})
    with pytest.raises(
        InputError, match=r"1 file\(s\) listed in .*datalist\.json do not exist: .*nope"
    ):
        load_dataset(path)


def test_datalist_image_in_two_roles(tmp_path):
    entry = {"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}
    path = _datalist(tmp_path, {"training": [entry], "test": [entry]})
    with pytest.raises(
        InputError, match=r"case0\.nii\.gz is listed twice \(as labeled and as test\)"
    ):
        load_dataset(path)


def test_datalist_not_json(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("{oops")
    with pytest.raises(InputError, match=r"cannot read datalist .*d\.json"):
        load_dataset(path)


def test_datalist_without_lists(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"name": "x"}')
    with pytest.raises(InputError, match=r"has none of the lists training, unlabeled"):
        load_dataset(path)


# ------------------------------------------------------------------------------ normalisation


def test_normalize_image():
    array = np.random.default_rng(0).normal(50, 7, size=(6, 7, 8))
    out = normalize_image(array)
    assert out.dtype == np.float32 and out.shape == array.shape
    assert abs(float(out.mean())) < 1e-5 and float(out.std()) == pytest.approx(1.0, abs=1e-4)
    constant = normalize_image(np.full((2, 3, 4), 5.0))
    assert np.all(np.isfinite(constant)) and np.all(constant == 0)


# ---------------------------------------------------------------------------- the sampler


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> DatasetSplit:
    root = tmp_path_factory.mktemp("sampler")
    return load_dataset(_decathlon(root, n_labeled=3, n_unlabeled=4, n_test=0))


PATCH = (8, 16, 16)


def test_batch_shapes_and_dtypes(cases):
    sampler = TwoStreamSampler(
        cases.labeled, cases.unlabeled, PATCH, labeled_batch=2, unlabeled_batch=3
    )
    batch = sampler.batch(0)
    assert batch["labeled_image"].shape == (2, 1, *PATCH)
    assert batch["labeled_image"].dtype == torch.float32
    assert batch["labeled_label"].shape == (2, 1, *PATCH)
    assert batch["labeled_label"].dtype == torch.int64
    assert set(batch["labeled_label"].unique().tolist()) <= {0, 1}
    assert batch["unlabeled_image"].shape == (3, 1, *PATCH)
    assert type(batch["labeled_image"]) is torch.Tensor  # not a MONAI MetaTensor


def test_batch_is_a_pure_function_of_seed_iteration_rank(cases):
    first = TwoStreamSampler(cases.labeled, cases.unlabeled, PATCH, seed=3)
    resumed = TwoStreamSampler(
        cases.labeled, cases.unlabeled, PATCH, seed=3
    )  # fresh, as after a restart
    a = first.batch(5)
    first.batch(6)
    for key, value in resumed.batch(5).items():
        assert torch.equal(value, a[key]), key
    assert torch.equal(first.batch(5)["labeled_image"], a["labeled_image"])
    assert not torch.equal(first.batch(6)["labeled_image"], a["labeled_image"])
    other_seed = TwoStreamSampler(cases.labeled, cases.unlabeled, PATCH, seed=4).batch(5)
    assert not torch.equal(other_seed["unlabeled_image"], a["unlabeled_image"])


def test_every_labeled_case_once_per_epoch(cases):
    sampler = TwoStreamSampler(cases.labeled, cases.unlabeled, PATCH, labeled_batch=1)
    seen = [int(sampler.batch(i)["labeled_index"][0]) for i in range(3)]
    assert sorted(seen) == [0, 1, 2]


def test_ranks_split_the_cases(cases):
    ranks = [
        TwoStreamSampler(
            cases.labeled,
            cases.unlabeled,
            PATCH,
            labeled_batch=1,
            unlabeled_batch=2,
            rank=r,
            world_size=2,
        )
        for r in range(2)
    ]
    u0, u1 = (s.batch(0)["unlabeled_index"].tolist() for s in ranks)
    assert not set(u0) & set(u1)  # 4 unlabeled cases, 2 per rank: disjoint in an epoch
    assert not torch.equal(
        ranks[0].batch(0)["unlabeled_image"], ranks[1].batch(0)["unlabeled_image"]
    )


def test_foreground_bias(cases):
    def foreground(ratio: float) -> float:
        sampler = TwoStreamSampler(
            cases.labeled, [], (4, 4, 4), labeled_batch=4, unlabeled_batch=0, foreground_ratio=ratio
        )
        return float(
            np.mean(
                [
                    sampler.batch(i)["labeled_label"].amax(dim=(1, 2, 3, 4)).float().mean()
                    for i in range(4)
                ]
            )
        )

    assert foreground(1.0) == 1.0  # every patch contains foreground
    assert foreground(0.0) < 0.5  # the box is 27 of 5280 voxels


def test_small_images_are_padded(tmp_path):
    shape = (5, 9, 30)  # smaller than the patch in z and y
    for i in range(2):
        _, lab = _write_case(
            tmp_path / "imagesTr",
            f"c{i}",
            shape=shape,
            label=np.pad(np.ones((1, 1, 1), np.uint8), [(2, 2), (4, 4), (3, 26)]),
        )
        write_volume(lab, tmp_path / "labelsTr" / f"c{i}.nii.gz")
    split = load_dataset(tmp_path)
    patch = (8, 16, 16)
    batch = TwoStreamSampler(split.labeled, [], patch, foreground_ratio=1.0).batch(0)
    assert batch["labeled_image"].shape == (2, 1, *patch)
    assert batch["unlabeled_image"].shape == (2, 1, *patch)  # drawn from the labeled images
    assert int(batch["labeled_label"].sum()) == 2  # the single voxel is inside every patch


def test_non_square_patch_keeps_its_shape(cases):
    patch = (8, 12, 16)
    sampler = TwoStreamSampler(cases.labeled, cases.unlabeled, patch)
    for i in range(4):
        assert sampler.batch(i)["labeled_image"].shape[2:] == patch


def test_flips_change_the_patch(cases):
    plain = TwoStreamSampler(
        cases.labeled, cases.unlabeled, PATCH, flip_axes=(), rotate90=False, seed=1
    )
    flipped = TwoStreamSampler(cases.labeled, cases.unlabeled, PATCH, seed=1)
    differs = [
        not torch.equal(plain.batch(i)["unlabeled_image"], flipped.batch(i)["unlabeled_image"])
        for i in range(3)
    ]
    assert any(differs)


def test_sampler_argument_errors(cases):
    with pytest.raises(InputError, match="at least one labeled case"):
        TwoStreamSampler([], cases.unlabeled, PATCH)
    with pytest.raises(ValueError, match="foreground_ratio"):
        TwoStreamSampler(cases.labeled, [], PATCH, foreground_ratio=1.5)
    with pytest.raises(ValueError, match="rank 2 outside"):
        TwoStreamSampler(cases.labeled, [], PATCH, rank=2, world_size=2)


def test_sampler_reports_bad_label(tmp_path):
    _, lab = _write_case(tmp_path / "imagesTr", "bad")
    write_volume(lab.with_array(lab.array * 3), tmp_path / "labelsTr" / "bad.nii.gz")
    split = load_dataset(tmp_path)
    with pytest.raises(InputError, match=r"bad\.nii\.gz has values outside 0\.\.1: found 3"):
        TwoStreamSampler(split.labeled, [], PATCH).preload()
