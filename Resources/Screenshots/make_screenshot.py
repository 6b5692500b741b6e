"""Render the extension's catalogue screenshot: the self-test phantom segmented by the module logic.

The Slicer application cannot run where this project is built, so this is not a capture of the
Slicer window. It is what the module does, drawn offscreen: the phantom of the module's self-test
is loaded into a real MRML scene (the ``slicer-core`` package) and segmented by
``DKUXNetSegmentLib.logic`` with the bundled model in a background ``dkuxnet predict`` process,
as the Segment button does. The resulting segmentation node is drawn as Slicer shows it (a slice
with the segment, its 3D closed surface), with the phantom's true atrium for comparison. The
bundled model was trained on real LA MRI, so on this synthetic phantom it is far from its best;
the caption says how far.

Usage (from the repository root, with slicer-core installed):
``python Resources/Screenshots/make_screenshot.py [OUT.png]``
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import slicer
import vtk
from PIL import Image, ImageDraw
from scipy import ndimage
from vtk.util.numpy_support import vtk_to_numpy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DKUXNetSegment"))

from dkuxnet.jobs import JobState  # noqa: E402
from dkuxnet.resources import default_model_path  # noqa: E402
from dkuxnet.synthetic import make_phantom  # noqa: E402
from DKUXNetSegmentLib import slicer_bridge  # noqa: E402
from DKUXNetSegmentLib.logic import DKUXNetLogic  # noqa: E402

OUT = Path(__file__).resolve().parent / "DKUXNetSegment-phantom.png"
PHANTOM_SHAPE = (64, 64, 64)  # DKUXNetSegmentTest.PHANTOM_SHAPE and its seed
SEED = 7
PANEL = 560  # pixels, each of the two panels
COLOR = tuple(int(255 * c) for c in slicer_bridge.LEFT_ATRIUM_COLOR)
TRUTH_COLOR = (255, 215, 0)  # yellow: reads on bright blood and on the red segment


def segment_phantom(scene: slicer.vtkMRMLScene, jobs_dir: Path):
    image, label = make_phantom(PHANTOM_SHAPE, seed=SEED)
    volume_node = slicer_bridge.add_volume_node(scene, image, "LA phantom")
    logic = DKUXNetLogic(scene, jobs_dir=jobs_dir)
    task = logic.start_segment(volume_node, default_model_path(), device="cpu")
    if task.wait(timeout=900) is not JobState.COMPLETED:
        raise SystemExit(f"segmentation failed: {task.error}")
    segmentation_node = task.result
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(
        slicer_bridge.LEFT_ATRIUM
    )
    predicted = slicer_bridge.export_segment(segmentation_node, segment_id, volume_node)
    truth = label.array > 0
    got = predicted.array > 0
    dice = 2.0 * (got & truth).sum() / (got.sum() + truth.sum())
    truth_node = slicer_bridge.import_label(label, volume_node)  # for the 3D comparison
    return image, label, predicted, (segmentation_node, segment_id), truth_node, dice


def outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def slice_panel(image, label, predicted) -> Image.Image:
    """The slice through the middle of the segment: grey levels, the segment, the true atrium."""
    z = int(np.argmax(predicted.array.sum(axis=(1, 2))))
    grey = image.array[z].astype(float)
    low, high = np.percentile(grey, (1, 99))
    grey = np.clip((grey - low) / (high - low), 0, 1)
    rgb = np.repeat((255 * grey)[..., None], 3, axis=2).astype(np.uint8)
    mask = predicted.array[z] > 0
    rgb[mask] = (0.55 * rgb[mask] + 0.45 * np.array(COLOR)).astype(np.uint8)
    rgb[outline(mask)] = COLOR
    rgb[outline(label.array[z] > 0)] = TRUTH_COLOR
    picture = Image.fromarray(rgb[::-1])  # array row 0 is posterior; show anterior up
    return picture.resize((PANEL, PANEL), Image.Resampling.NEAREST)


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


def surface_panel(result, truth_node) -> Image.Image:
    """The segment's 3D surface inside the translucent true atrium."""
    renderer = vtk.vtkRenderer()
    renderer.AddActor(surface_actor(*result, slicer_bridge.LEFT_ATRIUM_COLOR, 1.0))
    truth_id = truth_node.GetSegmentation().GetNthSegmentID(0)
    renderer.AddActor(surface_actor(truth_node, truth_id, [c / 255 for c in TRUTH_COLOR], 0.3))
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
    window.SetSize(PANEL, PANEL)
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


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    slicer.vtkSegmentationConverterFactory.GetInstance().RegisterConverterRule(
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule()
    )
    scene = slicer.vtkMRMLScene()
    with tempfile.TemporaryDirectory() as jobs_dir:
        image, label, predicted, result, truth_node, dice = segment_phantom(scene, Path(jobs_dir))
    caption_height = 58
    canvas = Image.new("RGB", (2 * PANEL, PANEL + caption_height), "white")
    canvas.paste(slice_panel(image, label, predicted), (0, 0))
    canvas.paste(surface_panel(result, truth_node), (PANEL, 0))
    ImageDraw.Draw(canvas).text(
        (12, PANEL + 8),
        "DKUXNet Segment on its self-test phantom (synthetic, 64 x 64 x 64 voxels): the module's "
        "Left atrium segment (red) and the phantom's true atrium (yellow).\n"
        "The bundled model was trained on real LA MRI; on this phantom it finds the atrium but "
        f"undersegments it (Dice {dice:.2f}).\nRendered offscreen with VTK from a slicer-core "
        "scene by Resources/Screenshots/make_screenshot.py; not a capture of the Slicer window.",
        fill="black",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    print(f"wrote {out} (Dice against the phantom label {dice:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
