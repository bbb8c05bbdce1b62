"""Preprocessing keeps memory bounded for extreme aspect ratios and matches the plain resize elsewhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embeddings.preprocessing import Preprocessing, _center_crop_or_pad

LITE0 = Preprocessing(
    input_size=(224, 224),
    crop_pct=0.875,
    crop_mode="center",
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def _timm_reference(image: torch.Tensor) -> torch.Tensor:
    """timm's eval transform done the plain way: aspect-preserving resize of the whole image, centre crop."""
    height, width = image.shape[-2:]
    new_h, new_w = LITE0.resize_shape(int(height), int(width))
    batch = F.interpolate(
        image[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
    )
    batch = _center_crop_or_pad(batch.clamp(0.0, 1.0), 224, 224)
    return ((batch - 0.5) / 0.5)[0]


def _pattern(height: int, width: int) -> torch.Tensor:
    yy, xx = np.mgrid[0:height, 0:width]
    grey = np.sin(xx / 37.0) * np.cos(yy / 23.0) * 0.5 + 0.5
    return torch.tensor(np.stack([grey] * 3).astype(np.float32))


@pytest.mark.parametrize("shape", [(512, 512), (300, 1000), (1200, 400)])
def test_ordinary_aspect_ratios_are_the_plain_timm_transform(shape: tuple[int, int]) -> None:
    image = _pattern(*shape)
    assert LITE0.resize_is_bounded(*shape)
    assert torch.equal(LITE0(image), _timm_reference(image))


@pytest.mark.parametrize("shape", [(300, 1400), (2000, 90)])
def test_elongated_images_keep_the_same_centre_region(shape: tuple[int, int]) -> None:
    image = _pattern(*shape)
    assert not LITE0.resize_is_bounded(*shape)
    difference = (LITE0(image) - _timm_reference(image)).abs()
    # Same region, resized in one step instead of two: only the filter's edge rounding differs.
    assert float(difference.mean()) < 0.03
    assert float(difference.max()) < 0.1


@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1), (1, 65_535), (3000, 1)])
def test_extreme_aspect_ratios_give_the_model_input_size(shape: tuple[int, int]) -> None:
    out = LITE0(torch.rand(3, *shape))
    assert tuple(out.shape) == (3, 224, 224)
    assert torch.isfinite(out).all()


def test_a_100000_by_1_image_costs_little_memory() -> None:
    # In a fresh process, so the peak RSS belongs to this preprocessing alone (before: ~80 GB attempted).
    script = textwrap.dedent(
        """
        import resource, torch
        from embeddings.preprocessing import Preprocessing
        p = Preprocessing((224, 224), 0.875, "center", "bicubic", (0.5,) * 3, (0.5,) * 3)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for shape in [(1, 100_000), (100_000, 1), (1, 65_535)]:
            p(torch.rand(3, *shape))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    grown_mib = int(done.stdout.strip().splitlines()[-1])
    assert grown_mib < 100, f"preprocessing an extreme aspect ratio grew RSS by {grown_mib} MiB"
