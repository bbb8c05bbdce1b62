"""Short crash drill: SIGKILL the ingest at random moments, resume, nothing lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_killed_ingest_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[3] / "scripts" / "crash_ingest.py"
    result = subprocess.run(
        [sys.executable, str(script), "--files", "40", "--kills", "3", "--seed", "7",
         "--min-delay", "3", "--max-delay", "8", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["images"] == 40 and summary["index_equals_catalog"]
    assert summary["duplicate_sop_uids"] == 0 and summary["duplicate_sha256"] == 0
    assert summary["kills"] + summary["runs_finished_before_kill"] == 3
