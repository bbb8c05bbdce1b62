"""The kNN vote, and twin retrieval: lossy JPEG 2000 queries find their uncompressed originals."""

from __future__ import annotations

import numpy as np
import pytest

from imaging import load_image
from search_api.predictions import vote
from search_api.searcher import Searcher
from tests.helpers import dicom_testfile


def test_vote_is_similarity_weighted_and_sums_to_one() -> None:
    p = vote([(0.9, ["pneumonia"]), (0.8, ["normal"]), (0.7, ["pneumonia", "effusion"]), (0.95, [])])
    assert p.label == "pneumonia"
    assert p.labeled_neighbours == 3
    scores = {s.label: s.score for s in p.scores}
    assert scores["pneumonia"] == pytest.approx((0.9 + 0.35) / 2.4)
    assert scores["effusion"] == pytest.approx(0.35 / 2.4)
    assert sum(scores.values()) == pytest.approx(1.0)
    assert p.confidence == pytest.approx(scores["pneumonia"])


def test_vote_without_labels_predicts_nothing() -> None:
    p = vote([(0.9, []), (0.5, [])])
    assert p.label is None and p.scores == [] and p.labeled_neighbours == 0


def test_vote_with_only_negative_similarities_falls_back_to_counts() -> None:
    p = vote([(-0.2, ["a"]), (-0.1, ["b"]), (-0.3, ["a"])])
    assert p.label == "a" and p.scores[0].votes == 2


@pytest.mark.parametrize("stem", ["RG1", "MR2", "US1"])
def test_jpeg2000_query_returns_its_uncompressed_twin(indexed_archive, stem: str) -> None:  # type: ignore[no-untyped-def]
    searcher = Searcher(indexed_archive)
    query = dicom_testfile(f"{stem}_J2KI.dcm").read_bytes()
    response = searcher.search(query, k=3)
    top = response.hits[0]
    twin = load_image(dicom_testfile(f"{stem}_UNCI.dcm")).pixels
    top_pixels = load_image(top.source_uri.removeprefix("file://")).pixels
    assert top.source_uri.endswith(f"{stem}_UNCI.dcm") or np.array_equal(top_pixels, twin)
    assert top.similarity >= 0.99
    assert response.hits[1].similarity < top.similarity
