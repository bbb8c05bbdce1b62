"""The benchmark scripts run at toy sizes and end with one JSON line of figures (the big runs are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _last_json(args: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_bench_search_prints_per_kind_figures() -> None:
    figures = _last_json(
        ["scripts/bench_search.py", "--vectors", "3000", "--dim", "32", "--queries", "50",
         "--kinds", "auto,flat,ivf_flat", "--clusters", "50", "--threads", "1"]
    )  # fmt: skip
    kinds = figures["kinds"]
    assert isinstance(kinds, dict) and set(kinds) == {"auto=flat", "flat", "ivf_flat"}
    for name, row in kinds.items():
        assert {"build_s", "bytes_per_vector", "p50_ms", "p99_ms", "qps", "recall_at_10"} <= set(row), name
    assert kinds["flat"]["recall_at_10"] == 1.0
    # The tuner's promise (TARGET_RECALL 0.95) on its own tuning queries, and the same bar on the 50 held-out
    # queries (seed 0, one thread: deterministic; measured 0.9705 tuned, 0.954 held out).
    from indexer.vectors.tuning import TARGET_RECALL

    assert TARGET_RECALL == 0.95
    assert kinds["ivf_flat"]["tuned"]["recall_at_10"] >= TARGET_RECALL
    assert kinds["ivf_flat"]["recall_at_10"] >= TARGET_RECALL
