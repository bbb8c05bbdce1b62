"""The archive-wide image clean-up: applied to stored and query images alike, and part of the encoder identity."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw
from pydantic import ValidationError

from imaging import load_image
from imaging.masking import crop_to_body, mask_burned_in_text
from indexer.archive import Archive
from indexer.cleanup import CleanedEncoder, parse_cleanup
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from tests.helpers import ThumbnailEncoder


def _radiograph_with_marker(path: Path, seed: int) -> None:
    """A smooth grey body on black padding with a saturated 'R' marker in a corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    body = (
        0.35
        + 0.25 * np.exp(-(((yy - 128) / 90.0) ** 2 + ((xx - 128) / 70.0) ** 2))
        + 0.02 * rng.random((256, 256))
    )
    pixels = np.zeros((256, 256), dtype=np.float32)
    pixels[16:240, 40:216] = body[16:240, 40:216]
    image = PILImage.fromarray((pixels * 255).astype(np.uint8))
    ImageDraw.Draw(image).text((48, 24), "R PORTABLE", fill=255)
    image.save(path)


def test_the_policy_has_one_order_and_refuses_unknown_steps() -> None:
    assert parse_cleanup("crop_body, MASK_TEXT") == ("mask_text", "crop_body")
    assert parse_cleanup("") == () and parse_cleanup("none") == ()
    with pytest.raises(ValueError, match="use any of mask_text, crop_body"):
        parse_cleanup("mask_text,blur")
    assert IndexerSettings(image_cleanup="crop_body,mask_text").image_cleanup == "mask_text,crop_body"
    with pytest.raises(ValidationError, match="unknown image clean-up"):
        IndexerSettings(image_cleanup="sharpen")


def test_stored_and_query_images_are_cleaned_the_same_way_and_the_identity_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "xrays"
    source.mkdir()
    for i in range(3):
        _radiograph_with_marker(source / f"x{i}.png", i)
    inner = ThumbnailEncoder()
    settings = IndexerSettings(data_dir=tmp_path / "data", image_cleanup="mask_text,crop_body")
    archive = Archive.open(settings, encoder=inner)  # type: ignore[arg-type]
    try:
        assert isinstance(archive.encoder, CleanedEncoder)
        assert archive.encoder.name == "test-thumbnail16+crop_body+mask_text"
        assert ingest_path(archive, source, progress=False, workers=0).indexed == 3
        pixels = load_image(source / "x0.png").pixels
        cleaned = crop_to_body(mask_burned_in_text(pixels))
        assert cleaned.shape != pixels.shape  # the padding went
        expected = inner.embed([cleaned])[0]
        raw = inner.embed([pixels])[0]
        assert float(expected @ raw) < 0.999  # the clean-up changes the vector
        # The stored vector is the cleaned image's; a query through the archive's encoder matches it exactly.
        hit = archive.index.search(archive.encoder.embed([pixels]), 1, allowed_ids=None)[0]
        assert hit.similarities[0] == pytest.approx(1.0, abs=1e-5)
        stored = archive.catalog.embedding_of(int(hit.ids[0]), archive.encoder.name)
        assert stored is not None and np.allclose(stored, expected, atol=1e-5)
    finally:
        archive.close()
    # The same archive opened without the clean-up has no vectors of its own, and says why.
    with caplog.at_level(logging.WARNING, logger="indexer.archive"):
        plain = Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=inner)  # type: ignore[arg-type]
    try:
        assert len(plain.index) == 0
        assert (
            "MEDCBIR_IMAGE_CLEANUP" in caplog.text
            and "test-thumbnail16+crop_body+mask_text: 3" in caplog.text
        )
    finally:
        plain.close()


def test_the_ray_embedding_actor_applies_the_archive_clean_up() -> None:
    from indexer.errors import IndexerError
    from indexer.ingest.ray_tasks import EmbedRows

    actor = EmbedRows(ThumbnailEncoder, "test-thumbnail16+mask_text", ("mask_text",))  # type: ignore[arg-type]
    assert actor.encoder.name == "test-thumbnail16+mask_text"
    with pytest.raises(IndexerError, match="install the same package"):
        EmbedRows(ThumbnailEncoder, "test-thumbnail16+mask_text")  # type: ignore[arg-type]  # no clean-up: refused


def test_explanations_and_region_location_use_the_inner_cnn() -> None:
    from indexer.cleanup import model_encoder, with_cleanup

    inner = ThumbnailEncoder()
    cleaned = with_cleanup(inner, ("crop_body",))  # type: ignore[arg-type]
    assert cleaned is not inner and model_encoder(cleaned) is inner
    assert model_encoder(inner) is inner  # type: ignore[arg-type]
