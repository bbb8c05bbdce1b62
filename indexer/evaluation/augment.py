"""Training views of medical images for `medcbir adapt`: anatomy-keeping crops, small rotations, window jitter.

Every intensity change (window contrast / brightness, gamma, blur, noise) acts identically on the three
channels, so a greyscale image stays greyscale and a colour image keeps its hue: there is no colour or
hue jitter. Geometric changes are mild (crops of 50-100 % of the area, +-10 degrees, small shifts)
so that the anatomy stays in the view; horizontal flips are off unless asked for, because a mirrored
chest is not a real patient (left and right are anatomy, not nuisance), while a mirrored fundus is the
other eye (turn `flip` on for bilateral organs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from indexer.errors import IndexerError

_BLUR_TAPS = 7


class AdaptError(IndexerError):
    """`medcbir adapt` cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random view changes; the defaults keep the anatomy and the hue."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_deg: float = 10.0
    translate: float = 0.05
    flip: bool = False
    contrast: float = 0.25
    brightness: float = 0.1
    gamma: float = 0.25
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0.05 <= low <= high <= 1.0:
            raise AdaptError(
                f"crop scale {self.crop_scale} must satisfy 0.05 <= low <= high <= 1 (e.g. 0.5,1.0)"
            )
        if not 0 < self.crop_ratio[0] <= 1 <= self.crop_ratio[1]:
            raise AdaptError(f"crop ratio {self.crop_ratio} must bracket 1 (e.g. 0.75,1.33)")
        if not 0 <= self.rotation_deg <= 45 or not 0 <= self.translate <= 0.25:
            raise AdaptError("rotation must be within 0-45 degrees and translation within 0-0.25 of the size")
        if not 0 <= self.contrast < 1 or not 0 <= self.brightness < 0.5 or not 0 <= self.gamma < 1:
            raise AdaptError("contrast and gamma jitter must be in [0, 1), brightness in [0, 0.5)")
        if not 0 <= self.blur_probability <= 1 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 3:
            raise AdaptError("blur probability must be in [0, 1] and its sigma range within (0, 3]")
        if not 0 <= self.noise_std <= 0.2:
            raise AdaptError(f"noise std {self.noise_std} must be in [0, 0.2]")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _geometry(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One affine resample per image: random resized crop, rotation, shift and (optionally) flip."""
    n = images.shape[0]
    scale = _uniform(n, *config.crop_scale, generator)
    log_ratio = _uniform(n, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(scale * ratio).clamp(max=1.0)
    height = torch.sqrt(scale / ratio).clamp(max=1.0)
    # the crop centre, in the [-1, 1] coordinates of grid_sample, keeps the crop inside the image
    centre_x = (1 - width) * _uniform(n, -1.0, 1.0, generator)
    centre_y = (1 - height) * _uniform(n, -1.0, 1.0, generator)
    shift_x = 2 * config.translate * _uniform(n, -1.0, 1.0, generator)
    shift_y = 2 * config.translate * _uniform(n, -1.0, 1.0, generator)
    angle = torch.deg2rad(_uniform(n, -config.rotation_deg, config.rotation_deg, generator))
    mirror = torch.ones(n)
    if config.flip:
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([width * cos * mirror, -height * sin, centre_x + shift_x], dim=1),
            torch.stack([width * sin * mirror, height * cos, centre_y + shift_y], dim=1),
        ],
        dim=1,
    ).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, the same kernel on its three channels."""
    n, channels, height, width = images.shape
    offsets = torch.arange(_BLUR_TAPS, dtype=images.dtype, device=images.device) - _BLUR_TAPS // 2
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].to(images) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = images.reshape(1, n * channels, height, width)
    pad = _BLUR_TAPS // 2
    flat = F.conv2d(
        F.pad(flat, (pad, pad, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * channels
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, pad, pad), mode="replicate"), kernel[:, None, :, None], groups=n * channels
    )
    return flat.reshape(n, channels, height, width)


def _intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Window (contrast around the image mean, brightness), gamma, blur and noise, equal on every channel."""
    n = images.shape[0]
    shape = (n, 1, 1, 1)
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator).view(shape).to(images)
    brightness = _uniform(n, -config.brightness, config.brightness, generator).view(shape).to(images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = ((images - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    log_gamma = math.log1p(config.gamma)
    gamma = torch.exp(_uniform(n, -log_gamma, log_gamma, generator)).view(shape).to(images)
    out = out.clamp_min(1e-6) ** gamma
    if config.blur_probability > 0:
        blurred = torch.rand(n, generator=generator) < config.blur_probability
        sigma = _uniform(n, *config.blur_sigma, generator)
        if bool(blurred.any()):
            chosen = torch.nonzero(blurred).flatten()
            out = out.clone()
            out[chosen.to(out.device)] = _blur(out[chosen.to(out.device)], sigma[chosen])
    if config.noise_std > 0:
        std = _uniform(n, 0.0, config.noise_std, generator).view(shape)
        # one noise map per image, added to all three channels: luminance noise, never a colour cast
        noise = torch.randn((n, 1, *images.shape[2:]), generator=generator) * std
        out = out + noise.to(images)
    return out.clamp(0.0, 1.0)


def augment_views(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random view of each N x 3 x H x W image in [0, 1] (same shape, still in [0, 1]).

    `generator` (a CPU torch.Generator) makes the views reproducible: the held-out criterion of
    `medcbir adapt` draws the same views at every epoch.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise AdaptError(f"views are made of N x 3 x H x W batches, got shape {tuple(images.shape)}")
    return _intensity(_geometry(images, config, generator), config, generator)
