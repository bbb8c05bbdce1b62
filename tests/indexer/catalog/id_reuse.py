"""The id-reuse check run on SQLite and PostgreSQL: delete the newest case, add another, compare ids and history."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

from indexer.archive import Archive
from indexer.settings import IndexerSettings
from search_api.app import create_app
from search_api.settings import ApiSettings
from tests.helpers import ThumbnailEncoder, serve_app


def png(seed: int) -> bytes:
    """A small distinct PNG."""
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def check_ids_never_reused(data_dir: Path, database_url: str | None) -> None:
    """Add two cases, delete the newest, add a third: its case and image ids are new, its history its own."""
    settings = IndexerSettings(data_dir=data_dir, database_url=database_url)
    archive = Archive.open(settings, encoder=ThumbnailEncoder())  # type: ignore[arg-type]
    try:
        app = create_app(settings, ApiSettings(auth_disabled=True), archive=archive)
        with serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as client:

            def add(seed: int, report: str) -> dict[str, object]:
                answer = client.post(
                    "/cases",
                    files=[("files", (f"{seed}.png", png(seed), "image/png"))],
                    data={"report": report, "diagnosis": "finding"},
                )
                assert answer.status_code == 201, answer.text
                case: dict[str, object] = client.get(f"/cases/{answer.json()['case_id']}").json()
                return case

            add(1, "first")
            doomed = add(2, "the deleted case's report")
            client.patch(f"/cases/{doomed['case_id']}", json={"report": "edited before deletion"})
            assert client.delete(f"/cases/{doomed['case_id']}").status_code == 204
            fresh = add(3, "third")
            doomed_images = {image["image_id"] for image in doomed["images"]}  # type: ignore[attr-defined]
            fresh_images = {image["image_id"] for image in fresh["images"]}  # type: ignore[attr-defined]
            assert fresh["case_id"] != doomed["case_id"]
            assert not fresh_images & doomed_images
            history = client.get(f"/cases/{fresh['case_id']}/history").json()
            assert [h["field"] for h in history] == ["created"]
            assert "deleted" not in str(history) and "the deleted case" not in str(history)
            # the index holds the new image under its new id, and nothing under the deleted ones
            assert set(archive.index.ids().tolist()) & doomed_images == set()
            assert fresh_images <= set(archive.index.ids().tolist())
    finally:
        archive.close()
