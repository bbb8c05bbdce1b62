"""ONNX Runtime, the default CPU forward pass ("auto"), gives the torch vectors; its export is cached by weights."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

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
    torch_forward = _with_backend(real_encoder, "torch")
    rng = np.random.default_rng(0)
    images = [rng.random((300, 260, 3), dtype=np.float32) for _ in range(3)]
    want = torch_forward.embed(images)
    got = onnx.embed(images)
    assert (onnx.embedded_with, torch_forward.embedded_with) == ("onnxruntime", "torch")
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.min(np.sum(want * got, axis=1))) >= 0.999
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "tensorrt")
    with pytest.raises(EmbeddingsError, match="unknown backend"):
        Encoder(real_encoder.model, name="x", model_name="y", device="cpu")


def test_the_default_encoder_runs_onnxruntime_on_cpu_with_the_torch_vectors(real_encoder) -> None:  # type: ignore[no-untyped-def]
    torch_forward = _with_backend(real_encoder, "torch")
    assert real_encoder.requested_backend == "auto" and real_encoder.backend == "onnxruntime"
    assert torch_forward.backend == "torch"
    rng = np.random.default_rng(1)
    images = [rng.random((224, 224, 3), dtype=np.float32) for _ in range(2)]
    assert float(np.min(np.sum(torch_forward.embed(images) * real_encoder.embed(images), axis=1))) >= 0.999


def test_an_archive_indexed_with_torch_finds_its_twins_through_onnxruntime(real_encoder) -> None:  # type: ignore[no-untyped-def]
    """Vectors stored by a torch run are found again at similarity ~1.0 by an ONNX Runtime query."""
    from indexer.vectors.index import VectorIndex

    torch_forward = _with_backend(real_encoder, "torch")
    rng = np.random.default_rng(2)
    images = [rng.random((256, 240, 3), dtype=np.float32) for _ in range(6)]
    index = VectorIndex(real_encoder.dim, real_encoder.name)
    index.add(np.arange(1, 7, dtype=np.int64), torch_forward.embed(images))
    for row, image in enumerate(images, start=1):
        found = index.search(real_encoder.embed_one(image), k=1)[0]
        assert int(found.ids[0]) == row and float(found.similarities[0]) >= 0.9999


def test_the_backend_is_chosen_at_the_first_embed_not_when_the_encoder_is_built(
    real_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Commands that only need the encoder's name and dim (verify, rebuild-index) never export it."""
    import embeddings.encoder

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise EmbeddingsError("no ONNX Runtime in this test")

    monkeypatch.setattr(embeddings.encoder, "OnnxForward", refuse)
    auto = _with_backend(real_encoder, "auto")
    assert auto.embedded_with is None and auto.requested_backend == "auto"
    assert auto.backend == "torch"  # chosen now: ONNX Runtime refused, so torch
    assert auto.embed_one(np.full((64, 64, 3), 0.5, np.float32)).shape == (real_encoder.dim,)
    assert auto.embedded_with == "torch"
    insisting = _with_backend(real_encoder, "onnxruntime")
    with pytest.raises(EmbeddingsError, match="no ONNX Runtime"):
        insisting.embed_one(np.full((64, 64, 3), 0.5, np.float32))


class _Tiny(torch.nn.Module):
    """A pooled-feature model small enough to export in a blink."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.num_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3)) + 0.1


def test_the_export_is_cached_by_weights_and_a_cached_file_that_disagrees_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    import embeddings.onnx_runtime as onnx_runtime
    from embeddings.onnx_runtime import OnnxForward, weights_fingerprint

    monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
    model, other = _Tiny(0).eval(), _Tiny(1).eval()
    x = torch.rand(3, 3, 16, 16)
    first = OnnxForward(model, (16, 16), threads=1, cache_dir=tmp_path)
    key = weights_fingerprint(model, (16, 16), 1)
    assert key != weights_fingerprint(other, (16, 16), 1)
    cached = tmp_path / key / "encoder.onnx"
    assert cached.is_file()

    # a new process (no session kept) loads the file instead of exporting again
    monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
    real_export = onnx_runtime.export_onnx
    monkeypatch.setattr(onnx_runtime, "export_onnx", lambda *a: pytest.fail("exported again"))
    second = OnnxForward(model, (16, 16), threads=1, cache_dir=tmp_path)
    torch.testing.assert_close(second(x), first(x))

    # a cached file of other weights (stale, tampered) is caught by the check and exported again
    real_export(other, x[:1], cached)
    monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(onnx_runtime, "export_onnx", real_export)
    third = OnnxForward(model, (16, 16), threads=1, cache_dir=tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(third(x), model(x), atol=1e-5, rtol=1e-4)

    # a damaged file (disk trouble) is exported again too
    cached.write_bytes(b"not an onnx model")
    monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
    fourth = OnnxForward(model, (16, 16), threads=1, cache_dir=tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(fourth(x), model(x), atol=1e-5, rtol=1e-4)


def test_the_cache_keeps_the_most_recently_used_exports_and_never_random_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install "medcbir[onnx]"')
    import os

    import embeddings.onnx_runtime as onnx_runtime
    from embeddings.encoder import Encoder
    from embeddings.onnx_runtime import OnnxForward, weights_fingerprint

    monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(onnx_runtime, "CACHE_KEPT", 2)
    models = [_Tiny(seed).eval() for seed in range(3)]
    for age, model in enumerate(models):
        OnnxForward(model, (16, 16), threads=1, cache_dir=tmp_path)
        folder = tmp_path / weights_fingerprint(model, (16, 16), 1)
        os.utime(folder, (1000.0 + age, 1000.0 + age))  # exported in this order
    monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
    OnnxForward(models[0], (16, 16), threads=1, cache_dir=tmp_path)  # used again: the most recent now
    OnnxForward(_Tiny(3).eval(), (16, 16), threads=1, cache_dir=tmp_path)  # a new one prunes the oldest
    kept = {p.name for p in tmp_path.iterdir()}
    assert len(kept) == 2 and weights_fingerprint(models[0], (16, 16), 1) in kept

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    for name, keeps in (("tiny@random", False), ("tiny@weights-1234", True)):
        encoder = Encoder(
            _Tiny(4).eval(), name=name, model_name="tiny", device="cpu", backend="onnxruntime",
            data_config={"input_size": (3, 16, 16), "crop_pct": 1.0, "interpolation": "bilinear",
                         "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        )  # fmt: skip
        monkeypatch.setattr(onnx_runtime, "_SESSIONS", OrderedDict())
        assert encoder.backend == "onnxruntime"
        assert (tmp_path / "home-cache" / "medcbir" / "onnx").is_dir() == keeps, name


def test_serve_leaves_the_backend_to_the_embeddings_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from indexer.cli.options import settings_from
    from indexer.cli.serve import api_env

    monkeypatch.delenv("MEDCBIR_EMBEDDINGS_BACKEND", raising=False)
    assert "MEDCBIR_EMBEDDINGS_BACKEND" not in api_env(settings_from(tmp_path))
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "torch")
    assert api_env(settings_from(tmp_path))["MEDCBIR_EMBEDDINGS_BACKEND"] == "torch"
