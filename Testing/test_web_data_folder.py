"""DKUXNetSegmentWeb.data_folder: the page reads and writes only inside the data folder, and an
upload that is not a readable 3D image is refused with a message that says so."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dkuxnet.errors import InputError
from dkuxnet.io import Volume, read_volume, write_volume
from DKUXNetSegmentWeb import data_folder
from DKUXNetSegmentWeb.data_folder import RUNS, SEGMENTATIONS, UPLOADS, DataFolder


def small_volume(shape: tuple[int, int, int] = (4, 5, 6)) -> Volume:
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return Volume(array=array, spacing=(1.0, 1.5, 2.0), origin=(3.0, -4.0, 5.0))


@pytest.fixture()
def data(tmp_path: Path) -> DataFolder:
    root = tmp_path / "data"
    write_volume(small_volume(), root / "case.nrrd")
    write_volume(small_volume(), root / "sub" / "other.nii.gz")
    (root / "notes.txt").write_text("not an image")
    return DataFolder(root)


def test_files_inside_resolve(data: DataFolder) -> None:
    assert data.resolve("case.nrrd") == data.root / "case.nrrd"
    assert data.resolve("sub/other.nii.gz") == data.root / "sub" / "other.nii.gz"
    assert data.resolve(str(data.root / "case.nrrd")) == data.root / "case.nrrd"  # absolute, inside
    assert data.resolve("sub/../case.nrrd") == data.root / "case.nrrd"  # stays inside


@pytest.mark.parametrize(
    "path",
    ["../secret.nrrd", "sub/../../secret.nrrd", "/etc/passwd", "..", "../data/../secret.nrrd"],
)
def test_paths_outside_the_data_folder_are_refused(data: DataFolder, path: str) -> None:
    (data.root.parent / "secret.nrrd").write_bytes(b"x")
    with pytest.raises(InputError, match="outside the data folder"):
        data.resolve(path)


def test_a_sibling_folder_that_shares_the_roots_name_is_outside(data: DataFolder) -> None:
    """``data-private`` starts with ``data`` as a string but is not inside ``data``."""
    assert data.root.name == "data"
    write_volume(small_volume(), data.root.parent / "data-private" / "x.nrrd")
    write_volume(small_volume(), data.root.parent / "data2.nrrd")
    for path in ("../data-private/x.nrrd", str(data.root.parent / "data-private" / "x.nrrd"),
                 "../data2.nrrd", "sub/../../data-private/x.nrrd"):  # fmt: skip
        with pytest.raises(InputError, match="outside the data folder"):
            data.resolve(path)
    try:
        os.symlink(data.root.parent / "data-private" / "x.nrrd", data.root / "private.nrrd")
    except OSError:
        return  # this file system cannot make symbolic links; the paths above were checked
    with pytest.raises(InputError, match="outside the data folder"):
        data.resolve("private.nrrd")
    assert "private.nrrd" not in data.volumes()


def test_a_link_that_points_out_is_refused_and_not_listed(data: DataFolder) -> None:
    outside = data.root.parent / "outside.nrrd"
    write_volume(small_volume(), outside)
    link = data.root / "link.nrrd"
    try:
        os.symlink(outside, link)
    except OSError:
        pytest.skip("this file system cannot make symbolic links")
    with pytest.raises(InputError, match="outside the data folder"):
        data.resolve("link.nrrd")
    # not listed, and the files after it in the folder still are
    assert data.volumes() == ["case.nrrd", "sub/other.nii.gz"]


def test_missing_and_empty_choices(data: DataFolder) -> None:
    with pytest.raises(InputError, match="not a file"):
        data.resolve("nope.nrrd")
    with pytest.raises(InputError, match="not a file"):
        data.resolve("sub")
    for nothing in ("", "  ", None):
        with pytest.raises(InputError, match="choose a file"):
            data.resolve(nothing)  # type: ignore[arg-type]


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data folder not found"):
        DataFolder(tmp_path / "missing")


def test_listing_shows_images_only_and_skips_runs_and_hidden(data: DataFolder) -> None:
    write_volume(small_volume(), data.root / RUNS / "finetune-1" / "data" / "x.nrrd")
    write_volume(small_volume(), data.root / ".cache" / "y.nrrd")
    assert data.volumes() == ["case.nrrd", "sub/other.nii.gz"]


def test_a_good_upload_is_kept_under_uploads(data: DataFolder, tmp_path: Path) -> None:
    source = write_volume(small_volume(), tmp_path / "scan.nrrd")
    path = data.save_upload("C:\\Users\\me\\scan.nrrd", source.read_bytes())
    assert path == data.root / UPLOADS / "scan.nrrd"
    assert read_volume(path).same_geometry(small_volume())
    again = data.save_upload("scan.nrrd", source.read_bytes())  # a second one: a new name
    assert again == data.root / UPLOADS / "scan_1.nrrd"
    assert data.relative(again) == "uploads/scan_1.nrrd"


def test_an_upload_of_garbage_gets_a_clear_message_and_is_not_kept(data: DataFolder) -> None:
    with pytest.raises(InputError, match=r"'notes\.nrrd' is not a readable 3D image") as info:
        data.save_upload("notes.nrrd", b"these are my notes, not an image\n" * 10)
    assert str(data.root) not in str(info.value)  # the server's paths stay on the server
    assert not (data.root / UPLOADS / "notes.nrrd").exists()


def test_an_upload_of_a_2d_image_says_3d_is_needed(data: DataFolder, tmp_path: Path) -> None:
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(InputError, match=r"not a readable 3D image.*2D.*a 3D volume is needed"):
        data.save_upload("flat.nrrd", flat.read_bytes())
    assert list((data.root / UPLOADS).iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("photo.png", b"\x89PNG....", "not a 3D image file this page can read"),
        ("header.nhdr", b"NRRD0004\n", "not a 3D image file this page can read"),
        ("empty.nrrd", b"", "is empty"),
    ],
)
def test_uploads_refused_before_reading(
    data: DataFolder, name: str, content: bytes, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        data.save_upload(name, content)
    assert not (data.root / UPLOADS).exists() or not list((data.root / UPLOADS).iterdir())


def test_new_path_numbers_taken_names(data: DataFolder) -> None:
    first = data.new_path(SEGMENTATIONS, "case_segmentation.nrrd")
    first.write_bytes(b"x")
    assert data.new_path(SEGMENTATIONS, "case_segmentation.nrrd").name == (
        "case_segmentation_1.nrrd"
    )
    assert data.new_path(SEGMENTATIONS, "b.nii.gz").name == "b.nii.gz"


# ---------------------------------------------------------------------------------------------
# Mutation testing of data_folder.py (docs/mutation.md)


def test_messages_name_what_is_wrong(data: DataFolder, tmp_path: Path) -> None:
    with pytest.raises(InputError) as nothing:
        data.resolve("")
    assert str(nothing.value) == "choose a file from the data folder"
    with pytest.raises(InputError) as png:
        data.save_upload("photo.png", b"\x89PNG")
    assert str(png.value) == (
        "'photo.png' is not a 3D image file this page can read; upload one of "
        ".nrrd, .nii.gz, .nii, .mha"
    )
    # the reader's own message, about an *upload*, with the browser's name for the file
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(InputError) as flat_error:
        data.save_upload("my flat.nrrd", flat.read_bytes())
    assert "upload file 'my flat.nrrd' is 2D" in str(flat_error.value)


def test_a_stored_upload_is_logged(
    data: DataFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = write_volume(small_volume(), tmp_path / "scan.nrrd").read_bytes()
    with caplog.at_level(logging.INFO, logger="DKUXNetSegmentWeb.data_folder"):
        path = data.save_upload("scan.nrrd", content)
    assert caplog.messages == [f"stored upload {path} ({len(content)} bytes)"]


def test_the_listing_stops_at_its_limit(
    data: DataFolder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_volume(small_volume(), data.root / "zz.nrrd")  # walked last: case, notes, sub/, zz
    monkeypatch.setattr(data_folder, "MAX_LISTED", 3)
    assert data.volumes() == ["case.nrrd", "sub/other.nii.gz", "zz.nrrd"]  # all 3: no warning
    assert caplog.messages == []
    monkeypatch.setattr(data_folder, "MAX_LISTED", 2)
    with caplog.at_level(logging.WARNING, logger="DKUXNetSegmentWeb.data_folder"):
        assert data.volumes() == ["case.nrrd", "sub/other.nii.gz"]
    assert caplog.messages == [f"listing only the first 2 images of {data.root}"]


def test_upload_names_are_cleaned(data: DataFolder, tmp_path: Path) -> None:
    content = write_volume(small_volume(), tmp_path / "scan.nrrd").read_bytes()
    # unusual characters: each run becomes one "_"
    assert data.save_upload("scan (1)#.nrrd", content).name == "scan _1_.nrrd"
    # a leading dot would hide the file from the listing; a leading X is a letter like any
    assert data.save_upload("..hidden.nrrd", content).name == "hidden.nrrd"
    assert data.save_upload("X-ray.nrrd", content).name == "X-ray.nrrd"
    assert data.volumes() == ["case.nrrd", "sub/other.nii.gz", "uploads/X-ray.nrrd",
                              "uploads/hidden.nrrd", "uploads/scan _1_.nrrd"]  # fmt: skip


def test_new_path_numbering_keeps_the_whole_suffix(data: DataFolder) -> None:
    for name, numbered in [("b.nii.gz", ["b_1.nii.gz", "b_2.nii.gz"]),
                           ("notes.txt", ["notes_1.txt", "notes_2.txt"])]:  # fmt: skip
        data.new_path(SEGMENTATIONS, name).write_bytes(b"x")
        for expected in numbered:
            path = data.new_path(SEGMENTATIONS, name)
            assert path.name == expected
            path.write_bytes(b"x")
    # the folders it needs are made, however deep
    assert data.new_path("exports/2026/run", "a.nrrd") == data.root / "exports/2026/run/a.nrrd"


def test_a_link_to_a_file_inside_is_listed_as_that_file(data: DataFolder) -> None:
    """A link may show a file from a folder the listing skips (here a fine-tuning run's)."""
    inside = write_volume(small_volume(), data.root / RUNS / "finetune-1" / "data" / "x.nrrd")
    try:
        os.symlink(inside, data.root / "latest.nrrd")
    except OSError:
        pytest.skip("this file system cannot make symbolic links")
    assert data.volumes() == ["case.nrrd", f"{RUNS}/finetune-1/data/x.nrrd", "sub/other.nii.gz"]
    assert data.resolve("latest.nrrd") == inside
