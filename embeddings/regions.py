"""Where a region matches inside other images: the best box of their feature maps for a region's vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embeddings.encoder import Encoder
from embeddings.explain import feature_box, spatial_features


@dataclass(frozen=True)
class RegionMatch:
    """The best-matching box in an image, in pixels of that image (x0, y0, x1, y1), and its cosine score."""

    box: tuple[int, int, int, int]
    score: float


def _rectangles(h: int, w: int) -> npt.NDArray[np.int64]:
    """Every (r0, r1, c0, c1) rectangle of an h x w grid (end exclusive)."""
    rows = [(a, b) for a in range(h) for b in range(a + 1, h + 1)]
    cols = [(a, b) for a in range(w) for b in range(a + 1, w + 1)]
    return np.array([(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols], dtype=np.int64)


def best_rectangle(
    features: npt.NDArray[np.float32], vector: npt.NDArray[np.float32]
) -> tuple[tuple[int, int, int, int], float]:
    """The (r0, r1, c0, c1) cell rectangle of an (h, w, C) feature map whose mean-pooled, L2-normalised
    feature is closest (cosine) to `vector`, and that cosine. Mean pooling is how the indexed vector is
    made from the whole map, so a rectangle's pooled feature is the vector of that part of the image."""
    h, w, _ = features.shape
    integral = np.zeros((h + 1, w + 1, features.shape[2]), np.float64)
    integral[1:, 1:] = features.astype(np.float64).cumsum(0).cumsum(1)
    rect = _rectangles(h, w)
    r0, r1, c0, c1 = rect.T
    sums = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    norms = np.linalg.norm(sums, axis=1)
    unit = np.asarray(vector, np.float64) / max(float(np.linalg.norm(vector)), 1e-12)
    scores = (sums @ unit) / np.maximum(norms, 1e-12)
    best = int(np.argmax(scores))
    return (int(r0[best]), int(r1[best]), int(c0[best]), int(c1[best])), float(scores[best])


def locate_region(
    encoder: Encoder, images: Sequence[npt.NDArray[np.float32]], vector: npt.NDArray[np.float32]
) -> list[RegionMatch]:
    """For each H x W x 3 image, the box (its pixels) whose part of the feature map best matches `vector`.

    One forward pass per image; every rectangle of the last conv map (7 x 7 for efficientnet_lite0 at
    224 px: 784 boxes) is scored, and the cells are mapped back through the resize and centre crop the
    model applied, so a box never covers what the model did not see.
    """
    if not images:
        return []
    features = spatial_features(encoder, images)
    matches = []
    for image, grid in zip(images, features, strict=True):
        (r0, r1, c0, c1), score = best_rectangle(grid, vector)
        height, width = image.shape[:2]
        top, left, bottom, right = feature_box(encoder, height, width)
        h, w = grid.shape[:2]
        y = [top + (bottom - top) * r / h for r in (r0, r1)]
        x = [left + (right - left) * c / w for c in (c0, c1)]
        box = (
            max(0, round(x[0] * width)),
            max(0, round(y[0] * height)),
            min(width, round(x[1] * width)),
            min(height, round(y[1] * height)),
        )
        matches.append(RegionMatch(box=box, score=score))
    return matches
