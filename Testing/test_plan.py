"""The plan step: fingerprint -> spacing, patch, batch; and how ``dkuxnet train`` applies it."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import dkuxnet.device
from dkuxnet.cli import main as cli_main
from dkuxnet.config import ModelConfig
from dkuxnet.errors import InputError
from dkuxnet.io import Volume, read_volume, write_volume
from dkuxnet.plan import (
    MAX_BUDGET,
    Fingerprint,
    Machine,
    fingerprint,
    make_plan,
    plan_patch,
    this_machine,
    voxel_budget,
)
from dkuxnet.synthetic import write_synthetic_dataset

LA = Fingerprint(spacing=(0.625, 0.625, 0.625), shape=(88, 140, 183), cases=80)
LITE = ModelConfig.preset("lite")


def test_la_on_a_two_core_bf16_cpu_gives_the_bundled_recipe() -> None:
    plan = make_plan(LA, Machine("cpu", 2, True), LITE)
    assert plan.target_spacing == (1.25, 1.25, 1.25)
    assert plan.patch_size == (32, 64, 80)
    assert (plan.labeled_batch, plan.unlabeled_batch) == (2, 2)
    assert any("1.25" in r for r in plan.reasons)


def test_la_on_a_large_gpu_trains_at_full_resolution() -> None:
    plan = make_plan(LA, Machine("cuda", 16, False, 80.0), LITE)
    assert plan.target_spacing == (0.625, 0.625, 0.625)
    assert math.prod(plan.patch_size) <= MAX_BUDGET


@pytest.mark.parametrize(
    "machine",
    [Machine("cpu", 2, False), Machine("cpu", 2, True), Machine("cpu", 16, True),
     Machine("cuda", 8, True, 6.0), Machine("cuda", 8, True, 80.0)],
)  # fmt: skip
@pytest.mark.parametrize("preset", ["lite", "paper"])
def test_every_plan_fits_its_budget_and_the_network(machine: Machine, preset: str) -> None:
    model = ModelConfig.preset(preset)
    plan = make_plan(LA, machine, model)
    assert all(p % model.total_stride == 0 and p > 0 for p in plan.patch_size)
    assert math.prod(plan.patch_size) <= plan.budget_voxels == voxel_budget(machine, model)
    assert all(t >= s for t, s in zip(plan.target_spacing, LA.spacing, strict=True))


# Expected values worked out by hand from the rules in dkuxnet/plan.py's docstring, for the LA
# fingerprint (88 x 140 x 183 voxels of 0.625 mm = 2,254,560 voxels); not from running the code.
#   budget: GPU 80*112*112 = 1,003,520 * min(1, GB / 12); CPU 163,840 * cores / 2, halved
#           without bf16, / 4 for the paper network; capped at 1,003,520.
#   spacing factor: the first of 1, 1.5, 2, 3, 4 with 2,254,560 / f^3 <= context * budget
#           (context 8 on a GPU, 2 on a CPU).
#   patch: the image at that spacing rounded up to 16, then the side with the largest
#           patch / image ratio shrunk by 16 until the product fits the budget.
PAPER = ModelConfig.preset("paper")


@pytest.mark.parametrize(
    "machine, model, budget, factor, patch",
    [
        # 6 GB: half the full budget; factor 1 (2.25 M <= 8 * 501,760); (96, 144, 192) shrinks
        # z, x, y, x, y, z, x, y, x, z, x, y to 48 x 80 x 112 = 430,080
        (Machine("cuda", 8, True, 6.0), LITE, 501_760, 1.0, (48, 80, 112)),
        # 24 and 80 GB: the cap; (96, 144, 192) -> 64 x 96 x 144 = 884,736
        (Machine("cuda", 8, True, 24.0), LITE, 1_003_520, 1.0, (64, 96, 144)),
        (Machine("cuda", 2, False, 80.0), LITE, 1_003_520, 1.0, (64, 96, 144)),
        # 9 GB: three quarters of the full budget
        (Machine("cuda", 8, True, 9.0), LITE, 752_640, None, None),
        # 2 cores, bf16: the bundled recipe (factor 2: 281,820 <= 327,680)
        (Machine("cpu", 2, True), LITE, 163_840, 2.0, (32, 64, 80)),
        # 2 cores, fp32: 81,920; factor 3 (83,502 <= 163,840); (32, 48, 64) -> z 16
        (Machine("cpu", 2, False), LITE, 81_920, 3.0, (16, 48, 64)),
        # 16 cores, bf16: 8 x 163,840 = 1,310,720, capped; factor 1.5 (668,018 <= 2,007,040);
        # 58.7 x 93.3 x 122 rounds up to 64 x 96 x 128 = 786,432, within the budget
        (Machine("cpu", 16, True), LITE, 1_003_520, 1.5, (64, 96, 128)),
        # 16 cores, fp32: 655,360; factor 1.5; 64 x 96 x 128 -> z 48 (589,824)
        (Machine("cpu", 16, False), LITE, 655_360, 1.5, (48, 96, 128)),
        # the paper network on 2 cores, bf16: 40,960; factor 4 (35,227 <= 81,920);
        # 22 x 35 x 45.75 rounds up to 32 x 48 x 48 = 73,728 -> z 16 (36,864)
        (Machine("cpu", 2, True), PAPER, 40_960, 4.0, (16, 48, 48)),
        # the paper network on a 6 GB GPU: 125,440; factor 1.5 (668,018 <= 1,003,520);
        # 64 x 96 x 128 -> 32 x 48 x 80 = 122,880
        (Machine("cuda", 8, True, 6.0), PAPER, 125_440, 1.5, (32, 48, 80)),
    ],
    ids=["gpu6", "gpu24", "gpu80", "gpu9", "cpu2-bf16", "cpu2-fp32", "cpu16-bf16", "cpu16-fp32",
         "paper-cpu2", "paper-gpu6"],
)  # fmt: skip
def test_the_plan_scales_with_the_machine_as_documented(
    machine: Machine,
    model: ModelConfig,
    budget: int,
    factor: float | None,
    patch: tuple[int, int, int] | None,
) -> None:
    assert voxel_budget(machine, model) == budget
    if factor is None:
        return
    plan = make_plan(LA, machine, model)
    assert plan.budget_voxels == budget
    assert plan.target_spacing == (0.625 * factor,) * 3
    assert plan.patch_size == patch


def test_budgets_order_as_the_machines() -> None:
    slow, fast = Machine("cpu", 2, False), Machine("cpu", 2, True)
    assert voxel_budget(slow, LITE) < voxel_budget(fast, LITE)
    assert voxel_budget(fast, ModelConfig.preset("paper")) < voxel_budget(fast, LITE)
    assert voxel_budget(Machine("cuda", 2, False, 80.0), LITE) == MAX_BUDGET


def test_patch_shrinks_the_side_that_covers_most_of_its_axis() -> None:
    # a thin slab image: z is covered fully first, x and y give way
    assert plan_patch((16, 200, 200), 16 * 64 * 64, 16) == (16, 64, 64)
    # an image smaller than the budget keeps its own (rounded-up) shape
    assert plan_patch((20, 30, 40), 10**7, 16) == (32, 32, 48)


def test_fingerprint_reads_the_dataset(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, n_labeled=2, n_unlabeled=1, n_test=0, shape=(24, 40, 48))
    images = sorted((tmp_path / "imagesTr").iterdir())
    fp = fingerprint(images)
    assert fp.cases == 3 and fp.shape == (24, 40, 48)
    assert all(s > 0 for s in fp.spacing)


def test_this_machine_on_cpu() -> None:
    m = this_machine("cpu")
    assert m.device == "cpu" and m.cpu_cores >= 1 and m.gpu_memory_gb is None


def _train(tmp_path: Path, *extra: str) -> dict:
    data = tmp_path / "data"
    if not data.exists():
        write_synthetic_dataset(data, n_labeled=2, n_unlabeled=1, n_test=0, shape=(24, 40, 48))
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    tiny = ["model.feature_sizes=[8,16,24,32]", "model.hidden_size=24", "model.num_queries=6",
            "model.query_dim=16", "model.embed_dim=8", "model.kmax_heads=2",
            "model.kmax_ffn_dim=16", "model.kernel_size=3", "training.iterations=1",
            "training.val_every=1000"]  # fmt: skip
    args = ["train", "--data", str(data), "--out", str(out), "--device", "cpu", "--quiet"]
    for s in tiny:
        args += ["--set", s]
    assert cli_main(args + list(extra)) == 0
    return json.loads((out / "config.json").read_text())


@pytest.mark.slow
def test_train_writes_the_plan_into_the_run_config_and_set_wins(tmp_path: Path) -> None:
    planned = _train(tmp_path)
    # the synthetic phantoms are small: the plan keeps their spacing, patch <= image
    assert planned["data"]["patch_size"] == [32, 48, 48]
    assert planned["data"]["target_spacing"] != []
    chosen = _train(tmp_path, "--set", "data.patch_size=[16,32,32]")
    assert chosen["data"]["patch_size"] == [16, 32, 32]  # the user's value wins
    assert chosen["data"]["target_spacing"] == planned["data"]["target_spacing"]
    # one network on one patch: the preset's 80 x 112 x 112 patch is what is checked, and four
    # of them through two networks made this the slowest test of the suite
    one_patch = ("--set", "training.mode=supervised", "--set", "data.labeled_batch=1")
    preset = _train(tmp_path, "--no-plan", *one_patch)
    assert preset["data"]["patch_size"] == [80, 112, 112] and preset["data"]["target_spacing"] == []


def test_busy_cpu_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from dkuxnet.commands import estimate

    monkeypatch.setattr(estimate.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (3.4, 3.0, 2.0))
    note = estimate.busy_cpu_note("cpu")
    assert note is not None and "load 3.4 on 2 cores" in note and "longer" in note
    assert estimate.busy_cpu_note("cuda") is None
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (0.4, 0.3, 0.2))
    assert estimate.busy_cpu_note("cpu") is None


def test_format_duration() -> None:
    from dkuxnet.reports import format_duration

    assert format_duration(30) == "under a minute"
    assert format_duration(14 * 60 + 10) == "about 14 min"
    assert format_duration(80 * 60) == "about 1 h 20 min"


@pytest.mark.slow
def test_estimate_measures_the_recipe_of_a_fine_tune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny import save_random_checkpoint, tiny_model_config

    from dkuxnet.config import TrainConfig

    cfg = TrainConfig(model=tiny_model_config())
    cfg = cfg.replace(data=cfg.data.replace(patch_size=(16, 32, 32)))
    model = save_random_checkpoint(tmp_path / "m.pt", cfg, networks=1)
    code = cli_main(["estimate", "--init", str(model), "--iterations", "40", "--json",
                     "--device", "cpu", "--repeats", "1"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # a fine-tune's own mode (run_config.FINE_TUNE_MODE), not the paper's dual default
    assert result["mode"] == "pseudo" and result["patch_size"] == [16, 32, 32]
    assert result["s_per_iteration"] > 0
    assert result["total_s"] == pytest.approx(40 * result["s_per_iteration"])
    assert not list(tmp_path.glob("run*"))  # nothing written


# ---------------------------------------------------------------------------------------------
# Mutation testing of plan.py (docs/mutation.md): every expected value below is worked out by
# hand from the rules in the module docstring, not read from the code's output.


def test_the_reasons_say_what_was_planned() -> None:
    # LA on 2 bf16 cores: 183 / 2 = 91.5 rounds (half to even) to 92
    assert make_plan(LA, Machine("cpu", 2, True), LITE).reasons == [
        "dataset: 80 images, median spacing 0.625 x 0.625 x 0.625 mm (x, y, z), median size "
        "88 x 140 x 183 (z, y, x)",
        "machine: CPU, 2 cores, native bf16 -> 163,840 voxels per patch",
        "spacing x2 -> 1.25 x 1.25 x 1.25 mm (median image 44 x 70 x 92 voxels there)",
        "patch 32 x 64 x 80 (z, y, x), batch 2 labeled + 2 unlabeled",
    ]
    # an anisotropic dataset on a 24 GB GPU: 40 x 200 x 180 = 1.44 M <= 8 x 1,003,520, factor
    # 1; (48, 208, 192) shrinks z (ratio 1.2), x (1.067), y (1.04), x to 32 x 192 x 160
    fp = Fingerprint(spacing=(0.7, 0.8, 2.5), shape=(40, 200, 180), cases=3)
    plan = make_plan(fp, Machine("cuda", 8, True, 24.0), LITE)
    assert plan.target_spacing == (0.7, 0.8, 2.5)  # x, y, z each kept on its own axis
    assert plan.patch_size == (32, 192, 160)
    assert plan.reasons == [
        "dataset: 3 images, median spacing 0.7 x 0.8 x 2.5 mm (x, y, z), median size "
        "40 x 200 x 180 (z, y, x)",
        "machine: GPU with 24 GB -> 1,003,520 voxels per patch",
        "spacing x1 -> 0.7 x 0.8 x 2.5 mm (median image 40 x 200 x 180 voxels there)",
        "patch 32 x 192 x 160 (z, y, x), batch 2 labeled + 2 unlabeled",
    ]
    assert Machine("cpu", 16, False).describe() == "CPU, 16 cores, fp32 only"


@pytest.mark.parametrize(
    "machine, shape, factor",
    [
        # exactly twice the budget of 2 bf16 cores (2 x 163,840 = 32 * 80 * 128): "at most"
        # twice, so full resolution
        (Machine("cpu", 2, True), (32, 80, 128), 1.0),
        # a 6 GB GPU (budget 501,760): 4.2 M voxels is over 8 budgets (4,014,080), under 9
        (Machine("cuda", 8, True, 6.0), (100, 200, 210), 1.5),
        # 27 M voxels on 2 bf16 cores: even / 4^3 (421,875) is over 327,680: the coarsest, 4
        (Machine("cpu", 2, True), (300, 300, 300), 4.0),
    ],
    ids=["cpu-exactly-twice", "gpu-over-eight", "none-fits"],
)
def test_the_spacing_factor_at_its_boundaries(
    machine: Machine, shape: tuple[int, int, int], factor: float
) -> None:
    fp = Fingerprint(spacing=(1.0, 1.0, 1.0), shape=shape, cases=1)
    assert make_plan(fp, machine, LITE).target_spacing == (factor,) * 3


def test_planned_spacings_are_rounded_to_four_decimals() -> None:
    # 0.703125 mm (180 mm over 256 voxels) x 1.5 = 1.0546875 -> 1.0547; 2.5 x 1.5 = 3.75.
    # 16 bf16 cores: budget 1,003,520; 2.25 M voxels > 2 budgets, / 1.5^3 = 666,667 within
    fp = Fingerprint(spacing=(0.703125, 0.703125, 2.5), shape=(100, 150, 150), cases=1)
    plan = make_plan(fp, Machine("cpu", 16, True), LITE)
    assert plan.target_spacing == (1.0547, 1.0547, 3.75)


def test_budget_edges() -> None:
    # a GPU whose memory is unknown (or 0) gets the floor: one stride cube, 16^3
    assert voxel_budget(Machine("cuda", 8, True, None), LITE) == 4096
    assert voxel_budget(Machine("cuda", 8, True, 0.0), LITE) == 4096
    # the paper network on a large GPU: a quarter of the full budget, 1,003,520 / 4
    assert voxel_budget(Machine("cuda", 8, True, 80.0), PAPER) == 250_880
    # wider than lite (16) pays the paper network's rate: 163,840 / 4
    wider = ModelConfig.preset("lite", feature_sizes=(17, 32, 64, 128))
    assert voxel_budget(Machine("cpu", 2, True), wider) == 40_960
    assert voxel_budget(Machine("cpu", 2, True), LITE) == 163_840


def test_patch_never_goes_below_one_stride() -> None:
    # a budget smaller than one 16^3 cube: the smallest patch the network takes
    assert plan_patch((8, 8, 8), 1000, 16) == (16, 16, 16)
    assert plan_patch((8, 40, 8), 1000, 16) == (16, 16, 16)


def test_plan_as_overrides() -> None:
    plan = make_plan(LA, Machine("cpu", 2, True), LITE)
    assert plan.as_overrides() == {
        "data.target_spacing": [1.25, 1.25, 1.25],
        "data.patch_size": [32, 64, 80],
        "data.labeled_batch": 2,
        "data.unlabeled_batch": 2,
    }


def _images(folder: Path) -> list[Path]:
    """Three images: spacings (x, y, z) and sizes (z, y, x) whose medians are known."""
    cases = [((0.5, 0.7, 2.0), (6, 8, 10)), ((0.9, 1.0, 3.0), (12, 16, 20)),
             ((0.6, 0.8, 2.5), (7, 9, 11))]  # fmt: skip
    return [
        write_volume(Volume(np.zeros(size, np.int16), spacing), folder / f"case{i}.nrrd")
        for i, (spacing, size) in enumerate(cases)
    ]


def test_fingerprint_takes_the_median_of_each_axis(tmp_path: Path) -> None:
    fp = fingerprint(_images(tmp_path))
    assert fp == Fingerprint(spacing=(0.6, 0.8, 2.5), shape=(7, 9, 11), cases=3)


def test_fingerprint_reads_headers_only(tmp_path: Path) -> None:
    path = _images(tmp_path)[0]
    text = path.read_bytes()
    path.write_bytes(text[: text.index(b"\n\n") + 2] + b"\x1f\x8b")  # the data cut off
    with pytest.raises(InputError):
        read_volume(path)  # the file as a whole no longer reads ...
    assert fingerprint([path]) == Fingerprint((0.5, 0.7, 2.0), (6, 8, 10), 1)  # its header does


def test_fingerprint_reads_the_whole_file_when_the_header_will_not_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(self: object) -> None:
        raise RuntimeError("no header reader for this format")

    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation", unreadable)
    fp = fingerprint(_images(tmp_path))
    assert fp == Fingerprint(spacing=(0.6, 0.8, 2.5), shape=(7, 9, 11), cases=3)


def test_fingerprint_refuses_no_images_and_2d_images(tmp_path: Path) -> None:
    with pytest.raises(InputError) as empty:
        fingerprint([])
    assert str(empty.value) == "cannot plan without images"
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(InputError, match="flat.nrrd: expected a 3D image, got 2 dimension"):
        fingerprint([flat])


def test_this_machine_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # the default is "auto": CUDA where there is one
    assert this_machine().device == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(dkuxnet.device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert this_machine("cpu") == Machine("cpu", 1, True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert this_machine("cpu") == Machine("cpu", 3, True)

    # a GPU of 24e9 bytes, without touching CUDA
    gpu = torch.device("cuda", 0)

    def properties(device: torch.device) -> types.SimpleNamespace:
        assert device == gpu
        return types.SimpleNamespace(total_memory=24_000_000_000)

    monkeypatch.setattr(dkuxnet.device, "resolve_device", lambda name: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    assert this_machine("cuda") == Machine("cuda", 3, True, 24.0)
