"""The search page's explanation toggles against the live engine API with a trained head."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from indexer.governance.accounts import create_user
from indexer.prediction.versions import train_predictors
from search_api.app import create_app
from tests.helpers import serve_app
from tests.search_api.test_explanations import build_explained_archive
from tests.ui.test_ui_app import start_app, upload

PASSWORD = "a long ui explanation password 3"


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory, real_encoder) -> Iterator[tuple[str, str, bytes]]:  # type: ignore[no-untyped-def]
    """(API URL, a radiologist's token, a query PNG) over the explained archive with a trained head."""
    root = tmp_path_factory.mktemp("ui-explain")
    archive, _ids, sources = build_explained_archive(root, real_encoder)
    assert train_predictors(archive.catalog, archive.encoder.name, root / "data").head is not None
    create_user(archive.catalog, "ui-rad", PASSWORD, "radiologist")
    try:
        with serve_app(create_app(archive=archive)) as url:
            token = httpx.post(f"{url}/token", data={"username": "ui-rad", "password": PASSWORD}).json()
            yield url, token["access_token"], sources["disc-left"]
    finally:
        archive.close()


def test_why_similar_and_grad_cam_toggles_show_the_api_pngs(
    monkeypatch: pytest.MonkeyPatch, explained: tuple[str, str, bytes]
) -> None:
    url, token, query = explained
    at = upload(start_app(monkeypatch, url, token), query, "disc-left.png")
    assert not at.exception, [e.value for e in at.exception]
    assert "Trained head" in [s.value for s in at.subheader]
    shown = len(at.image)  # the query preview and the neighbours' thumbnails; no explanation yet
    toggles = [c for c in at.checkbox if c.label == "Why similar?"]
    assert len(toggles) == len([m for m in at.markdown if "similarity" in m.value]) > 0

    toggles[0].check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [w.value for w in at.warning if w.value.startswith("No similarity map")]
    assert len(at.image) == shown + 1
    assert any("drove this similarity" in c.value for c in at.caption)

    at.checkbox(key="head_gradcam").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [w.value for w in at.warning if w.value.startswith("No Grad-CAM")]
    assert len(at.image) == shown + 2
    assert any("Grad-CAM of the head's predicted class" in c.value for c in at.caption)
