"""The registry: names, timm fallback, local checkpoints, download failures and settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch

import embeddings
from embeddings import (
    EmbeddingsSettings,
    UnknownEncoderError,
    WeightsNotFoundError,
    create_encoder,
    create_encoder_from_settings,
    list_encoders,
    register_encoder,
)


def test_registered_names() -> None:
    assert list_encoders() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert embeddings.DEFAULT_ENCODER == "efficientnet_lite0"


def test_unknown_name_lists_registered_encoders() -> None:
    with pytest.raises(UnknownEncoderError, match=r"no_such_net.*efficientnet_lite0"):
        create_encoder("no_such_net")
    assert issubclass(UnknownEncoderError, KeyError)


def test_random_weights_for_tests() -> None:
    encoder = create_encoder("efficientnet_lite0", pretrained=False, device="cpu")
    assert encoder.name == "efficientnet_lite0@random"
    assert encoder.dim == 1280
    tiny = create_encoder("resnet18", pretrained=False, device="cpu")
    assert tiny.name == "resnet18@random"
    assert tiny.dim == 512
    assert tiny.model_name == "resnet18"
    assert tiny.preprocessing.crop_pct == 0.95  # resnet18's own data config, not lite0's
    assert tiny.preprocessing.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_is_loaded_from_the_file(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        source.get_parameter("conv1.weight").normal_(0.0, 3.0)  # unmistakable values
    path = tmp_path / f"resnet18-mine{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    encoder = create_encoder("resnet18", checkpoint=path, device="cpu")
    loaded = encoder.model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert (
        encoder.name.startswith("resnet18@resnet18-mine-")
        and len(encoder.name) == len("resnet18@resnet18-mine-") + 8
    )
    vector = encoder.embed_one(np.full((64, 64, 3), 0.5, dtype=np.float32))
    assert vector.shape == (512,)


def test_checkpoint_for_another_architecture_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(embeddings.EmbeddingsError, match="do not fit"):
        create_encoder("resnet34", checkpoint=path, device="cpu")


def test_lite0_accepts_a_timm_style_checkpoint(tmp_path: Path, lite0: embeddings.Encoder) -> None:
    path = tmp_path / "lite0-timm.pth"
    torch.save(lite0.model.state_dict(), path)
    again = create_encoder("efficientnet_lite0", checkpoint=path, device="cpu")
    assert again.name.startswith("efficientnet_lite0@lite0-timm-")
    image = np.random.default_rng(1).random((100, 120, 3), dtype=np.float32)
    np.testing.assert_allclose(again.embed_one(image), lite0.embed_one(image), atol=1e-6)


def test_missing_checkpoint_file() -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_encoder("resnet18", checkpoint="/nonexistent/weights.pth")


def test_download_failure_says_how_to_work_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    real_create_model = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        if pretrained:
            raise OSError("Name or service not known")
        return real_create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsNotFoundError, match=r"--checkpoint FILE.*efficientnet_lite0"):
        create_encoder("resnet18")


def test_custom_encoder_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    from embeddings import registry

    list_encoders()  # built-ins first, so the copy below holds them
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))

    @register_encoder
    def tiny_resnet_for_tests(
        *, device: str | None, checkpoint: Path | None, batch_size: int, pretrained: bool
    ) -> embeddings.Encoder:
        model = timm.create_model("resnet18", pretrained=False, num_classes=0)
        return embeddings.Encoder(model, name="tiny@random", model_name="resnet18", device=device)

    assert "tiny_resnet_for_tests" in list_encoders()
    assert create_encoder("tiny_resnet_for_tests").name == "tiny@random"

    def efficientnet_lite0(**_: object) -> embeddings.Encoder:
        raise AssertionError("never called")

    with pytest.raises(embeddings.EmbeddingsError, match="already registered"):
        register_encoder(efficientnet_lite0)


def test_settings_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_ENCODER", "resnet18")
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BATCH_SIZE", "4")
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_DEVICE", "cpu")
    settings = EmbeddingsSettings()
    assert (settings.encoder, settings.batch_size, settings.device, settings.checkpoint) == (
        "resnet18",
        4,
        "cpu",
        None,
    )
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_ENCODER", "no_such_net")
    with pytest.raises(UnknownEncoderError):
        create_encoder_from_settings()
    monkeypatch.delenv("MEDCBIR_EMBEDDINGS_ENCODER")
    default = create_encoder_from_settings(EmbeddingsSettings(device="cpu", batch_size=8))
    assert default.name == "efficientnet_lite0@efficientnet-lite0-57934424"
    assert default.batch_size == 8


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, embeddings; assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
