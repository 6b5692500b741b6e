"""DKUXNetSegmentWeb.app without a browser: the page builds, and its handlers reach the session.

Needs the [web] packages (skips without them); the browser itself is in test_web_e2e.py.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from dkuxnet.io import Volume, write_volume

pytest.importorskip("slicer", reason="slicer-core is not installed")
web = pytest.importorskip("DKUXNetSegmentWeb")
if web.missing_modules():
    pytest.skip(
        f"the [web] extra is not installed ({', '.join(web.missing_modules())}); "
        "bash .ci/web_test_deps installs it",
        allow_module_level=True,
    )
from DKUXNetSegmentWeb.app import ROI_LABEL, DKUXNetWebApp  # noqa: E402
from DKUXNetSegmentWeb.data_folder import DataFolder  # noqa: E402
from DKUXNetSegmentWeb.session import PAGE_WORDS  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, slicer_module) -> DKUXNetWebApp:
    """One page for the module (building the views takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("web")
    data = tmp_path / "data"
    volume = Volume(array=np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 2.0))
    write_volume(volume, data / "case.nrrd")
    return DKUXNetWebApp(
        DataFolder(data), device="cpu", jobs_dir=tmp_path / "jobs", server=f"test-{tmp_path.name}"
    )


def test_the_page_starts_with_the_sessions_state(app) -> None:
    state = app.state
    assert state.data_files == ["case.nrrd"] and state.device == "cpu"
    assert state.volume_name == "" and state.segment_running is False
    assert state.model_text.startswith(("bundled model", "no model"))
    assert "no data yet" in state.loss_chart
    assert app.ui is not None


#: Each button of the page with a ``disabled`` binding, and the state value it is disabled by:
#: a start button by the controller view's ``can_*`` (as the Slicer panel enables it), a Cancel
#: while its job does not run.
DISABLED_BY = {
    "place-box": "!can_place_box",
    "segment-button": "!can_segment",
    "segment-cancel": "!segment_running",
    "save-segmentation": "!can_save",
    "suggest-next": "!can_rank",
    "suggest-next-cancel": "!rank_running",
    "fine-tune-start": "!can_fine_tune",
    "fine-tune-cancel": "!fine_tune_running",
    "fine-tune-resume": "!can_resume",
    "estimate-time": "!can_estimate",
}


def test_buttons_are_enabled_by_the_controllers_view(app) -> None:
    """No button re-derives what may start: e.g. Start stays disabled with no labeled pair."""
    bindings = {}
    for tag in re.findall(r"<VBtn\b[^>]*>", app.ui.html):
        if disabled := re.search(r':disabled="([^"]*)"', tag):
            element_id = re.search(r'\bid="([^"]+)"', tag)
            bindings[element_id[1] if element_id else tag] = disabled[1]
    assert bindings == DISABLED_BY
    app._refresh()
    view = app.session.controller.view()
    for field in dataclasses.fields(view):
        if field.name.startswith("can_"):
            assert app.state[field.name] == getattr(view, field.name), field.name
    assert app.session.parameters.labeled_pairs == [] and app.state.can_fine_tune is False


def test_buttons_reach_the_session_and_errors_become_the_message(app) -> None:
    app.state.volume_choice = "../../etc/passwd"
    app.load_volume()
    assert "outside the data folder" in app.state.message and app.state.volume_name == ""
    app.state.volume_choice = "case.nrrd"
    app.load_volume()
    assert app.state.volume_name == "case" and app.state.message == "Loaded case."
    app.upload([{"name": "notes.nrrd", "content": b"not an image"}])
    assert "'notes.nrrd' is not a readable 3D image" in app.state.message
    app.dismiss_message()
    assert app.state.message == ""


def test_settings_go_to_the_parameter_node(app) -> None:
    params = app.session.parameters
    app._on_iterations("12")
    app._on_iterations("1.5e")  # half-typed: ignored
    app._on_tta(True)
    app._on_device("cuda")
    assert (params.iterations, params.tta, params.device) == (12, True, "cuda")
    app._on_iterations("0")
    assert "at least 1" in app.state.message and params.iterations == 12


def test_the_region_of_interest_field_reaches_segment(app) -> None:
    html = app.ui.html
    assert 'id="roi-text"' in html and ROI_LABEL in html
    assert app.state.roi_text == ""
    app.state.volume_choice = "case.nrrd"
    app.load_volume()
    app._on_roi_text("1,2,3")
    assert app.session.roi_text == "1,2,3"
    app.segment()
    assert "region of interest '1,2,3': expected six numbers" in app.state.message
    assert app.state.segment_running is False and app.session.segment_task is None
    # a child's error about the box is explained in the page's words, not the Slicer panel's
    assert app.session.logic.panel_words is PAGE_WORDS
    app._on_roi_text(None)  # the field's clear button
    assert app.session.roi_text == ""
