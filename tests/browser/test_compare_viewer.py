"""The compare viewer in Chromium: search, Compare, window by drag (both sides follow, the page takes it),
keys with the pointer off the viewer (it takes the focus when opened), a frame scrolled on a multi-frame
query, next neighbour by key, the similarity overlay with its legend following zoom and pan, Escape to
close, and a colour query drawn in colour."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from tests.browser.streamlit_app import running_ui
from tests.browser.test_search_screen import CHROMIUM, CHROMIUM_ARGS, WAIT_MS
from tests.helpers import dicom_testfile, serve_app

pytestmark = pytest.mark.browser

USER, PASSWORD = "comparer", "compare viewer password 7"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
EMRI = get_testdata_file("emri_small.dcm")  # 10 frames of MR


def _write_archive(root: Path) -> Path:
    """The 10-frame MR, two single-frame MRs (its frames 2 and 8) and four CT slices, each a case with a report."""
    root.mkdir()
    assert EMRI is not None
    source = pydicom.dcmread(EMRI)
    source.save_as(root / "emri.dcm")
    rows = [("emri.dcm", "CV-EMRI", "CV-P0", "MR series, ten frames. No focal lesion.", "normal")]
    for i, frame in enumerate((2, 8)):
        ds = pydicom.dcmread(EMRI)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[frame]).tobytes()
        ds.NumberOfFrames = 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.8.{i}.1"
        ds.save_as(root / f"mr{i}.dcm")
        rows.append((f"mr{i}.dcm", f"CV-MR-{i}", f"CV-P{i + 1}", f"MR frame {frame}. Report {i}.", "lesion"))
    for i in range(4):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        ds.PixelData = np.ascontiguousarray(np.roll(ds.pixel_array, 9 * i, axis=1)).tobytes()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.9.{i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.9.{i}.1"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.9.{i}.0"
        ds.save_as(root / f"ct{i}.dcm")
        rows.append((f"ct{i}.dcm", f"CV-CT-{i}", f"CV-C{i}", f"CT slice {i}. Nodule report {i}.", "nodule"))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def compare_ui(tmp_path_factory: pytest.TempPathFactory, real_encoder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A live API over the archive above (the real encoder: similarity maps need its feature maps) and the UI."""
    root = tmp_path_factory.mktemp("compare")
    manifest = _write_archive(root / "source")
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=real_encoder)
    report = ingest_path(
        archive, root / "source", load_manifest(manifest, ManifestColumns()), progress=False, workers=0
    )
    assert report.indexed == 7, report
    create_user(archive.catalog, USER, PASSWORD, "radiologist")
    with serve_app(create_app(archive=archive)) as api, running_ui(api, root / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("MEDCBIR_TEST_REQUIRE_CHROMIUM"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1200},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            context.close()


def _data(viewer, name: str) -> str:  # type: ignore[no-untyped-def]
    return str(viewer.locator("body").get_attribute(f"data-{name}") or "")


def _slider_value(page, label: str) -> float:  # type: ignore[no-untyped-def]
    slider = page.locator("[data-testid=stSlider]").filter(has_text=label)
    return float(slider.locator("[data-testid=stSliderThumbValue]").first.inner_text().replace(",", ""))


def _until(check, what: str, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_compare_viewer_window_frames_next_and_overlay(page, compare_ui: str) -> None:  # type: ignore[no-untyped-def]
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.goto(compare_ui)
    page.get_by_role("textbox", name="Username").fill(USER)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Similar case search", exact=True).wait_for()
    assert EMRI is not None
    page.locator("input[type=file]").set_input_files(EMRI)  # the 10-frame MR as the query
    page.get_by_text("Similar cases (7)", exact=True).wait_for()

    # Compare the best neighbour: the viewer opens over the grid, the grid stays.
    page.get_by_role("button", name="Compare").first.click()
    page.mouse.move(5, 5)  # off the viewer before it opens: nothing gives it the focus but its own opening
    frame = page.locator(".st-key-compare_panel iframe")
    frame.wait_for()
    viewer = page.frame_locator(".st-key-compare_panel iframe")
    viewer.locator("body[data-ready='1']").wait_for()
    _until(lambda: _data(viewer, "window-query") != "", "the query viewport to draw")
    assert not [line for line in console if line.startswith("error") and "Viewer error" in line], console
    first_neighbour = _data(viewer, "neighbour")
    before = _data(viewer, "window-query")
    assert _data(viewer, "window-neighbour") == before  # one window on both sides
    assert page.locator('img[alt^="Neighbour "]').count() == 7  # the thumbnails grid is still there
    assert "Report" in viewer.locator(".side").inner_text()

    # The viewer takes the keyboard when it opens: with the pointer off it (nothing clicked in it), keys
    # scroll the frames (the indexed middle frame 5, up to 4 and back).
    page.mouse.move(5, 5)
    assert _data(viewer, "frame-query") == "5"
    page.keyboard.press("ArrowUp")
    _until(lambda: _data(viewer, "frame-query") == "4", "ArrowUp on a viewer just opened, pointer elsewhere")
    page.keyboard.press("ArrowDown")
    _until(lambda: _data(viewer, "frame-query") == "5", "ArrowDown back to the indexed frame")

    # Window/level by a mouse drag on the query: both viewports change, and the page takes the window.
    thumbnail = page.locator('img[alt="Neighbour 2"]')  # an MR neighbour: the window is in its units
    thumbnail_before = thumbnail.get_attribute("src")
    box = viewer.locator("#vp-query").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + 8 * step, y + 6 * step)
    page.mouse.up()
    _until(lambda: _data(viewer, "window-query") != before, "the dragged window")
    after = _data(viewer, "window-query")
    assert _data(viewer, "window-neighbour") == after

    # The viewer reports the window to Python: the page's sliders take it (clamped to their range) and
    # send it back, so the viewer, the sliders and the query preview show one window.
    def page_took_it() -> bool:
        shown = [float(v) for v in _data(viewer, "window-query").split(",")]
        level, width = _slider_value(page, "Level"), _slider_value(page, "Width")
        return (
            shown != [float(v) for v in before.split(",")]
            and abs(shown[0] - level) <= 1
            and abs(shown[1] - width) <= 1
        )

    _until(page_took_it, "the page's Level and Width sliders to take the dragged window")
    assert _data(viewer, "window-neighbour") == _data(viewer, "window-query")
    # The neighbour thumbnails follow the chosen window (re-rendered by the API with it).
    _until(
        lambda: thumbnail.get_attribute("src") != thumbnail_before, "the MR thumbnail to follow the window"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "compare_viewer.png"))

    # A frame scrolled on the multi-frame query: ArrowDown moves from the indexed (middle) frame to the next.
    # The drag's click gave the viewer the focus; it keeps it with the pointer off the viewer.
    start = _data(viewer, "frame-query")
    assert start == "5"
    page.mouse.move(5, 5)
    page.keyboard.press("ArrowDown")
    _until(lambda: _data(viewer, "frame-query") == "6", "the next frame of the query")
    assert viewer.locator("#fq").inner_text() == "frame 7 of 10"

    # The next neighbour by key: reported to Python, which sends the next hit.
    page.keyboard.press("ArrowRight")
    _until(lambda: _data(viewer, "neighbour") not in ("", first_neighbour), "the next neighbour")
    assert "#2 of 7" in page.locator(".st-key-compare_panel").inner_text()

    # The similarity overlay with its legend ("o" in the viewer, or the toggle of the page). The next
    # neighbour reran the page: wait until that run is over, so the key reaches the redrawn viewer.
    _until(lambda: page.locator("[data-testid=stStatusWidget]").count() == 0, "the page's run to end")
    page.mouse.move(5, 5)
    page.keyboard.press("o")
    _until(lambda: _data(viewer, "overlay") == "on", "the similarity overlay", seconds=120)
    assert viewer.locator("#legend").is_visible()
    assert "share of the similarity" in viewer.locator("#legend").inner_text()
    page.screenshot(path=str(SHOTS / "compare_viewer_overlay.png"))
    _overlay_follows_zoom_and_pan(page, viewer)

    # The light theme, for comparison with the dark reading theme (the default).
    assert viewer.locator("body.dark").count() == 1
    page.get_by_text("Dark reading theme").click()
    viewer.locator("body.light").wait_for()
    page.screenshot(path=str(SHOTS / "compare_viewer_light.png"))

    # Escape closes the viewer, also with the focus on the page (the toggle just clicked): the grid stays.
    page.keyboard.press("Escape")
    page.locator(".st-key-compare_panel").wait_for(state="detached")
    assert page.locator('img[alt^="Neighbour "]').count() == 7


def _rect(viewer, side: str) -> list[float]:  # type: ignore[no-untyped-def]
    value = _data(viewer, f"heat-{side}")
    return [float(v) for v in value.split(",")] if value else []


def _frame(page):  # type: ignore[no-untyped-def]
    handle = page.locator(".st-key-compare_panel iframe").element_handle()
    frame = handle.content_frame() if handle is not None else None
    assert frame is not None
    return frame


# The heat canvas's drawn pixels (alpha > 0): their bounding box in canvas pixels, or None.
HEAT_BOX = """side => {
  const canvas = document.getElementById(`heat-${side}`);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let box = null;
  for (let y = 0; y < canvas.height; y += 1) for (let x = 0; x < canvas.width; x += 1) {
    if (data[(y * canvas.width + x) * 4 + 3] === 0) continue;
    box = box ? [Math.min(box[0], x), Math.min(box[1], y), Math.max(box[2], x), Math.max(box[3], y)] : [x, y, x, y];
  }
  return box;
}"""


def _overlay_follows_zoom_and_pan(page, viewer) -> None:  # type: ignore[no-untyped-def]
    """The similarity map stays on the image: zoomed by the wheel it scales with Cornerstone's zoom, panned
    by a right drag it moves by the mouse's distance, and "r" puts it back."""
    _until(lambda: len(_rect(viewer, "query")) == 4, "the overlay's drawn extent")
    start, zoom = _rect(viewer, "query"), float(_data(viewer, "zoom-query"))
    box = viewer.locator("#vp-query").bounding_box()
    assert box is not None
    # Unzoomed, the image fills the square viewport: the map's extent is the viewport's.
    assert abs(max(start[2], start[3]) - (box["width"] - 2)) <= 2, (start, box)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    for _ in range(3):
        page.mouse.wheel(0, -120)
    _until(lambda: float(_data(viewer, "zoom-query") or 0) > zoom * 1.1, "a zoom by the wheel")
    time.sleep(0.5)  # the last wheel step drawn
    zoomed, factor = _rect(viewer, "query"), float(_data(viewer, "zoom-query")) / zoom
    assert abs(zoomed[2] / start[2] - factor) < 0.01 and abs(zoomed[3] / start[3] - factor) < 0.01
    drawn = _frame(page).evaluate(HEAT_BOX, "query")
    assert drawn is not None  # the map's own pixels lie inside the image's extent on the canvas
    assert drawn[0] >= zoomed[0] - 1 and drawn[1] >= zoomed[1] - 1
    assert drawn[2] <= zoomed[0] + zoomed[2] + 1 and drawn[3] <= zoomed[1] + zoomed[3] + 1

    # A right drag pans: the map moves by the mouse's distance (canvas pixels are CSS pixels here).
    page.mouse.down(button="right")
    for step in range(1, 9):
        page.mouse.move(cx + 5 * step, cy + 4 * step)
    page.mouse.up(button="right")
    _until(lambda: _rect(viewer, "query")[:2] != zoomed[:2], "a pan by a right drag")
    time.sleep(0.5)
    panned = _rect(viewer, "query")
    assert abs(panned[0] - zoomed[0] - 40) <= 1.5 and abs(panned[1] - zoomed[1] - 32) <= 1.5, (zoomed, panned)
    assert abs(panned[2] - zoomed[2]) < 0.5 and abs(panned[3] - zoomed[3]) < 0.5
    page.screenshot(path=str(SHOTS / "compare_viewer_zoomed.png"))

    page.mouse.move(5, 5)
    page.keyboard.press("r")  # reset: the map back on the unzoomed image
    _until(
        lambda: all(abs(a - b) < 0.5 for a, b in zip(_rect(viewer, "query"), start, strict=True)), "a reset"
    )


# Of the Cornerstone canvas of a side: [pixels with |R - G| > 30, pixels not black].
CANVAS_COLOUR = """side => {
  const canvas = document.querySelector(`#vp-${side} canvas`);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0, lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] + data[i + 1] + data[i + 2] < 30) continue;
    lit += 1;
    if (Math.abs(data[i] - data[i + 1]) > 30) coloured += 1;
  }
  return [coloured, lit];
}"""


def test_a_colour_query_is_drawn_in_colour(page, compare_ui: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image
    from skimage import data as skdata

    retina = tmp_path / "retina.png"
    Image.fromarray(np.asarray(skdata.retina())).resize((512, 512)).save(retina)
    if "Similar case search" not in page.content():  # run alone: sign in first
        page.goto(compare_ui)
        page.get_by_role("textbox", name="Username").fill(USER)
        page.get_by_role("textbox", name="Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("Similar case search", exact=True).wait_for()
    page.locator("input[type=file]").set_input_files(str(retina))
    viewer = page.frame_locator(".st-key-compare_panel iframe")

    def opened_in_colour() -> bool:
        # Compare on the new search's first neighbour (a click on the old grid is closed by the new search).
        if page.locator(".st-key-compare_panel iframe").count() == 0:
            page.get_by_role("button", name="Compare").first.click()
            return False
        return _data(viewer, "colour-query") == "1" and _data(viewer, "window-query") != ""

    _until(opened_in_colour, "the colour query in the viewer", seconds=120)
    time.sleep(0.5)
    assert "colour (window/level off)" in viewer.locator("#qlabel").inner_text()
    readout = viewer.locator("#window").inner_text()
    assert readout.startswith("Neighbour L ") and "window/level off" in readout  # the grey side's window
    frame = _frame(page)
    coloured, lit = frame.evaluate(CANVAS_COLOUR, "query")
    assert lit > 1000 and coloured / lit > 0.3, (coloured, lit)  # the red fundus is drawn red, not grey
    coloured, lit = frame.evaluate(CANVAS_COLOUR, "neighbour")
    assert lit > 1000 and coloured == 0  # the grey MR/CT neighbour stays grey
    page.screenshot(path=str(SHOTS / "compare_viewer_colour.png"))
