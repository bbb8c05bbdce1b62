"""The search screen in a real browser: Debian's Chromium driven by Playwright, live API and live Streamlit.

Screenshots go to artifacts/screenshots/ (the README names the folder); the assertions are on page text.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.streamlit_app import running_ui
from tests.conftest import TEST_PASSWORD, TEST_USERS
from tests.helpers import dicom_testfile

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000
CARD_TITLE = re.compile(r"^#\d+ · similarity \d\.\d{3}$")


@pytest.fixture(scope="module")
def ui_url(live_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run ui/web_app.py` (what `medcbir ui` runs) on a free loopback port, pointed at the live engine API."""
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with running_ui(live_api_url, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A fresh Chromium profile and page; skips only when Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("MEDCBIR_TEST_REQUIRE_CHROMIUM"):  # CI installed it: absence is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1400},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            context.close()


def _shot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.wait_for_timeout(500)  # let images and the chart settle
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _wait_for_results(page, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Wait until the grid shows `count` neighbours and Streamlit is idle; the card titles."""
    page.get_by_text(f"Similar cases ({count})", exact=True).wait_for()
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT_MS
    )
    page.get_by_text(f"Similar cases ({count})", exact=True).wait_for()
    # Stale cards of the previous run can linger for a moment on a loaded machine: wait them out.
    deadline = time.monotonic() + WAIT_MS / 1000
    titles = page.get_by_text(CARD_TITLE).all_inner_texts()
    while len(titles) != count and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        titles = page.get_by_text(CARD_TITLE).all_inner_texts()
    assert len(titles) == count, titles
    return titles


def test_upload_change_k_and_filter_modality(browser_page, ui_url: str) -> None:  # type: ignore[no-untyped-def]
    page = browser_page
    page.goto(ui_url)
    # Sign in through the login screen, as a radiologist would.
    page.get_by_text("Sign in", exact=True).first.wait_for()
    _shot(page, "00-login")
    page.get_by_role("textbox", name="Username").fill(TEST_USERS["radiologist"])
    page.get_by_role("textbox", name="Password").fill(TEST_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Similar case search", exact=True).wait_for()
    assert TEST_USERS["radiologist"] in page.locator("body").inner_text()
    page.get_by_text("Upload a query image").wait_for()
    _shot(page, "01-empty")

    # Upload a JPEG 2000 MR: its uncompressed twin is in the archive.
    page.locator("input[type=file]").set_input_files(str(dicom_testfile("MR2_J2KI.dcm")))
    titles = _wait_for_results(page, 7)  # the whole small archive, best first
    assert titles[0].startswith("#1 · similarity ")
    assert float(titles[0].rsplit(" ", 1)[1]) >= 0.99
    body = page.locator("body").inner_text()
    # A trusted vote shows its label big; an unreliable one (7 mixed cases: low confidence) only leans.
    assert ("Predicted label" in body and "Confidence" in body) or (
        "No reliable match" in body and "Leaning " in body and "Predicted label" not in body
    ), body
    assert "Diagnosis: lesion, follow-up" in body
    assert "Case: C-MR-1" in body
    assert "Modality: MR" in body and "Study description: SHOULDER" in body
    page.locator("[data-testid=stVegaLiteChart]").first.wait_for(timeout=30_000)  # charts draw last
    assert page.locator("[data-testid=stVegaLiteChart]").count() == 1
    assert _eventually_count(page.get_by_text("Open case"), 7) == 7  # one per hit, drawn after the cards
    _shot(page, "02-search")

    # Fewer neighbours: k from 10 to 3 with the keyboard on the slider.
    slider = page.get_by_role("slider", name=re.compile("Neighbours"))
    slider.focus()
    slider.press("Home")
    page.wait_for_timeout(300)
    slider.press("ArrowRight")
    slider.press("ArrowRight")
    titles = _wait_for_results(page, 3)
    assert [t.split(" ")[0] for t in titles] == ["#1", "#2", "#3"]
    _shot(page, "03-k3")

    # Only CT: the archive holds one CT image.
    page.get_by_role("combobox", name=re.compile("Modality filter")).click()
    page.get_by_role("option", name="CT", exact=True).click()
    _wait_for_results(page, 1)
    body = page.locator("body").inner_text()
    assert "Modality: CT" in body and "Case: C-CT-1" in body and "Diagnosis: ct finding" in body
    assert "1 pass the filters" in body
    _shot(page, "04-ct-only")


def _eventually_count(locator: Any, wanted: int, timeout_s: float = 30.0) -> int:
    """The locator's count once it reaches `wanted`, or the last count seen after `timeout_s` (no sleep race)."""
    deadline = time.monotonic() + timeout_s
    count = locator.count()
    while count != wanted and time.monotonic() < deadline:
        time.sleep(0.25)
        count = locator.count()
    return int(count)
