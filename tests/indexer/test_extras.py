"""require_extra: one error type and one wording for every optional dependency of the indexer and the API."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from indexer.catalog.repository import postgres_driver_url
from indexer.cli.demo import _skimage_candidates
from indexer.errors import IndexerError
from indexer.evaluation.report import write_plots
from indexer.extras import MissingExtraError, require_extra
from indexer.ingest.ray import RayNotInstalledError, import_ray


def _hint(extra: str) -> str:
    return rf"install the {extra} extra: pip install -e '\.\[{extra}\]'"


def test_an_installed_module_is_returned() -> None:
    assert require_extra("json", "core").dumps([1]) == "[1]"


def test_a_missing_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "medcbir_absent", None)  # what `import` sees when it is not installed
    with pytest.raises(MissingExtraError) as caught:
        require_extra("medcbir_absent", "eval", needed_for="plots need it")
    assert str(caught.value) == "plots need it: install the eval extra: pip install -e '.[eval]'"
    assert isinstance(caught.value, IndexerError) and isinstance(caught.value, ImportError)
    assert caught.value.name == "medcbir_absent"


def test_postgres_ray_and_plots_say_the_same_thing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for module in ("psycopg", "ray", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=_hint("postgres")):
        postgres_driver_url("postgresql://user@host/db")
    with pytest.raises(RayNotInstalledError, match=_hint("ray")):
        import_ray()
    with pytest.raises(MissingExtraError, match=_hint("eval")):
        write_plots(None, tmp_path)  # type: ignore[arg-type]


def test_demo_without_scikit_image_warns_with_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for module in ("skimage", "skimage.data"):  # a demo run earlier in the session may have imported it
        monkeypatch.setitem(sys.modules, module, None)
    with caplog.at_level(logging.WARNING):
        assert _skimage_candidates(tmp_path) == []
    assert "install the demo extra: pip install -e '.[demo]'" in caplog.text
