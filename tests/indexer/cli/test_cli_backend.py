"""`medcbir index` says which forward pass embedded; by default ("auto") it is ONNX Runtime on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from indexer.cli import app


def test_index_says_the_default_backend_that_embedded(
    tmp_path: Path, real_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    monkeypatch.delenv("MEDCBIR_EMBEDDINGS_BACKEND", raising=False)
    for name in ("MEDCBIR_DATABASE_URL", "DATABASE_URL", "MEDCBIR_ENCODER", "MEDCBIR_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("indexer.archive.create_encoder", lambda *args, **kwargs: real_encoder)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        PILImage.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    data = ["--data-dir", str(tmp_path / "data")]
    result = CliRunner().invoke(app, ["index", str(images), "--workers", "0", "--no-progress", *data])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "indexed 2" in result.output
    assert "embedded with the onnxruntime forward pass" in result.output
    stats = CliRunner().invoke(app, ["stats", *data])
    assert "backend:       auto: onnxruntime on CPU" in stats.output
