"""The best rectangle of a feature map for a region's vector."""

from __future__ import annotations

import numpy as np

from embeddings.regions import best_rectangle


def test_best_rectangle_finds_the_cells_that_carry_the_region() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((7, 7, 32)).astype(np.float32) * 0.2
    target = np.zeros(32, np.float32)
    target[5] = 1.0
    features[2:5, 1:3, 5] += 3.0  # rows 2-4, columns 1-2 look like the region
    (r0, r1, c0, c1), score = best_rectangle(features, target)
    assert (r0, r1, c0, c1) == (2, 5, 1, 3)
    # the score is the cosine of that rectangle's mean-pooled feature
    pooled = features[2:5, 1:3].mean(axis=(0, 1))
    assert abs(score - float(pooled[5] / np.linalg.norm(pooled))) < 1e-6
