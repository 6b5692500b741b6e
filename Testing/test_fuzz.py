"""Fuzzing with hypothesis: the config loader and the image reader raise only our own errors.

Whatever JSON-ish value, ``--set`` string, config file or image file a user hands us, the
outcome is either a valid object or a :class:`~dkuxnet.errors.DKUXNetError` subclass with a
message (which the CLI prints as one line), never another exception.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dkuxnet.config import TrainConfig
from dkuxnet.errors import ConfigError, InputError
from dkuxnet.io import Volume, read_volume

FUZZ = settings(  # the common profile; each test sets its example count
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure here is reproducible
)

# ------------------------------------------------------------------------------------ config
SECTIONS = [f.name for f in dataclasses.fields(TrainConfig)]
FIELDS = sorted({f.name for s in SECTIONS for f in dataclasses.fields(getattr(TrainConfig(), s))})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["dual", "supervised", "cps", "mse", "lite", "both", "gaussian", "poly"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
keys = st.sampled_from(FIELDS) | st.text(max_size=10)
sections = st.dictionaries(keys, json_values, max_size=4) | json_values
configs = st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8), sections, max_size=4)


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


@settings(FUZZ, max_examples=300)
@given(data=configs)
@example(data={"model": {"kmax_heads": 0}})
@example(data={"training": {"lr": float("nan")}})
@example(data={"training": {"confidence": float("inf")}})
@example(data={"data": {"patch_size": [16, "32", 32]}})
@example(data={"model": {"feature_sizes": [], "depths": []}})
@example(data=[])  # type: ignore[arg-type]
def test_config_from_dict_accepts_or_raises_config_error(data: dict[str, Any]) -> None:
    try:
        config = TrainConfig.from_dict(data)
    except ConfigError as exc:
        assert str(exc)
        return
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert _finite_numbers(config.to_dict())  # NaN/inf never slip past the range checks


assignments = st.builds(
    lambda section, key, value: f"{section}.{key}={value}",
    st.sampled_from(SECTIONS) | st.text(max_size=6),
    keys,
    json_values.map(json.dumps) | st.text(max_size=12),
) | st.text(max_size=20)


@settings(FUZZ, max_examples=200)
@given(overrides=st.lists(assignments, max_size=3))
@example(overrides=["training.iterations=" + "9" * 5000])  # too long for int(): kept as text
@example(overrides=["model.kmax_heads=0"])
@example(overrides=["training.lr=NaN"])
@example(overrides=["model.depths=" + "[" * 10_000])
@example(overrides=["data.patch_size=[16, 32]"])
def test_config_overrides_accept_or_raise_config_error(overrides: list[str]) -> None:
    try:
        config = TrainConfig.preset("lite").with_overrides(overrides)
    except ConfigError as exc:
        assert str(exc)
        return
    assert _finite_numbers(config.to_dict())


@settings(FUZZ, max_examples=60)
@given(
    content=st.binary(max_size=200)
    | configs.map(lambda d: json.dumps(d).encode())
    | st.sampled_from([b"\xff\xfe{}", b"[" * 10_000, b'{"training": {"iterations": ' + b"9" * 5000 + b"}}"])
)  # fmt: skip
def test_config_file_loads_or_raises_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    try:
        TrainConfig.load(path)
    except ConfigError as exc:
        assert str(exc)


# ------------------------------------------------------------------------------------ images
def _read_only_our_errors(path: Path) -> None:
    try:
        volume = read_volume(path)
    except InputError as exc:
        assert path.name in str(exc)
        event("refused with InputError")  # see pytest --hypothesis-show-statistics
        return
    event("read")
    assert isinstance(volume, Volume) and volume.array.ndim == 3
    assert all(math.isfinite(s) and s > 0 for s in volume.spacing)


@settings(FUZZ, max_examples=80)
@given(
    suffix=st.sampled_from([".nrrd", ".nii.gz", ".nii", ".mha", ".nhdr"]),
    content=st.binary(max_size=600),
)
@example(suffix=".nrrd", content=b"")
@example(suffix=".nii.gz", content=gzip.compress(b"\x00" * 348))
@example(suffix=".nrrd", content=b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\n\n")
def test_random_bytes_raise_input_error(tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(content)
    _read_only_our_errors(path)


NRRD_FIELDS: dict[str, str] = {
    "type": "short",
    "dimension": "3",
    "space": "left-posterior-superior",
    "sizes": "4 3 2",
    "space directions": "(1,0,0) (0,1,0) (0,0,1)",
    "kinds": "domain domain domain",
    "endian": "little",
    "encoding": "raw",
    "space origin": "(0,0,0)",
}
nrrd_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n\r", codec="ascii"), max_size=30),
    st.lists(st.integers(-3, 40), min_size=1, max_size=5).map(lambda v: " ".join(map(str, v))),
    st.lists(
        st.tuples(*[st.floats(allow_nan=True, allow_infinity=True, width=32)] * 3).map(
            lambda t: "(" + ",".join(repr(v) for v in t) + ")"
        ),
        min_size=1,
        max_size=4,
    ).map(" ".join),
    st.sampled_from(["none", "gzip", "ascii", "float", "uchar", "big", "4", "2", "RGB-color"]),
)


@settings(FUZZ, max_examples=250)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(NRRD_FIELDS)), nrrd_values, max_size=3),
    dropped=st.sets(st.sampled_from(sorted(NRRD_FIELDS)), max_size=2),
    data_bytes=st.integers(0, 60),
)
@example(changes={"space directions": "(0,0,0) (0,1,0) (0,0,1)"}, dropped=set(), data_bytes=48)
@example(changes={"space directions": "(nan,0,0) (0,1,0) (0,0,1)"}, dropped=set(), data_bytes=48)
@example(changes={"sizes": "4 3 2 2", "dimension": "4"}, dropped=set(), data_bytes=48)
def test_mutated_nrrd_header_reads_or_raises_input_error(
    tmp_path: Path, changes: dict[str, str], dropped: set[str], data_bytes: int
) -> None:
    fields = {k: v for k, v in {**NRRD_FIELDS, **changes}.items() if k not in dropped}
    header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
    path = tmp_path / "mutated.nrrd"
    path.write_bytes(header.encode("ascii") + bytes(range(data_bytes)))
    _read_only_our_errors(path)


@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("nifti") / "valid.nii"
    image = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    image.SetSpacing((0.5, 1.0, 2.0))
    sitk.WriteImage(image, str(path), useCompression=False)
    return path.read_bytes()


@settings(FUZZ, max_examples=250)
@given(
    edits=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=6),
    keep=st.integers(0, 400),
    compress=st.booleans(),
)
@example(edits=[(40, 4)], keep=400, compress=False)  # dim[0] = 4
@example(edits=[(80, 0), (81, 0), (82, 0), (83, 0)], keep=400, compress=True)  # pixdim[1] = 0
@example(edits=[(84, 0), (85, 0), (86, 192), (87, 127)], keep=400, compress=False)  # NaN pixdim
def test_mutated_nifti_header_reads_or_raises_input_error(
    tmp_path: Path, nifti_bytes: bytes, edits: list[tuple[int, int]], keep: int, compress: bool
) -> None:
    data = bytearray(nifti_bytes)
    for offset, value in edits:
        data[offset] = value
    content = bytes(data[: len(data) - 48 + keep])  # 48 data bytes; cut some or keep all
    path = tmp_path / ("mutated.nii.gz" if compress else "mutated.nii")
    path.write_bytes(gzip.compress(content) if compress else content)
    _read_only_our_errors(path)
