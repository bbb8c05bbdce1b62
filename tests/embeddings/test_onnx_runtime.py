"""The opt-in ONNX Runtime backend gives the torch vectors (cosine >= 0.999) on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings import EmbeddingsError


def _with_backend(real_encoder, backend: str):  # type: ignore[no-untyped-def]
    """The session's real encoder rebuilt on another backend (skipped without the onnx extra)."""
    pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    pytest.importorskip("onnx", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    from embeddings.encoder import Encoder

    return Encoder(
        real_encoder.model,
        name=real_encoder.name,
        model_name=real_encoder.model_name,
        device="cpu",
        backend=backend,
    )


def test_onnxruntime_backend_matches_torch(real_encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from embeddings.encoder import Encoder

    onnx = _with_backend(real_encoder, "onnxruntime")
    rng = np.random.default_rng(0)
    images = [rng.random((300, 260, 3), dtype=np.float32) for _ in range(3)]
    want = real_encoder.embed(images)
    got = onnx.embed(images)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.min(np.sum(want * got, axis=1))) >= 0.999
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "tensorrt")
    with pytest.raises(EmbeddingsError, match="unknown backend"):
        Encoder(real_encoder.model, name="x", model_name="y", device="cpu")


def test_auto_backend_takes_onnxruntime_on_cpu_with_the_same_vectors(real_encoder) -> None:  # type: ignore[no-untyped-def]
    auto = _with_backend(real_encoder, "auto")
    assert auto.backend == "onnxruntime" and real_encoder.backend == "torch"
    rng = np.random.default_rng(1)
    images = [rng.random((224, 224, 3), dtype=np.float32) for _ in range(2)]
    assert float(np.min(np.sum(real_encoder.embed(images) * auto.embed(images), axis=1))) >= 0.999


def test_serve_defaults_to_the_auto_backend_unless_one_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from indexer.cli.options import settings_from
    from indexer.cli.serve import api_env

    monkeypatch.delenv("MEDCBIR_EMBEDDINGS_BACKEND", raising=False)
    assert api_env(settings_from(tmp_path))["MEDCBIR_EMBEDDINGS_BACKEND"] == "auto"
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "torch")
    assert api_env(settings_from(tmp_path))["MEDCBIR_EMBEDDINGS_BACKEND"] == "torch"
