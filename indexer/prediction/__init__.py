"""Predictions from neighbours: the one kNN vote, its calibration, and trained linear heads."""
