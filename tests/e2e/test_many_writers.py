"""Several processes, one truth: a live server follows a concurrent `medcbir index` and never overwrites its index."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

from tests.e2e.test_cli_end_to_end import _env, _medcbir, _serve, _stop

POLL_SECONDS = 1.0
# Stated bound: a row committed by another process is searchable within two polls (plus a slow CI's margin).
BOUND_SECONDS = 2 * POLL_SECONDS + 8.0


def _png(seed: int) -> bytes:
    blocks = np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(blocks).resize((96, 96), PILImage.NEAREST).save(out, format="PNG")
    return out.getvalue()


def _folder(root: Path, seeds: range) -> dict[str, bytes]:
    root.mkdir(parents=True)
    files = {f"img{seed:03d}.png": _png(seed) for seed in seeds}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _searchable(client: httpx.Client, suffix: str, data: bytes) -> bool:
    """The image's own stored copy comes back (similarity 1) when its bytes are the query."""
    answer = client.post("/search", files={"file": ("q.png", data)}, data={"k": "5"})
    assert answer.status_code == 200, answer.text
    return any(h["similarity"] > 0.999 and h["source_uri"].endswith(suffix) for h in answer.json()["hits"])


def test_server_follows_a_concurrent_cli_ingest_and_never_overwrites_its_index(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    env["MEDCBIR_API_INDEX_POLL_SECONDS"] = str(POLL_SECONDS)
    first = _folder(tmp_path / "first", range(0, 4))
    assert _medcbir("index", str(tmp_path / "first"), "--no-progress", env=env).returncode == 0
    process, url = _serve(env)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            second = _folder(tmp_path / "second", range(100, 124))
            cli = subprocess.Popen(
                [sys.executable, "-m", "indexer.cli", "index", str(tmp_path / "second"), "--no-progress"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            added: dict[str, bytes] = {}
            seed = 500
            while (cli.poll() is None and seed < 510) or seed == 500:  # API adds, edits, deletes meanwhile
                name, data = f"case{seed}.png", _png(seed)
                answer = client.post(
                    "/cases", files=[("files", (name, data, "image/png"))], data={"report": "r"}
                )
                assert answer.status_code == 201, answer.text
                case_id = answer.json()["case_id"]
                edit = client.patch(
                    f"/cases/{case_id}", json={"report": f"edited {seed}", "diagnosis": ["x"]}
                )
                assert edit.status_code == 200, edit.text
                if seed % 3 == 2:
                    assert client.delete(f"/cases/{case_id}").status_code == 204
                else:
                    added[name] = data
                seed += 1
            output = cli.communicate()[0]
            assert cli.returncode == 0, output
            assert "indexed 24," in output
            cli_done = time.monotonic()  # from here only the server's follower can bring the rows in
            while True:
                health = client.get("/health").json()
                if health["index_behind_rows"] == 0 and health["index_size"] == health["catalog_size"]:
                    break
                assert time.monotonic() - cli_done < BOUND_SECONDS, health
                time.sleep(0.2)
            caught_up_s = time.monotonic() - cli_done
            # CLI files are stored under their name, API uploads under their content hash
            expected = {**first, **second, **{hashlib.sha256(d).hexdigest(): d for d in added.values()}}
            missing = [n for n, d in expected.items() if not _searchable(client, n, d)]
            assert missing == [], missing
            assert health["catalog_size"] == len(first) + len(second) + len(added)
            assert health["status"] == "ok"
            # the server saves after the CLI's last save: it must not put back an older index
            name, data = f"case{seed}.png", _png(seed)
            assert client.post("/cases", files=[("files", (name, data, "image/png"))]).status_code == 201
            added[name] = data
            print(
                f"caught up {caught_up_s:.2f} s after the CLI ingest ended; {seed - 500} API cases meanwhile"
            )
    finally:
        _stop(process)
    verify = _medcbir("verify", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"agree on {len(first) + len(second) + len(added)} ids" in verify.stdout
