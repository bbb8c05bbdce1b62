"""Tests for the imaging package."""
