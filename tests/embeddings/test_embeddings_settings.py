"""The forward-pass backend is an EmbeddingsSettings field (MEDCBIR_EMBEDDINGS_BACKEND), read when created."""

from __future__ import annotations

import pytest

from embeddings import EmbeddingsError, EmbeddingsSettings
from embeddings.settings import BACKENDS, configured_backend


def test_backend_defaults_to_auto_and_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDCBIR_EMBEDDINGS_BACKEND", raising=False)
    assert EmbeddingsSettings().backend == "auto" == configured_backend()
    for backend in BACKENDS:
        monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", backend)
        assert EmbeddingsSettings().backend == backend == configured_backend()
    assert set(BACKENDS) == {"torch", "onnxruntime", "auto"}


def test_an_unknown_backend_names_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "tensorrt")
    with pytest.raises(EmbeddingsError, match=r"unknown backend 'tensorrt'.*torch, onnxruntime, auto"):
        configured_backend()


def test_the_encoder_takes_its_backend_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from embeddings import create_encoder

    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "torch")
    assert create_encoder("resnet18", device="cpu", pretrained=False).backend == "torch"
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "tensorrt")
    with pytest.raises(EmbeddingsError, match="unknown backend"):
        create_encoder("resnet18", device="cpu", pretrained=False)
