"""Audit intent and outcome: a changing action's intent is recorded before it runs, so a kill -9 leaves an incomplete row."""

from __future__ import annotations

import contextlib
import io
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

from indexer.catalog import Catalog
from indexer.governance.audit import audit_records, incomplete_actions
from tests.e2e.test_cli_end_to_end import _env, _serve, _stop


def _png(seed: int, side: int = 128) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side), dtype=np.uint8)).save(
        out, format="PNG"
    )
    return out.getvalue()


def _rows(catalog: Catalog, request_id: str) -> list[tuple[str, str]]:
    _, rows = audit_records(catalog, limit=10_000)
    return [(r.action, r.outcome) for r in reversed(rows) if r.request_id == request_id]


def test_a_killed_admin_ingest_leaves_an_incomplete_audit_row(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    process, url = _serve(env)
    catalog = Catalog(f"sqlite:///{(tmp_path / 'data' / 'catalog.sqlite3').resolve()}")
    try:
        done = uuid.uuid4().hex
        answer = httpx.post(
            f"{url}/cases", files=[("files", ("a.png", _png(1), "image/png"))], headers={"X-Request-ID": done}
        )
        assert answer.status_code == 201, answer.text
        assert _rows(catalog, done) == [("add_case", "started"), ("add_case", "success")]
        bundle = io.BytesIO()
        with zipfile.ZipFile(bundle, "w") as archive:
            for i in range(300):
                archive.writestr(f"img{i}.png", _png(100 + i, 192))
        killed = uuid.uuid4().hex

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
                httpx.post(
                    f"{url}/admin/ingest",
                    files={"archive": ("a.zip", bundle.getvalue(), "application/zip")},
                    headers={"X-Request-ID": killed},
                    timeout=600,
                )

        sender = threading.Thread(target=post, daemon=True)
        sender.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ("ingest", "started") not in _rows(catalog, killed):
            time.sleep(0.2)
        assert _rows(catalog, killed) == [("ingest", "started")], "no intent row before the ingest ran"
        time.sleep(2.0)  # mid-ingest
        process.kill()
        process.wait(timeout=30)
        sender.join(timeout=30)
        incomplete = [r.request_id for r in incomplete_actions(catalog)]
        assert killed in incomplete and done not in incomplete
        assert _rows(catalog, killed) == [("ingest", "started")]  # no outcome: the kill left it visible
    finally:
        catalog.dispose()
        if process.poll() is None:
            _stop(process)
