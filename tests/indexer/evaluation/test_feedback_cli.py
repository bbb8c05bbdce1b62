"""`medcbir eval --feedback-rounds` end to end on a tiny npz: rounds in the JSON, the baseline is the eval's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.cli import app


def test_feedback_rounds_land_in_the_json_and_round_zero_is_the_plain_eval(
    tiny_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fb.json"
    args = [
        "eval", "--data", str(tiny_npz), "--k", "5", "--image-size", "64", "--feedback-rounds", "2",
        "--feedback-weights", "1,2,0.5", "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Relevance feedback (oracle, 8 queries, alpha 1, beta 2, gamma 0.5)" in result.output
    report = json.loads(out.read_text())
    feedback = report["info"]["feedback"]
    assert [row["round"] for row in feedback["shown"]] == [0, 1, 2]
    assert len(feedback["pin_only"]) == 3 and len(feedback["residual"]) == 2
    # round 0 is the plain search that the eval itself scored
    assert feedback["shown"][0]["precision@5"] == pytest.approx(report["precision@5"])
    assert feedback["shown"][0]["map@5"] == pytest.approx(report["map@5"])
    assert feedback["shown"][1]["marked"] == 5  # the oracle marked the 5 neighbours shown
    assert feedback["val_grid"]["rounds"] == 2


def test_bad_feedback_weights_say_how_to_write_them(tiny_npz: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", "--data", str(tiny_npz), "--feedback-rounds", "1", "--feedback-weights", "1,2"]
    )
    assert result.exit_code != 0 and "alpha,beta,gamma" in result.output
