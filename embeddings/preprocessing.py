"""Model input preprocessing from timm's data config, as tensor ops on float [0, 1] images."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from embeddings.types import EmbeddingsError

_INTERPOLATIONS = {
    "bicubic": "bicubic",
    "bilinear": "bilinear",
    "nearest": "nearest",
    "nearest-exact": "nearest-exact",
}
# Values outside [0, 1] by less than this are rounding noise from upstream float maths, clipped silently.
_RANGE_TOLERANCE = 1e-3
# An aspect-preserving resize larger than this many times the model's scale area (aspect ratios beyond
# ~4:1) is never materialised: the part the centre crop keeps is cut from the source first. A 100000x1
# image would otherwise be resized to 256 x 25.6M pixels (~80 GB) only to keep 224 x 224 of it.
MAX_RESIZE_AREA_FACTOR = 4


@dataclass(frozen=True)
class Preprocessing:
    """Resize, crop and normalisation settings, mirroring timm's eval transform for one model."""

    input_size: tuple[int, int]
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_data_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """Build from `timm.data.resolve_model_data_config(model)`."""
        _, height, width = config["input_size"]
        interpolation = str(config.get("interpolation", "bicubic"))
        mean = tuple(float(v) for v in config["mean"])
        std = tuple(float(v) for v in config["std"])
        if len(mean) != 3 or len(std) != 3:
            raise EmbeddingsError(
                f"model expects {len(mean)} input channels; only RGB (3-channel) models are supported"
            )
        return cls(
            input_size=(int(height), int(width)),
            crop_pct=float(config.get("crop_pct") or 1.0),
            crop_mode=str(config.get("crop_mode") or "center"),
            interpolation=_INTERPOLATIONS.get(interpolation, "bicubic"),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    @property
    def scale_size(self) -> tuple[int, int]:
        """Size before the crop, as timm computes it: floor(input_size / crop_pct)."""
        return (
            math.floor(self.input_size[0] / self.crop_pct),
            math.floor(self.input_size[1] / self.crop_pct),
        )

    def resize_shape(self, height: int, width: int) -> tuple[int, int]:
        """Output shape of the resize step for an image of the given size (torchvision Resize semantics)."""
        scale_h, scale_w = self.scale_size
        if self.crop_mode == "squash" or scale_h != scale_w:
            return scale_h, scale_w
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = scale_h, int(scale_h * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def resize_is_bounded(self, height: int, width: int) -> bool:
        """True when the timm resize of an image this size stays within MAX_RESIZE_AREA_FACTOR x scale area."""
        new_h, new_w = self.resize_shape(height, width)
        scale_h, scale_w = self.scale_size
        return new_h * new_w <= MAX_RESIZE_AREA_FACTOR * scale_h * scale_w

    def source_crop(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, rows, columns) of the source that the resize + centre crop keeps, rounded outwards."""
        new_h, new_w = self.resize_shape(height, width)
        crop_h, crop_w = self.input_size
        rows = min(height, max(1, math.ceil(min(crop_h, new_h) * height / new_h)))
        columns = min(width, max(1, math.ceil(min(crop_w, new_w) * width / new_w)))
        return (height - rows) // 2, (width - columns) // 2, rows, columns

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Turn one 3 x H x W float [0, 1] tensor into a normalised 3 x input_size tensor on its device.

        Memory stays bounded whatever the aspect ratio: past MAX_RESIZE_AREA_FACTOR the centre region the
        crop keeps is cut from the source and resized straight to the model's input size.
        """
        height, width = image.shape[-2:]
        if not self.resize_is_bounded(int(height), int(width)):
            top, left, rows, columns = self.source_crop(int(height), int(width))
            image = image[..., top : top + rows, left : left + columns]
            height, width = rows, columns
            new_h, new_w = self.input_size
        else:
            new_h, new_w = self.resize_shape(int(height), int(width))
        batch = image.unsqueeze(0)
        if (new_h, new_w) != (height, width):
            antialias = self.interpolation in ("bilinear", "bicubic")
            align = False if self.interpolation in ("bilinear", "bicubic") else None
            batch = F.interpolate(
                batch, size=(new_h, new_w), mode=self.interpolation, align_corners=align, antialias=antialias
            )
            # Bicubic overshoots; clamp like an 8-bit pipeline would, without quantising.
            batch = batch.clamp_(0.0, 1.0)
        crop_h, crop_w = self.input_size
        batch = _center_crop_or_pad(batch, crop_h, crop_w)
        mean = torch.tensor(self.mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        return ((batch - mean) / std).squeeze(0)


def _center_crop_or_pad(batch: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    height, width = batch.shape[-2:]
    if height < crop_h or width < crop_w:
        # Only reachable for extreme aspect ratios; pad with zeros like torchvision's CenterCrop.
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        batch = F.pad(batch, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = batch.shape[-2:]
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return batch[..., top : top + crop_h, left : left + crop_w]


def validate_image(image: object, index: int) -> npt.NDArray[np.float32]:
    """Check one input image and return it as a contiguous float32 H x W x 3 array in [0, 1]."""
    expected = (
        "pass float32 arrays of shape (H, W, 3) with values in [0, 1] (e.g. imaging.load_image(...).pixels)"
    )
    if not isinstance(image, np.ndarray):
        raise EmbeddingsError(f"image {index} is a {type(image).__name__}, not a numpy array; {expected}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise EmbeddingsError(f"image {index} has shape {image.shape}; {expected}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise EmbeddingsError(f"image {index} is empty (shape {image.shape}); {expected}")
    if not np.issubdtype(image.dtype, np.floating):
        hint = " (for 8-bit data use `image.astype(np.float32) / 255`)" if image.dtype == np.uint8 else ""
        raise EmbeddingsError(f"image {index} has dtype {image.dtype}; {expected}{hint}")
    array = np.ascontiguousarray(image, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise EmbeddingsError(f"image {index} contains NaN or infinite values; {expected}")
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise EmbeddingsError(f"image {index} has values in [{low:.4g}, {high:.4g}]; {expected}")
    if low < 0.0 or high > 1.0:
        array = np.clip(array, 0.0, 1.0)
    return array
