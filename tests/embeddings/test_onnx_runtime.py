"""The opt-in ONNX Runtime backend gives the torch vectors (cosine >= 0.999) on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings import EmbeddingsError


def test_onnxruntime_backend_matches_torch(real_encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    pytest.importorskip("onnx", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    from embeddings.encoder import Encoder

    onnx = Encoder(
        real_encoder.model,
        name=real_encoder.name,
        model_name=real_encoder.model_name,
        device="cpu",
        backend="onnxruntime",
    )
    rng = np.random.default_rng(0)
    images = [rng.random((300, 260, 3), dtype=np.float32) for _ in range(3)]
    want = real_encoder.embed(images)
    got = onnx.embed(images)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.min(np.sum(want * got, axis=1))) >= 0.999
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "tensorrt")
    with pytest.raises(EmbeddingsError, match="unknown backend"):
        Encoder(real_encoder.model, name="x", model_name="y", device="cpu")
