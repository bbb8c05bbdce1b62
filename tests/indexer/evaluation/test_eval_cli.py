"""`medcbir eval` end to end on a tiny MedMNIST-format npz, with the real offline encoder."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embeddings.settings import configured_backend
from indexer.cli import app


def test_eval_cli_on_tiny_npz_writes_json_markdown_and_plots(tiny_npz: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    args = [
        "eval", "--data", str(tiny_npz), "--k", "5", "--image-size", "64",
        "--json", str(out / "m.json"), "--markdown", str(out / "m.md"), "--plots", str(out / "plots"),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "m.json").read_text())
    for name in (
        "precision@1",
        "precision@5",
        "map@5",
        "acc@1",
        "mmv@5",
        "knn_vote_accuracy",
        "macro_f1",
        "macro_auc",
    ):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert "precision@10" in metrics  # k = 1, 5, 10 are always reported besides --k
    # The retrieval figures, recomputed here by hand from the cached vectors (train = database, test =
    # queries, cosine ranking): they are the numbers of this tiny set, not just numbers in [0, 1].
    import numpy as np

    (cached,) = (tmp_path / "cache").glob("*.npy")
    vectors = np.load(cached)
    with np.load(tiny_npz) as raw:
        labels = np.concatenate([raw[f"{s}_labels"][:, 0] for s in ("train", "val", "test")]).astype(int)
    assert vectors.shape[0] == len(labels) == 34
    database, queries = vectors[:20], vectors[26:]
    ranked = np.argsort(-(queries @ database.T), axis=1, kind="stable")
    relevant = labels[:20][ranked] == labels[26:][:, None]
    assert metrics["precision@1"] == pytest.approx(relevant[:, 0].mean())
    assert metrics["precision@5"] == pytest.approx(relevant[:, :5].mean())
    ap5 = [
        np.mean([relevant[q, : i + 1].mean() for i in range(5) if relevant[q, i]])
        if relevant[q, :5].any()
        else 0.0
        for q in range(len(queries))
    ]
    assert metrics["map@5"] == pytest.approx(np.mean(ap5))
    assert metrics["acc@1"] == pytest.approx(relevant[:, 0].mean())
    assert metrics["info"]["query_images"] == 8 and metrics["info"]["database_images"] == 20
    assert metrics["info"]["input_size"] == "64x64"
    fast = find_spec("onnxruntime") is not None and configured_backend() != "torch"
    assert metrics["info"]["backend"] == ("onnxruntime" if fast else "torch")  # the fast path by default
    # The npz has a val split: the tempered vote is fitted on it and both ECEs are reported.
    assert 0.0 <= metrics["ece_calibrated"] <= 1.0 and 0.0 <= metrics["ece_vote"] <= 1.0
    assert "val queries" in metrics["info"]["calibration"]
    # Dark vs light images are trivially separable: ImageNet features must get them right.
    assert metrics["knn_vote_accuracy"] >= 0.75
    assert (out / "plots" / "confusion_matrix.png").stat().st_size > 0
    assert (out / "plots" / "precision_recall.png").stat().st_size > 0
    assert "map@5" in (out / "m.md").read_text()
    # The second run reuses the cached embeddings and gives the same numbers.
    again = CliRunner().invoke(app, [*args[:-2], "--cache-dir", str(tmp_path / "cache")])
    assert again.exit_code == 0
    assert json.loads((out / "m.json").read_text())["map@5"] == metrics["map@5"]
    assert json.loads((out / "m.json").read_text())["info"]["backend"] == "n/a"  # nothing was embedded


def test_eval_cli_reports_a_bad_dataset(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "not a folder" in result.output
