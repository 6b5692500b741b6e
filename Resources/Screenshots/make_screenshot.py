"""Render the extension's catalogue screenshot: the panel, and a phantom segmented by the module logic.

The Slicer application cannot run where this project is built, so this is not a capture of the
Slicer window. It is what the module does, drawn offscreen:

* a synthetic phantom is loaded into a real MRML scene (the ``slicer-core`` package) and
  segmented by ``DKUXNetSegmentLib.logic`` in a background ``dkuxnet predict`` process, as the
  Segment button does; the resulting segmentation node is drawn as Slicer shows it (a slice with
  the segment, its 3D closed surface), with the phantom's true atrium outlined in the slice, and
  the Dice against it is measured on the volume's grid;
* beside the views, the module's panel (its ``.ui`` file) is rendered by
  ``scripts/render_panel.py`` with Qt stand-ins for Slicer's widgets, filled with what this run
  chose and reported (volume, model, device, the task's status line).

Two pairs of model and data:

* ``--demo DEMO_OUT`` (the catalogue picture): the model that ``dkuxnet demo --out DEMO_OUT``
  trains on synthetic phantoms (``DEMO_OUT/run``, chosen as a *Training run folder*), on the
  demo's first held-out test phantom (``DEMO_OUT/data/imagesTs``), which it never trained on;
* without it: the bundled model (trained on real LA MRI) on the module self-test's 64^3 phantom,
  which it undersegments; kept to show that gap.

Reproduce the catalogue picture (``dkuxnet demo`` trains for about 11 minutes on a 2-core CPU;
PySide6 lives in a venv of its own, as it is not a dependency of the project)::

    .venv/bin/dkuxnet demo --out demo_out
    python3 -m venv /work/uivenv && /work/uivenv/bin/pip install PySide6
    .venv/bin/python Resources/Screenshots/make_screenshot.py --demo demo_out \\
        --qt-python /work/uivenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from vtk.util.numpy_support import vtk_to_numpy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DKUXNetSegment"))

from dkuxnet.device import DEVICE_LABELS  # noqa: E402
from dkuxnet.io import Volume, read_label, read_volume, strip_volume_suffix  # noqa: E402
from dkuxnet.jobs import JobState  # noqa: E402
from dkuxnet.synthetic import make_phantom  # noqa: E402
from DKUXNetSegmentLib import slicer_bridge  # noqa: E402
from DKUXNetSegmentLib.logic import DKUXNetLogic, resolve_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "DKUXNetSegment-phantom.png"
RENDER_PANEL = ROOT / "scripts" / "render_panel.py"
SELF_TEST_SHAPE = (64, 64, 64)  # DKUXNetSegmentTest.PHANTOM_SHAPE and its seed
SELF_TEST_SEED = 7
DEVICE = "cpu"
SEGMENT_TIMEOUT_S = 3600  # seconds; minutes on an idle 2-core CPU, far longer on a busy one
VIEW = 520  # pixels, each of the two views
VIEW_BAR = 22  # Slicer's coloured bar above each view
SLICE_BAR = (240, 90, 90)  # Slicer's red slice view
THREE_D_BAR = (130, 130, 190)  # Slicer's 3D view
COLOR = tuple(int(255 * c) for c in slicer_bridge.LEFT_ATRIUM_COLOR)
TRUTH_COLOR = (255, 215, 0)  # yellow: reads on bright blood and on the red segment
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
MAX_COLORS = 256  # the PNG is stored with a palette: a third of the size, no visible loss


@dataclass(frozen=True)
class Subject:
    """What is segmented, by which model, and how the picture describes them."""

    image: Volume
    label: Volume
    name: str
    model_source: str  # logic.MODEL_SOURCES
    model_path: str  # as the panel's path field shows it ("" for the bundled model)
    data_words: str
    model_words: str


def demo_subject(demo: Path) -> Subject:
    """The demo's model on the demo's first held-out test phantom."""
    images = sorted((demo / "data" / "imagesTs").iterdir())
    if not images:
        raise SystemExit(f"{demo}/data/imagesTs is empty; run `dkuxnet demo --out {demo}` first")
    image_path = images[0]
    image = read_volume(image_path)
    label = read_label(demo / "data" / "labelsTs" / image_path.name, reference=image)
    name = Path(strip_volume_suffix(image_path)).name
    shape = " x ".join(str(n) for n in image.array.shape)
    return Subject(
        image,
        label,
        name,
        "run",
        str(demo / "run"),
        f"a held-out test phantom of dkuxnet demo ({name}: synthetic, {shape} voxels)",
        "the model dkuxnet demo trains on synthetic phantoms (its run folder, chosen as the model)",
    )


def self_test_subject() -> Subject:
    """The bundled model on the module self-test's phantom."""
    image, label = make_phantom(SELF_TEST_SHAPE, seed=SELF_TEST_SEED)
    return Subject(
        image,
        label,
        "LA phantom",
        "default",
        "",
        "the module self-test's phantom (synthetic, 64 x 64 x 64 voxels)",
        "the bundled model, trained on real LA MRI; on this phantom it undersegments",
    )


@dataclass
class Result:
    """The segmentation the module made, the scene nodes to draw, and what the panel shows."""

    predicted: Volume
    segmentation_node: slicer.vtkMRMLSegmentationNode
    segment_id: str
    dice: float
    status_line: str


def segment(subject: Subject, scene: slicer.vtkMRMLScene, jobs_dir: Path) -> Result:
    volume_node = slicer_bridge.add_volume_node(scene, subject.image, subject.name)
    logic = DKUXNetLogic(scene, jobs_dir=jobs_dir)
    model = resolve_model(subject.model_source, subject.model_path or None).resolve()
    task = logic.start_segment(volume_node, model, device=DEVICE)
    if task.wait(timeout=SEGMENT_TIMEOUT_S) is not JobState.COMPLETED:
        if not task.state.is_final:
            task.job.cancel(wait=True)  # the whole process tree, before the folder goes
            raise SystemExit(f"segmentation still running after {SEGMENT_TIMEOUT_S} s; cancelled")
        raise SystemExit(f"segmentation failed: {task.error}")
    segmentation_node = task.result
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(
        slicer_bridge.LEFT_ATRIUM
    )
    predicted = slicer_bridge.export_segment(segmentation_node, segment_id, volume_node)
    truth, got = subject.label.array > 0, predicted.array > 0
    dice = float(2.0 * (got & truth).sum() / (got.sum() + truth.sum()))
    return Result(predicted, segmentation_node, segment_id, dice, task.describe())


def panel_state(subject: Subject, result: Result) -> dict:
    """``render_panel.PanelState`` fields: the panel as it stands after this Segment."""
    return {
        "combos": {
            "inputVolumeSelector": [subject.name],
            "deviceComboBox": list(DEVICE_LABELS.values()),
            "pairSegmentSelector": [f"{subject.name} segmentation"],
        },
        "choices": {
            "modelSourceComboBox": {
                "default": "Bundled default model",
                "run": "Training run folder",
                "file": "Model file (.pt)",
            }[subject.model_source],
            "deviceComboBox": DEVICE_LABELS[DEVICE],
        },
        "texts": {
            "modelPathLineEdit": subject.model_path,
            "segmentStatusLabel": result.status_line,
        },
        "progress": {"segmentProgressBar": 100},
        "collapsed": [],  # both sections open, so that every control shows
    }


def render_panel(state: dict, qt_python: str, out: Path) -> Image.Image:
    state_file = out.with_suffix(".json")
    state_file.write_text(json.dumps(state), encoding="utf-8")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    command = [qt_python, str(RENDER_PANEL), "--state", str(state_file), str(out)]
    subprocess.run(command, check=True, env=env)
    return Image.open(out).convert("RGB")


def outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def with_bar(view: Image.Image, title: str, color: tuple[int, int, int]) -> Image.Image:
    """The view under a bar of its colour and name, as Slicer heads its views."""
    framed = Image.new("RGB", (view.width, view.height + VIEW_BAR), color)
    framed.paste(view, (0, VIEW_BAR))
    ImageDraw.Draw(framed).text((8, 4), title, fill="black", font=font(13))
    return framed


def slice_view(image: Volume, label: Volume, predicted: Volume) -> Image.Image:
    """The slice through the middle of the segment: grey levels, the segment, the true atrium."""
    z = int(np.argmax(((predicted.array > 0) | (label.array > 0)).sum(axis=(1, 2))))
    grey = image.array[z].astype(float)
    low, high = np.percentile(grey, (1, 99))
    grey = np.clip((grey - low) / (high - low), 0, 1)
    rgb = np.repeat((255 * grey)[..., None], 3, axis=2).astype(np.uint8)
    mask = predicted.array[z] > 0
    rgb[mask] = (0.55 * rgb[mask] + 0.45 * np.array(COLOR)).astype(np.uint8)
    rgb[outline(mask)] = COLOR
    rgb[outline(label.array[z] > 0)] = TRUTH_COLOR
    picture = Image.fromarray(rgb[::-1])  # array row 0 is posterior; show anterior up
    return picture.resize((VIEW, VIEW), Image.Resampling.NEAREST)


def surface_actor(segmentation_node, segment_id: str, color, opacity: float) -> vtk.vtkActor:
    surface = vtk.vtkPolyData()
    segmentation_node.GetClosedSurfaceRepresentation(segment_id, surface)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(surface)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    actor.GetProperty().SetSpecular(0.3)
    return actor


def surface_view(result: Result) -> Image.Image:
    """The segment's 3D closed surface, as Slicer's 3D view shows it (the true atrium is drawn in
    the slice only: two near-identical surfaces in one view flicker into each other)."""
    renderer = vtk.vtkRenderer()
    renderer.AddActor(
        surface_actor(
            result.segmentation_node, result.segment_id, slicer_bridge.LEFT_ATRIUM_COLOR, 1.0
        )
    )
    renderer.SetBackground(0.76, 0.76, 0.90)  # Slicer's 3D view background
    renderer.SetBackground2(0.35, 0.35, 0.55)
    renderer.GradientBackgroundOn()
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)
    camera.SetPosition(-1, -1.6, 0.6)  # from the left, anterior, slightly above
    renderer.ResetCamera()
    camera.Zoom(1.25)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(VIEW, VIEW)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    data = grab.GetOutput()
    width, height, _ = data.GetDimensions()
    scalars = vtk_to_numpy(data.GetPointData().GetScalars())
    pixels = scalars.reshape(height, width, -1)[::-1, :, :3]
    return Image.fromarray(np.ascontiguousarray(pixels))


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT), size) if FONT.exists() else ImageFont.load_default(size)


def caption(subject: Subject, result: Result) -> str:
    return (
        f"DKUXNet Segment on {subject.data_words}, segmented by {subject.model_words}: "
        f"Dice {100 * result.dice:.1f} % against the phantom's label.\n"
        "Red: the module's Left atrium segment (slice and 3D); yellow: the phantom's true atrium "
        "(slice). Views drawn "
        "offscreen with VTK from a slicer-core scene, segmented by the module logic.\n"
        "Panel: the module's .ui file rendered with plain Qt stand-ins for Slicer's widgets "
        "(node selectors, collapsible sections, path field). Not a capture of the Slicer window.\n"
        "Made by Resources/Screenshots/make_screenshot.py."
    )


def wrapped(text: str, width: int, typeface) -> list[str]:
    """The caption's paragraphs broken into lines no wider than ``width`` pixels."""
    lines = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and typeface.getlength(candidate) > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return lines


def compose(panel: Image.Image, views: list[Image.Image], text: str) -> Image.Image:
    """Panel on the left, the views stacked on the right, the caption underneath."""
    gap, margin, line_height = 6, 10, 18
    views_height = sum(v.height for v in views) + gap * (len(views) - 1)
    width = panel.width + gap + max(v.width for v in views)
    caption_font = font(13)
    lines = wrapped(text, width - 2 * margin, caption_font)
    height = max(panel.height, views_height)
    canvas = Image.new("RGB", (width, height + 2 * margin + line_height * len(lines)), "white")
    canvas.paste(panel, (0, 0))
    top = 0
    for view in views:
        canvas.paste(view, (panel.width + gap, top))
        top += view.height + gap
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text(
            (margin, height + margin + i * line_height), line, fill="black", font=caption_font
        )
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=OUT, help=f"default: {OUT}")
    parser.add_argument(
        "--demo",
        type=Path,
        help="a `dkuxnet demo --out` folder: its model on its first test phantom "
        "(default: the bundled model on the self-test phantom)",
    )
    parser.add_argument(
        "--qt-python",
        required=True,
        help="a Python with PySide6, for scripts/render_panel.py (not the project's venv)",
    )
    args = parser.parse_args(argv)
    subject = demo_subject(args.demo) if args.demo else self_test_subject()
    slicer.vtkSegmentationConverterFactory.GetInstance().RegisterConverterRule(
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule()
    )
    scene = slicer.vtkMRMLScene()
    with tempfile.TemporaryDirectory() as work:
        result = segment(subject, scene, Path(work))
        panel = render_panel(panel_state(subject, result), args.qt_python, Path(work) / "panel.png")
    views = [
        with_bar(
            slice_view(subject.image, subject.label, result.predicted),
            "Slice: the volume's voxel plane through the middle of the segment",
            SLICE_BAR,
        ),
        with_bar(surface_view(result), "3D", THREE_D_BAR),
    ]
    canvas = compose(panel, views, caption(subject, result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(MAX_COLORS, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} (Dice against the phantom label {result.dice:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
