"""A kill -9 of `medcbir index` takes its decode worker processes with it (no orphans left running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage


def _children(pid: int) -> dict[int, str]:
    """Live child processes of pid with their command lines, read from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended; only its exit status is left


def test_decode_workers_die_with_a_killed_ingest(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        PILImage.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(folder / f"{i}.png")
    env = {**os.environ, "MEDCBIR_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "index", str(folder), "--workers", "2", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        workers: dict[int, str] = {}
        while time.monotonic() < deadline and process.poll() is None:
            workers = {p: c for p, c in _children(process.pid).items() if "spawn_main" in c}
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the ingest never started its decode workers"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        survivors = [p for p in workers if _alive(p)]
        assert survivors == [], f"decode workers outlived their killed parent: {survivors}"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in _children(process.pid):
            os.kill(pid, signal.SIGKILL)
