"""The reading screen in Chromium at 1366x768: the sign-in cookie survives a reload without page scripts
seeing it, and more than three letterboxed neighbour thumbnails are above the fold."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from search_api.app import create_app
from tests.browser.streamlit_app import running_ui
from tests.browser.test_search_screen import CHROMIUM, CHROMIUM_ARGS, SHOTS, WAIT_MS
from tests.helpers import ThumbnailEncoder, dicom_testfile, serve_app
from ui.session_cookie import COOKIE_NAME

pytestmark = pytest.mark.browser

USER, PASSWORD = "reader", "reading screen password 7"
VIEWPORT = {"width": 1366, "height": 768}
MIN_ABOVE_FOLD = 4  # the issue saw three at 1366x768


def _write_archive(root: Path) -> Path:
    """Eight CT slices and four wide PNGs (2:1, to be letterboxed), each its own labeled case with a report."""
    root.mkdir()
    rows = []
    for i in range(8):
        ds = pydicom.dcmread(dicom_testfile("CT_small.dcm"))
        ds.PixelData = np.ascontiguousarray(np.roll(ds.pixel_array, 7 * i, axis=0)).tobytes()
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7.{i}.1.1"
        ds.PatientID = f"RS-{i}"
        ds.save_as(root / f"ct{i}.dcm")
        rows.append(
            (f"ct{i}.dcm", f"RS-CASE-{i}", f"RS-{i}", f"CT report {i}.", "nodule" if i % 2 else "normal")
        )
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 255, (100, 200), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"wide{i}.png")
        rows.append((f"wide{i}.png", f"RS-WIDE-{i}", f"RS-W{i}", "", "artefact"))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def reading_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("reading")
    manifest = _write_archive(root / "source")
    archive = Archive.open(IndexerSettings(data_dir=root / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, root / "source", load_manifest(manifest, ManifestColumns()), progress=False, workers=0
    )
    assert report.indexed == 12, report
    create_user(archive.catalog, USER, PASSWORD, "radiologist")
    with serve_app(create_app(archive=archive)) as url:
        yield url


@pytest.fixture(scope="module")
def reading_ui(reading_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run ui/web_app.py` (what `medcbir ui` runs) on a free loopback port."""
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with running_ui(reading_api, log) as url:
        yield url


@pytest.fixture(scope="module")
def small_screen(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A Chromium page at 1366x768 and its context (for the cookie jar)."""
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
            viewport=VIEWPORT,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page, context
        finally:
            context.close()


def _thumbnail_boxes(page, count: int) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    """The bounding boxes of the neighbour thumbnails, once all `count` have loaded."""
    thumbnails = page.locator('img[alt^="Neighbour "]')
    deadline = time.monotonic() + WAIT_MS / 1000
    while thumbnails.count() != count and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert thumbnails.count() == count
    page.wait_for_function(
        "() => [...document.querySelectorAll('img[alt^=\"Neighbour \"]')].every(i => i.complete && i.naturalWidth)"
    )
    return [thumbnails.nth(i).bounding_box() for i in range(count)]


def test_reload_keeps_the_session_and_the_grid_is_dense_at_1366x768(small_screen, reading_ui: str) -> None:  # type: ignore[no-untyped-def]
    page, context = small_screen
    page.goto(reading_ui)
    page.get_by_role("textbox", name="Username").fill(USER)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Similar case search", exact=True).wait_for()

    # The cookie: set by the UI's server, HttpOnly (page scripts cannot read it), Secure, SameSite=Strict.
    deadline = time.monotonic() + 30
    cookies: list[dict[str, object]] = []
    while not cookies and time.monotonic() < deadline:
        cookies = [c for c in context.cookies() if c["name"] == COOKIE_NAME]  # type: ignore[misc]
        page.wait_for_timeout(200)
    assert len(cookies) == 1, context.cookies()
    cookie = cookies[0]
    assert cookie["httpOnly"] is True and cookie["secure"] is True and cookie["sameSite"] == "Strict"
    lifetime = float(cookie["expires"]) - time.time()  # type: ignore[arg-type]
    assert 30 * 60 - 120 < lifetime <= 30 * 60 + 5  # the token's lifetime (MEDCBIR_API_TOKEN_MINUTES 30)
    assert COOKIE_NAME not in page.evaluate("document.cookie")

    # A reload is a new Streamlit session: still signed in, no login form.
    page.reload()
    page.get_by_text("Similar case search", exact=True).wait_for()
    assert page.get_by_role("button", name="Sign in").count() == 0
    assert USER in page.locator("body").inner_text()

    # Search with an archived case; k = 10 neighbours.
    page.get_by_text("Pick an archived case", exact=True).click()
    page.get_by_text("Similar cases (10)", exact=True).wait_for()
    boxes = _thumbnail_boxes(page, 10)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "reading-1366x768.png"))  # the viewport only: what is above the fold
    above = [b for b in boxes if b["y"] >= 0 and b["y"] + b["height"] <= VIEWPORT["height"]]
    assert len(above) >= MIN_ABOVE_FOLD, boxes
    # Letterboxed in one fixed box: every thumbnail has the same size, square (wide images are not stretched).
    sizes = {(round(b["width"]), round(b["height"])) for b in boxes}
    assert len(sizes) == 1 and abs(boxes[0]["width"] - boxes[0]["height"]) <= 1, sizes
    # The cards wrap into rows: four a row at 1366 px, more on a wider screen, same box size.
    first_row = [b for b in boxes if abs(b["y"] - boxes[0]["y"]) < 1]
    assert len(first_row) == 4, boxes
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_timeout(1000)
    wide = _thumbnail_boxes(page, 10)
    assert len([b for b in wide if abs(b["y"] - wide[0]["y"]) < 1]) >= 6, wide
    assert {(round(b["width"]), round(b["height"])) for b in wide} == sizes
    page.screenshot(path=str(SHOTS / "reading-1920x1080.png"))
    page.set_viewport_size(VIEWPORT)
