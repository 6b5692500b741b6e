"""``dkuxnet web`` in a real headless browser: load a phantom, Segment it, check what comes back.

The server is the real command (``python -m dkuxnet web``) in its own process; the browser is
Debian's Chromium driven through its chromedriver by Selenium, both installed by
``.ci/web_test_deps`` (nothing is downloaded at run time). Segment runs the real
``dkuxnet predict`` job on a tiny untrained model (``Testing/tiny.py``), so the test takes
seconds, not the bundled model's minutes. The test checks:

* the phantom loads, Segment runs to "completed", and the page describes the new segmentation
  node on the phantom's grid;
* Save writes it into the data folder with exactly the phantom's geometry;
* the views are not blank, and show the segmentation's colour only after Segment;
* an upload that is not an image gets the page's clear message and is not kept.

Two environment variables serve the README's screenshot (they change nothing otherwise):
``DKUXNET_WEB_SCREENSHOT=PATH`` also saves the page's screenshot there (and prints the Dice of
the saved segmentation when the phantom's label is known), and ``DKUXNET_WEB_MODEL`` segments
another phantom with another model: ``bundled``, the bundled model on a 64^3 phantom, or a
``dkuxnet demo --out`` folder, the model the demo trained on its first held-out test phantom,
as the catalogue screenshot does (``Resources/Screenshots/make_screenshot.py``)::

    .venv/bin/dkuxnet demo --out demo_out
    DKUXNET_WEB_MODEL=demo_out DKUXNET_WEB_SCREENSHOT=docs/web_front_end.png \\
        .venv/bin/python -m pytest -q -s Testing/test_web_e2e.py
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dkuxnet.io import Volume, read_label, read_volume, write_volume
from dkuxnet.synthetic import make_phantom

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SETUP_HINT = "bash .ci/web_test_deps installs it"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")
SERVER_START_S = 120
SEGMENT_S = 300
WINDOW = (1500, 950)
PHANTOM_SHAPE = (32, 48, 48)  # (Z, Y, X); the tiny model's prediction has foreground on it
TINY_SEED = 3


def _skip_reason() -> str | None:
    web = pytest.importorskip("DKUXNetSegmentWeb")
    missing = web.missing_modules()
    if missing:
        return f"the [web] extra is not installed ({', '.join(missing)}); {SETUP_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed; {SETUP_HINT}"
    if _which(BROWSERS) is None:
        return f"no Chromium ({' / '.join(BROWSERS)}) on PATH; {SETUP_HINT}"
    if _which(DRIVERS) is None:
        return f"no chromedriver; {SETUP_HINT}"
    return None


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isfile(name) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def requirements() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_and_phantom(tmp_path: Path) -> tuple[Path | None, Volume, Volume | None]:
    """The checkpoint (``None``: the page's default, the bundled model), the phantom to
    segment and its label when the run checks it: a tiny model by default, see the docstring."""
    choice = os.environ.get("DKUXNET_WEB_MODEL")
    if choice == "bundled":
        from dkuxnet.resources import default_model_path

        if default_model_path() is None:
            pytest.skip("this installation has no bundled model")
        image, label = make_phantom((64, 64, 64), seed=7)  # DKUXNetSegmentTest's phantom
        return None, image, label
    if choice:
        demo = Path(choice).resolve()
        tests = sorted((demo / "data" / "imagesTs").glob("*"))
        if not tests or not (demo / "run" / "best.pt").is_file():
            pytest.fail(f"DKUXNET_WEB_MODEL={choice} is not a finished `dkuxnet demo --out` folder")
        image = read_volume(tests[0])
        return (
            demo / "run" / "best.pt",
            image,
            read_label(demo / "data" / "labelsTs" / tests[0].name, reference=image),
        )
    sys.path.insert(0, str(HERE))
    from tiny import save_random_checkpoint, tiny_model_config

    from dkuxnet.config import DataConfig, TrainConfig

    config = TrainConfig(model=tiny_model_config(), data=DataConfig(patch_size=(16, 32, 32)))
    image, _ = make_phantom(PHANTOM_SHAPE, seed=7)  # DKUXNetSegmentTest's phantom
    return save_random_checkpoint(tmp_path / "tiny.pt", config, seed=TINY_SEED), image, None


@pytest.fixture()
def server(requirements, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``dkuxnet web`` on a free port over a data folder holding ``phantom.nrrd``."""
    data = tmp_path / "data"
    model, image, label = _model_and_phantom(tmp_path)
    write_volume(image, data / "phantom.nrrd")
    port = _free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "dkuxnet", "web", "--port", str(port), "--data", str(data)]
    command += ["--device", "cpu"] + (["--model", str(model)] if model else [])
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(lambda: _answers(url) or process.poll() is not None, SERVER_START_S, "server")
        if process.poll() is not None:
            pytest.fail(f"dkuxnet web exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield {"url": url, "data": data, "image": image, "label": label, "log": log_path}
    finally:
        _stop(process)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and nothing else
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture()
def browser(requirements) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSERS) or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(_which(DRIVERS) or ""), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the page is still being built
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def _choose(driver: Any, select_id: str, item: str) -> None:
    """Pick ``item`` in a Vuetify select (its id is on the inner input; click its field)."""
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, select_id).find_element(
        By.XPATH, "./ancestor::div[contains(concat(' ', @class, ' '), ' v-field ')]"
    )
    field.click()
    options = _wait_for(
        lambda: [
            e
            for e in driver.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item")
            if e.text.strip() == item
        ],
        30,
        f"{item!r} in the list",
    )
    options[0].click()


def _click(driver: Any, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    button = driver.find_element(By.ID, element_id)
    _wait_for(button.is_enabled, 30, f"#{element_id} to be enabled")
    button.click()


def _views(driver: Any) -> np.ndarray:
    """The views area as an RGB array (what the user sees of the rendered images)."""
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, "views").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _wait_for_views(
    driver: Any, condition: Callable[[np.ndarray], bool], what: str, timeout: float = 30
) -> np.ndarray:
    """The views once ``condition`` holds for them (the images stream in after a change)."""
    shots: list[np.ndarray] = []

    def check() -> bool:
        shots.append(_views(driver))
        return condition(shots[-1])

    _wait_for(check, timeout, what)
    return shots[-1]


def _reddish(rgb: np.ndarray) -> int:
    """Pixels of the left-atrium colour (warm red, blended over grey or shaded in 3D)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((r > 110) & (r > g + 45) & (r > b + 35)))


def test_segment_a_phantom_in_the_browser(server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    started = time.monotonic()
    driver.get(server["url"])
    _wait_for(lambda: driver.find_elements(By.ID, "volume-select"), 60, "the page")

    _choose(driver, "volume-select", "phantom.nrrd")
    _click(driver, "load-volume")
    _wait_for(lambda: "phantom" in _text(driver, "volume-status"), 60, "the volume to load")
    before = _wait_for_views(driver, lambda v: v.std() > 10, "the slices to show")
    assert _reddish(before) < 50, "segmentation colour before any segmentation"

    loaded = time.monotonic()
    _click(driver, "segment-button")
    _wait_for(
        lambda: any(
            word in _text(driver, "segment-status") for word in ("completed", "failed", "cancel")
        ),
        SEGMENT_S,
        "Segment to end",
    )
    segmented = time.monotonic()
    status = _text(driver, "segment-status")
    assert status.startswith("completed"), f"{status}\n{_text(driver, 'message')}"
    z, y, x = server["image"].array.shape
    info = _text(driver, "segmentation-info")
    assert "phantom segmentation: Left atrium" in info and f"{x} × {y} × {z} grid" in info

    # the node's geometry, as Save writes it into the data folder
    _click(driver, "save-segmentation")
    saved = server["data"] / "segmentations" / "phantom_segmentation.nrrd"
    _wait_for(saved.is_file, 60, "the saved segmentation")
    label = read_volume(saved)
    assert label.same_geometry(server["image"]), label.geometry_differences(server["image"])
    assert set(np.unique(label.array).tolist()) <= {0, 1} and label.array.any()

    # the views: not blank, and now showing the segmentation in 2D and 3D
    after = _wait_for_views(driver, lambda v: _reddish(v) > 500, "the segmentation's colour")
    colours = np.unique((after // 8).reshape(-1, 3), axis=0)
    assert after.std() > 10 and len(colours) > 100, "the views look blank"
    screenshot = tmp_path / "web_front_end.png"
    driver.save_screenshot(str(screenshot))
    if os.environ.get("DKUXNET_WEB_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["DKUXNET_WEB_SCREENSHOT"])
        if server["label"] is not None:  # the number behind the screenshot's caption
            truth, got = server["label"].array > 0, label.array > 0
            dice = 2 * (truth & got).sum() / (truth.sum() + got.sum())
            print(f"screenshot: Dice {dice:.4f} of the saved segmentation against the label")

    # an upload that is not an image: the page says so, and keeps nothing
    garbage = tmp_path / "notes.nrrd"
    garbage.write_text("these are notes, not an image\n")
    driver.find_element(By.ID, "upload").send_keys(str(garbage))
    _wait_for(lambda: "not a readable 3D image" in _text(driver, "message"), 60, "the message")
    assert not (server["data"] / "uploads" / "notes.nrrd").exists()
    print(
        f"browser test: page + load {loaded - started:.1f} s, Segment {segmented - loaded:.1f} s,"
        f" checks {time.monotonic() - segmented:.1f} s"
    )
