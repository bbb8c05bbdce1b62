"""`medcbir demo` as a newcomer meets it, in Chromium: labeled neighbours with reports, the case finder, and
an uncertain prediction that shows no big label and pre-fills no diagnosis. Saves the README screenshots."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser.test_compare_viewer import _data, _until
from tests.browser.test_search_screen import CHROMIUM, CHROMIUM_ARGS, SHOTS, WAIT_MS
from tests.helpers import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
README_SHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1600, "height": 1000}


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"medcbir demo exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def demo_ui(built_demo: tuple[Path, subprocess.CompletedProcess[str]]) -> Iterator[str]:
    """`medcbir demo` (API and UI, no sign-in on loopback) over the session's built demo; the UI's URL."""
    data_dir, first = built_demo
    assert first.returncode == 0, first.stderr[-3000:]
    api_port, ui_port = free_port(), free_port()
    log = data_dir / "demo-serve.log"
    command = [
        sys.executable, "-m", "indexer.cli", "demo", "--data-dir", str(data_dir),
        "--api-port", str(api_port), "--ui-port", str(ui_port),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ)
        )
    try:
        _wait(f"http://127.0.0.1:{api_port}/health", process, log)
        _wait(f"http://127.0.0.1:{ui_port}/_stcore/health", process, log)
        yield f"http://127.0.0.1:{ui_port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


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
            str(tmp_path_factory.mktemp("chromium-demo")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
        )
        context.set_default_timeout(WAIT_MS)
        yield context.pages[0] if context.pages else context.new_page()
        context.close()


def _noise_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    path.write_bytes(buffer.getvalue())
    return path


def test_the_demo_shows_labeled_neighbours_with_reports_and_an_honest_uncertain_prediction(
    page,  # type: ignore[no-untyped-def]
    demo_ui: str,
    tmp_path: Path,
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    README_SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(demo_ui)
    page.get_by_text("Similar case search", exact=True).wait_for()  # no sign-in: the demo on loopback

    # find a case by a diagnosis word, pick it from the thumbnails
    page.get_by_text("Pick an archived case", exact=True).click()
    finder = page.get_by_role("textbox", name="Find a case")
    finder.fill("pneumocystis")
    finder.press("Enter")
    first = page.locator("[class*=st-key-pick_case_] button").first
    page.get_by_text("matching cases: thumbnails").first.wait_for()
    first.wait_for()
    first.click()
    page.get_by_text("Similar cases (10)", exact=True).wait_for()
    page.get_by_text("Open case").nth(9).wait_for()
    page.wait_for_timeout(1500)  # thumbnails and charts settle
    body = page.locator("body").inner_text()
    assert "Pneumocystis" in body  # the query case's and its neighbours' diagnoses
    assert "COVID-19" in body or "No Finding" in body  # other labeled neighbours
    assert "Report" in body or "report" in body
    page.screenshot(path=str(README_SHOTS / "search.png"))
    page.screenshot(path=str(SHOTS / "demo-search.png"), full_page=True)

    # the compare viewer on the demo: query | neighbour, window by drag, next neighbour by key, overlay
    page.get_by_role("button", name="Compare").first.click()
    viewer = page.frame_locator(".st-key-compare_panel iframe")
    viewer.locator("body[data-ready='1']").wait_for()
    _until(lambda: _data(viewer, "window-query") != "", "the query viewport to draw")
    assert "Report" in viewer.locator(".side").inner_text()
    before, first_neighbour = _data(viewer, "window-query"), _data(viewer, "neighbour")
    box = viewer.locator("#vp-query").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + 8 * step, y + 6 * step)
    page.mouse.up()
    _until(lambda: _data(viewer, "window-query") != before, "the dragged window")
    assert _data(viewer, "window-neighbour") == _data(viewer, "window-query")  # linked
    viewer.locator("#vp-query").hover()
    page.keyboard.press("ArrowRight")
    _until(lambda: _data(viewer, "neighbour") not in ("", first_neighbour), "the next neighbour")
    assert "#2 of 10" in page.locator(".st-key-compare_panel").inner_text()
    viewer.locator("#vp-query").hover()
    page.keyboard.press("o")
    _until(lambda: _data(viewer, "overlay") == "on", "the similarity overlay", seconds=120)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(README_SHOTS / "compare.png"))
    page.get_by_role("button", name="Close viewer").click()

    # an unrelated picture: no reliable match, no big label, nothing pre-filled to save
    page.get_by_text("Upload an image", exact=True).click()
    page.locator("input[type=file]").set_input_files(str(_noise_png(tmp_path / "noise.png")))
    # the archived case's answer also said "No reliable match" (low confidence): wait for the noise's own
    page.get_by_text(
        "No reliable match: the query is far from every stored case", exact=False
    ).first.wait_for()
    body = page.locator("body").inner_text()
    assert page.locator("[data-testid=stMetric]").count() == 0  # no "Predicted label" in large type
    page.get_by_text("Save this query as a new case").click()
    diagnosis = page.get_by_role("textbox", name="Diagnosis (; between labels)")
    diagnosis.wait_for()
    assert diagnosis.input_value() == ""
    page.screenshot(path=str(README_SHOTS / "uncertain.png"))
