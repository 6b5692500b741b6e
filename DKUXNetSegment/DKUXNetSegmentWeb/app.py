"""The web page: trame-slicer views beside Volume, Segment and Fine-tune panels.

The page is a thin shell over :class:`~DKUXNetSegmentWeb.session.WebSession`: each button calls
one session method, and a timer (every :data:`POLL_INTERVAL_S`) polls the running jobs and
copies :meth:`~DKUXNetSegmentWeb.session.WebSession.view_state` into the page's state. A button
is enabled by that state as given: a start button by the controller's ``can_*`` value (the one
the Slicer panel enables its button by), a Cancel while its job runs. Errors the user can fix
(:class:`~dkuxnet.errors.InputError`) become the message at the top of the panel; anything
else is logged with its traceback and named there too.

The slice and 3D views are trame-slicer's remote-controlled views: VTK renders them on the
server (off screen: Mesa's software OpenGL where there is no GPU) and streams the images.
Element ids (``id=...``) are what the browser test clicks; keep them stable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slicer
from trame.app import TrameApp
from trame.app.file_upload import ClientFile
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from vtkmodules.vtkCommonCore import vtkObject

from dkuxnet.device import DEVICE_CHOICES
from dkuxnet.errors import DKUXNetError, InputError
from DKUXNetSegmentLib.logic import DKUXNetLogic, Parameters

from .data_folder import RUNS, DataFolder
from .session import PAGE_WORDS, WebSession, new_parameter_node

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
TITLE = "DKUXNet Segment"
LAYOUT = "Quad View"  # trame-slicer's: coronal and sagittal | 3D and axial
DRAWER_WIDTH = 400
# The page's box is aligned to the RAS axes by design (two corners typed in a field); a box
# rotated with an oblique scan needs the Slicer panel's ROI, or `dkuxnet predict --roi` with
# its eight corners. Cropping is then to the voxel box around the RAS-aligned box.
ROI_LABEL = "Region of interest (RAS mm: R1,A1,S1,R2,A2,S2; empty = whole image)"
# Libraries that log every message and state change at INFO; quiet unless --verbose.
CHATTY_LOGGERS = ("trame_server", "trame_client", "trame_rca", "trame_slicer", "wslink", "aiohttp")


class SlicerViews:
    """The session's :class:`~DKUXNetSegmentWeb.session.Views` on trame-slicer's views."""

    def __init__(self, slicer_app: SlicerApp) -> None:
        self._app = slicer_app

    def show_volume(self, node: Any) -> None:
        display = self._app.display_manager
        display.show_volume_in_slice_background(node)
        display.show_volume_in_slice_foreground(None)
        for view in self._app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)  # the 3D view shows the three slices
        display.reset_views()

    def show_segmentation(self, node: Any) -> None:
        self._app.display_manager.set_node_visible_in_group(node)
        for view in self._app.view_manager.get_threed_views():
            view.reset_view()  # centre the 3D view on the new surface

    def show_overlay(self, node: Any) -> None:
        self._app.display_manager.show_volume_in_slice_foreground(node)
        for view in self._app.view_manager.get_slice_views():
            view.set_foreground_opacity(0.5)


class DKUXNetWebApp(TrameApp):
    """One server: a scene, its views, a :class:`WebSession` and the page.

    Args:
        data: the data folder.
        model: the checkpoint Segment starts with; the bundled model when ``None``.
        device: ``auto``, ``cpu`` or ``cuda``.
        jobs_dir: where temporary job folders go (a new temporary folder by default);
            fine-tuning runs are kept in the data folder's :data:`RUNS`.
        server: a trame server or its name (trame's default one when ``None``).
    """

    def __init__(
        self,
        data: DataFolder,
        model: Path | None = None,
        device: str = "auto",
        jobs_dir: Path | None = None,
        server: Any = None,
    ) -> None:
        super().__init__(server=server, client_type="vue3")
        self.slicer_app = SlicerApp()
        # The Slicer application registers this rule at start-up; without it no 3D surface.
        slicer.vtkSegmentationConverterFactory.GetInstance().RegisterConverterRule(
            slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule()
        )
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(
            self.slicer_app.scene, self.slicer_app.view_manager, self.server
        )
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)

        jobs = jobs_dir or Path(tempfile.mkdtemp(prefix="dkuxnet-web-"))
        logic = DKUXNetLogic(
            self.slicer_app.scene, jobs_dir=jobs, runs_dir=data.root / RUNS, panel_words=PAGE_WORDS
        )
        parameters = Parameters(new_parameter_node(self.slicer_app.scene))
        parameters.device = device
        if model is not None:
            parameters.model_source, parameters.model_path = "file", str(model)
        self.session = WebSession(logic, data, SlicerViews(self.slicer_app), parameters)

        self.state.update(
            {
                "volume_choice": None,
                "pair_volume": None,
                "pair_label": None,
                "unlabeled_choice": None,
                "device": parameters.device,
                "tta": parameters.tta,
                "show_uncertainty": parameters.show_uncertainty,
                "iterations": parameters.iterations,
                "roi_text": self.session.roi_text,
                "data_files": data.volumes(),
                **self.session.view_state(),
            }
        )
        self.state.change("device")(self._on_device)
        self.state.change("tta")(self._on_tta)
        self.state.change("show_uncertainty")(self._on_show_uncertainty)
        self.state.change("iterations")(self._on_iterations)
        self.state.change("roi_text")(self._on_roi_text)
        self.ctrl.on_server_ready.add(self._start_polling)
        self._poller: asyncio.Task[None] | None = None
        self._build_ui()

    # ------------------------------------------------------------------ actions
    def _act(self, action: Callable[..., Any], *args: Any) -> None:
        """Run one user action; its error becomes the page's message, then refresh."""
        try:
            action(*args)
        except (DKUXNetError, ValueError) as exc:
            self.session.message = str(exc)
        except Exception as exc:  # a bug: keep the traceback in the server log
            log.exception("%s failed", getattr(action, "__name__", action))
            self.session.message = f"Unexpected error ({exc}); see the server log."
        self._refresh()

    def load_volume(self) -> None:
        self._act(self.session.load_volume, self.state.volume_choice)

    def upload(self, files: list[dict[str, Any]] | None) -> None:
        for file in files or []:
            client_file = ClientFile(file)
            self._act(self.session.upload, client_file.name or "", client_file.content or b"")
        self.state.data_files = self.session.data.volumes()

    def segment(self) -> None:
        self._act(self.session.segment)

    def cancel_segment(self) -> None:
        self._act(self.session.cancel_segment)

    def place_box(self) -> None:
        self._act(self.session.place_box)
        self.state.roi_text = self.session.roi_text

    def save_segmentation(self) -> None:
        self._act(self.session.save_segmentation)
        self.state.data_files = self.session.data.volumes()

    def add_labeled(self) -> None:
        self._act(self.session.add_labeled, self.state.pair_volume, self.state.pair_label)

    def add_unlabeled(self) -> None:
        self._act(self.session.add_unlabeled, self.state.unlabeled_choice)

    def remove_labeled(self, index: int) -> None:
        self._act(self.session.remove_labeled, int(index))

    def remove_unlabeled(self, index: int) -> None:
        self._act(self.session.remove_unlabeled, int(index))

    def suggest_next(self) -> None:
        self._act(self.session.suggest_next)

    def cancel_suggest_next(self) -> None:
        self._act(self.session.cancel_suggest_next)

    def show_ranked(self, row: int) -> None:
        self._act(self.session.show_ranked, int(row))

    def start_fine_tune(self) -> None:
        self._act(self.session.start_fine_tune)

    def resume_fine_tune(self) -> None:
        self._act(self.session.resume_fine_tune)

    def cancel_fine_tune(self) -> None:
        self._act(self.session.cancel_fine_tune)

    def estimate_time(self) -> None:
        self._act(self.session.estimate_time)

    def refresh_files(self) -> None:
        self.state.data_files = self.session.data.volumes()

    def dismiss_message(self) -> None:
        self.session.message = ""
        self._refresh()

    def _on_device(self, device: str, **_: Any) -> None:
        self._act(setattr, self.session.parameters, "device", device)

    def _on_tta(self, tta: bool, **_: Any) -> None:
        self._act(setattr, self.session.parameters, "tta", bool(tta))

    def _on_show_uncertainty(self, show_uncertainty: bool, **_: Any) -> None:
        self._act(setattr, self.session.parameters, "show_uncertainty", bool(show_uncertainty))

    def _on_roi_text(self, roi_text: Any, **_: Any) -> None:
        self._act(setattr, self.session, "roi_text", str(roi_text or ""))  # checked on Segment

    def _on_iterations(self, iterations: Any, **_: Any) -> None:
        try:
            value = int(iterations)
        except (TypeError, ValueError):
            return  # half-typed; the field shows the rule
        self._act(setattr, self.session.parameters, "iterations", value)

    # ------------------------------------------------------------------ the timer
    def _start_polling(self, **_: Any) -> None:
        self._poller = asyncio.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                self.session.poll()
            except Exception as exc:
                log.exception("polling the jobs failed")
                self.session.message = f"Unexpected error ({exc}); see the server log."
            with self.state:
                self._refresh()

    def _refresh(self) -> None:
        self.state.update(self.session.view_state())

    # ------------------------------------------------------------------ the page
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            layout.title.set_text(TITLE)
            layout.drawer.width = DRAWER_WIDTH
            with layout.toolbar:
                v3.VSpacer()
                html.Div("{{ model_text }}", id="model-text", classes="text-caption mr-4")
            with layout.drawer, html.Div(classes="pa-3", style="overflow-y: auto;"):
                v3.VAlert(
                    "{{ message }}",
                    id="message",
                    v_if=("message",),
                    density="compact",
                    variant="tonal",
                    closable=True,
                    click_close=self.dismiss_message,
                    classes="mb-2",
                )
                self._volume_panel()
                self._segment_panel()
                self._fine_tune_panel()
            with layout.content, html.Div(id="views", style="height: 100%;"):
                self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout

    def _volume_panel(self) -> None:
        with v3.VCard(title="Volume", variant="outlined", classes="mb-3"), v3.VCardText():
            with html.Div(classes="d-flex align-center"):
                v3.VSelect(
                    id="volume-select",
                    label="Image in the data folder",
                    items=("data_files",),
                    v_model=("volume_choice",),
                    density="compact",
                    hide_details=True,
                )
                v3.VBtn(icon="mdi-refresh", variant="text", click=self.refresh_files)
            with html.Div(classes="d-flex align-center mt-2"):
                v3.VBtn("Load", id="load-volume", click=self.load_volume, classes="mr-2")
                v3.VFileInput(
                    id="upload",
                    label="or upload",
                    accept=".nrrd,.nii,.nii.gz,.mha",
                    density="compact",
                    hide_details=True,
                    change=(
                        f"trigger('{self.ctrl.trigger_name(self.upload)}', [$event.target.files])"
                    ),
                )
            html.Div("Loaded: {{ volume_name || 'none' }}", id="volume-status", classes="mt-2")

    def _segment_panel(self) -> None:
        with v3.VCard(title="Segment", variant="outlined", classes="mb-3"), v3.VCardText():
            with html.Div(classes="d-flex align-center"):
                v3.VSelect(
                    label="Device",
                    items=("devices", list(DEVICE_CHOICES)),
                    v_model=("device",),
                    density="compact",
                    hide_details=True,
                    classes="mr-2",
                )
                v3.VCheckbox(label="Test-time augmentation", v_model=("tta",), hide_details=True)
            v3.VCheckbox(
                id="show-uncertainty",
                label="Show uncertainty (one network: with test-time augmentation)",
                v_model=("show_uncertainty",),
                density="compact",
                hide_details=True,
            )
            v3.VTextField(
                id="roi-text",
                label=ROI_LABEL,
                v_model=("roi_text",),
                density="compact",
                hide_details=True,
                clearable=True,
                classes="mt-2",
            )
            with html.Div(v_if=("region_advice",), classes="mt-2"):
                html.Div("{{ region_advice }}", id="region-advice", classes="text-caption")
                v3.VBtn(
                    "Place box",
                    id="place-box",
                    disabled=("!can_place_box",),
                    click=self.place_box,
                    size="small",
                )
            with html.Div(classes="d-flex mt-2"):
                v3.VBtn(
                    "Segment",
                    id="segment-button",
                    color="primary",
                    disabled=("!can_segment",),
                    click=self.segment,
                    classes="mr-2",
                )
                v3.VBtn(
                    "Cancel",
                    id="segment-cancel",
                    disabled=("!segment_running",),
                    click=self.cancel_segment,
                    classes="mr-2",
                )
                v3.VBtn(
                    "Save",
                    id="save-segmentation",
                    disabled=("!can_save",),
                    click=self.save_segmentation,
                )
            v3.VProgressLinear(model_value=("segment_progress",), height=6, classes="mt-3")
            html.Div("{{ segment_status }}", id="segment-status", classes="text-caption")
            html.Div("{{ segment_result }}", id="segmentation-info", classes="text-caption")

    def _fine_tune_panel(self) -> None:
        with v3.VCard(title="Fine-tune", variant="outlined"), v3.VCardText():
            html.Div("Labeled: an image and its 0/1 label map", classes="text-caption")
            v3.VSelect(
                id="pair-volume",
                label="Image",
                items=("data_files",),
                v_model=("pair_volume",),
                density="compact",
                hide_details=True,
            )
            with html.Div(classes="d-flex align-center mt-1"):
                v3.VSelect(
                    id="pair-label",
                    label="Label",
                    items=("data_files",),
                    v_model=("pair_label",),
                    density="compact",
                    hide_details=True,
                )
                v3.VBtn("Add", id="add-labeled", click=self.add_labeled, classes="ml-2")
            self._removable_list("labeled", self.remove_labeled)
            with html.Div(classes="d-flex align-center mt-2"):
                v3.VSelect(
                    id="unlabeled-volume",
                    label="Unlabeled image",
                    items=("data_files",),
                    v_model=("unlabeled_choice",),
                    density="compact",
                    hide_details=True,
                )
                v3.VBtn("Add", id="add-unlabeled", click=self.add_unlabeled, classes="ml-2")
            self._removable_list("unlabeled", self.remove_unlabeled)
            with html.Div(classes="d-flex mt-1"):
                v3.VBtn(
                    "Suggest next to label",
                    id="suggest-next",
                    disabled=("!can_rank",),
                    click=self.suggest_next,
                    classes="mr-2",
                    size="small",
                )
                v3.VBtn(
                    "Cancel",
                    id="suggest-next-cancel",
                    disabled=("!rank_running",),
                    click=self.cancel_suggest_next,
                    size="small",
                )
            html.Div("{{ rank_status }}", id="rank-status", classes="text-caption")
            with (
                v3.VList(id="ranking", density="compact", classes="py-0"),
                v3.VListItem(
                    v_for="(item, i) in ranking",
                    key="i",
                    click=(self.show_ranked, "[i]"),
                    classes="px-1 text-caption",
                ),
            ):
                html.Span("{{ item }}")
            v3.VTextField(
                id="iterations",
                label="Iterations",
                type="number",
                min=1,
                v_model=("iterations",),
                density="compact",
                hide_details=True,
                classes="mt-2",
            )
            with html.Div(classes="d-flex flex-wrap mt-2"):
                for label, element_id, action, disabled in (
                    ("Start", "fine-tune-start", self.start_fine_tune, "!can_fine_tune"),
                    ("Cancel", "fine-tune-cancel", self.cancel_fine_tune, "!fine_tune_running"),
                    ("Resume", "fine-tune-resume", self.resume_fine_tune, "!can_resume"),
                    ("Estimate time", "estimate-time", self.estimate_time, "!can_estimate"),
                ):
                    v3.VBtn(
                        label,
                        id=element_id,
                        click=action,
                        disabled=(disabled,),
                        classes="mr-2 mb-1",
                        size="small",
                    )
            html.Div("{{ estimate_text }}", id="estimate-text", classes="text-caption")
            v3.VProgressLinear(model_value=("fine_tune_progress",), height=6, classes="mt-2")
            html.Div("{{ fine_tune_status }}", id="fine-tune-status", classes="text-caption")
            html.Div(id="loss-chart", v_html=("loss_chart",))
            html.Div(id="dice-chart", v_html=("dice_chart",))

    @staticmethod
    def _removable_list(items: str, remove: Callable[[int], None]) -> None:
        with (
            v3.VList(density="compact", classes="py-0"),
            v3.VListItem(v_for=f"(item, i) in {items}", key="i", classes="px-1"),
            html.Div(classes="d-flex align-center text-caption"),
        ):
            html.Span("{{ item }}", classes="flex-grow-1")
            v3.VBtn(icon="mdi-close", size="x-small", variant="text", click=(remove, "[i]"))


def serve(
    data: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    model: str | Path | None = None,
    device: str = "auto",
    verbose: bool = False,
) -> None:
    """Serve the page until interrupted.

    Args:
        data: the data folder (images to load; results and runs are written there).
        host: the address to listen on; the loopback address unless told otherwise.
        port: the port (0: any free one).
        model: the checkpoint Segment starts with; the bundled model when ``None``.
        device: ``auto``, ``cpu`` or ``cuda``.
        verbose: keep the web libraries' own INFO logging.

    Raises:
        InputError: the data folder or the model file does not exist.
    """
    folder = DataFolder(data)
    model_path = Path(model).expanduser().resolve() if model else None
    if model_path is not None and not model_path.is_file():
        raise InputError(f"model file not found: {model_path}")
    if not verbose:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # VTK's deprecation notices and its "no X display" before it falls back to off-screen
        # rendering (EGL, then OSMesa) say nothing a user can act on.
        vtkObject.GlobalWarningDisplayOff()
    # trame reads its own options from the command line unless TRAME_ARGS is set; ours are
    # passed below, and `dkuxnet web`'s arguments are not trame's.
    os.environ["TRAME_ARGS"] = "--server"
    app = DKUXNetWebApp(folder, model=model_path, device=device)
    log.info("data folder: %s", folder.root)

    def announce(**_: Any) -> None:  # the real port, also when 0 asked for any free one
        log.info("DKUXNet web page: http://%s:%d/  (Ctrl+C stops it)", host, app.server.port)

    app.ctrl.on_server_ready.add(announce)
    app.server.start(
        host=host, port=port, open_browser=False, show_connection_info=False, timeout=0
    )
