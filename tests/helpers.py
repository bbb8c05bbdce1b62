"""Shared test helpers: a small fake encoder, real test files, and a live uvicorn server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import uvicorn
from fastapi import FastAPI
from PIL import Image as PILImage
from pydicom.data import get_testdata_file


class ThumbnailEncoder:
    """A fast deterministic encoder for tests where the CNN is not under test: a 16x16 grey thumbnail."""

    name = "test-thumbnail16"
    dim = 256
    device = "cpu"

    def embed(self, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, image in enumerate(images):
            grey = PILImage.fromarray((image.mean(axis=2) * 255).astype(np.uint8)).resize(
                (16, 16), PILImage.BILINEAR
            )
            vector = np.asarray(grey, dtype=np.float32).ravel() - 127.5
            out[i] = vector / max(float(np.linalg.norm(vector)), 1e-6)
        return out


def dicom_testfile(name: str) -> Path:
    """A real DICOM file from pydicom's bundled test files or pydicom-data."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not in pydicom's test data; pip install pydicom-data")
    return Path(str(path))


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(app: FastAPI, **options: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    """A real uvicorn server for `app` in a daemon thread on a free loopback port, started (lifespan run);
    `options` go to uvicorn.Config (log_config, access_log, ...). Answers (base URL, server, thread)."""
    port = free_port()
    config = {"log_level": "warning", "lifespan": "on", **options}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


def stop_server(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=15)


@contextmanager
def serve_app(app: FastAPI, **options: Any) -> Iterator[str]:
    """Run a real uvicorn server on a free loopback port for the duration; yields the base URL."""
    url, server, thread = start_server(app, **options)
    try:
        yield url
    finally:
        stop_server(server, thread)


def run_demo(data_dir: Path, *args: str, timeout: float = 550) -> subprocess.CompletedProcess[str]:
    """`medcbir demo --no-serve` (and `args`) into `data_dir`, as a user runs it."""
    env = dict(os.environ, MEDCBIR_DATA_DIR=str(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", "demo", "--no-serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
