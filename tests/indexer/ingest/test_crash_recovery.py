"""Short crash drill: SIGKILL the ingest while the catalog is partly written, resume, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FILES = 40


@pytest.mark.slow
def test_killed_ingest_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[3] / "scripts" / "crash_ingest.py"
    # batches of 8 rows: a kill can land between commits at several points of a 40-file run
    env = dict(os.environ, MEDCBIR_BATCH_SIZE="8")
    result = subprocess.run(
        [sys.executable, str(script), "--files", str(FILES), "--kills", "3", "--seed", "7",
         "--kill-when", "rows", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=540, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["images"] == FILES and summary["index_equals_catalog"]
    assert summary["duplicate_sop_uids"] == 0 and summary["duplicate_sha256"] == 0
    runs = summary["runs"]
    assert len(runs) == 3
    # The kills really landed mid-write: the catalog held some but not all of the files.
    partial = [run for run in runs if run["killed"] and 0 < run["rows_at_kill"] < FILES]
    assert partial, runs
    assert summary["kills_with_catalog_partly_written"] == len(partial)
    # ...and the next run recovered: the saved index no longer matched the catalog, so it was rebuilt.
    assert all(run["rebuilds_logged"] >= 1 for run in partial), runs
    assert summary["rebuilds_logged"] >= len(partial)
