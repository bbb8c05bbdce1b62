"""The same encoder at another input size: for fast CPU evaluation and small-input fine-tuning."""

from __future__ import annotations

from typing import Any

import timm.data

from embeddings.encoder import Encoder
from embeddings.types import EmbeddingsError


def with_input_size(encoder: Encoder, size: int | None) -> Encoder:
    """An Encoder sharing `encoder`'s model and name whose preprocessing resizes to `size` x `size`.

    The crop fraction, interpolation and normalisation stay the model's own; only the final input
    size changes (the pooled CNN accepts any size). `size=None` or the current size returns `encoder`.
    """
    if size is None or (size, size) == encoder.input_size:
        return encoder
    if size < 32:
        raise EmbeddingsError(f"input size {size} is too small; use 32 px or more")
    config: dict[str, Any] = dict(timm.data.resolve_model_data_config(encoder.model))
    config["input_size"] = (3, size, size)
    return Encoder(
        encoder.model,
        name=encoder.name,
        model_name=encoder.model_name,
        device=encoder.device,
        batch_size=encoder.batch_size,
        data_config=config,
    )
