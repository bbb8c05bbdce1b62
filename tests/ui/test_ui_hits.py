"""The neighbour cards: letterboxed thumbnails (not stretched, not cropped) and no "Full report" without a report."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from ui.hits import letterbox


def _png(width: int, height: int) -> bytes:
    pixels = np.full((height, width, 3), 200, dtype=np.uint8)
    pixels[:, 0] = (255, 0, 0)  # a red left edge and a blue right edge show where the image went
    pixels[:, -1] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_wide_image_is_centred_in_a_black_square_at_its_own_aspect() -> None:
    boxed = np.asarray(Image.open(io.BytesIO(letterbox(_png(60, 20)))).convert("RGB"))
    assert boxed.shape == (60, 60, 3)
    assert (boxed[:20] == 0).all() and (boxed[40:] == 0).all()  # bands above and below
    assert (boxed[20:40, 1:-1] == 200).all()  # the image itself, unscaled
    assert (boxed[20:40, 0] == (255, 0, 0)).all() and (boxed[20:40, -1] == (0, 0, 255)).all()  # not cropped


def test_a_tall_image_gets_bands_left_and_right() -> None:
    boxed = np.asarray(Image.open(io.BytesIO(letterbox(_png(10, 30)))).convert("RGB"))
    assert boxed.shape == (30, 30, 3)
    assert (boxed[:, :10] == 0).all() and (boxed[:, 20:] == 0).all()
    assert (boxed[:, 10] == (255, 0, 0)).all() and (boxed[:, 19] == (0, 0, 255)).all()


def test_square_images_and_junk_pass_through() -> None:
    square = _png(16, 16)
    assert letterbox(square) == square
    assert letterbox(b"not an image") == b"not an image"


def _card_app() -> None:
    from search_api.schemas import Hit
    from tests.ui.conftest import contract_hit, make_png
    from ui.hits import render_hits

    hits: list[Hit] = [contract_hit(0), contract_hit(1).model_copy(update={"report": None})]
    render_hits(hits, lambda _url: make_png((30, 10)), link=False)


def test_no_full_report_under_no_report() -> None:
    at = AppTest.from_function(_card_app, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    texts = [t.value for t in at.text]
    assert texts.count("No report.") == 1
    # The card with a report offers it in full; the one without offers only its study and series UIDs.
    assert [e.label for e in at.expander] == ["Full report", "Study and series"]
    uids = [t for t in texts if t.startswith("Study UID:")]
    assert len(uids) == 2
    assert len(at.image) == 2


def test_long_case_keys_are_shortened_to_one_line() -> None:
    from ui.hits import short_key

    assert short_key("CASE-000") == "CASE-000"
    uid = "study:1.2.276.0.7230010.3.1.2.2964853761.1521713414.1800996"
    short = short_key(uid)
    assert len(short) == 28 and short.startswith("study:1.2.276.0.72") and short.endswith("1800996")
