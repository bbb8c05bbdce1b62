"""API benchmark: image-in POST /search against a live uvicorn on loopback, one client then N concurrent clients.

Indexes the demo archive into a temporary data folder, serves it with uvicorn in a subprocess (auth off,
loopback only), and sends the archive's own files as queries. Reports p50/p99 latency, throughput and
errors for one sequential client (the in-run baseline) and for --clients concurrent clients (a bounded
load: each client waits for its answer before sending the next). Ends by printing one JSON line.

    python scripts/bench_api.py --clients 8 --requests 25
    python scripts/bench_api.py --clients 8 --requests 25 --hostile-clients 2   # while the hostile corpus
                                                                                # (scripts/make_hostile_corpus.py) is posted
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_clients(
    url: str, payloads: list[tuple[str, bytes]], clients: int, per_client: int
) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=120.0) as http:
            for j in range(per_client):
                name, data = payloads[(index * per_client + j) % len(payloads)]
                t = time.perf_counter()
                try:
                    response = http.post(f"{url}/search", files={"file": (name, data)}, data={"k": "10"})
                    ok = response.status_code == 200 and len(response.json()["hits"]) > 0
                    problem = None if ok else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                elapsed = (time.perf_counter() - t) * 1000.0
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "throughput_rps": round(len(latencies) / wall, 2),
    }


def post_hostile(url: str, items: list[Any], stop: threading.Event, statuses: list[int]) -> None:
    """Post the hostile corpus again and again until `stop`: images as queries, archives and manifests
    (with a good zip) to /admin/ingest; every answer's status is kept."""
    good_zip = next(i.path for i in items if i.kind == "archive" and i.expectation == "index")
    with httpx.Client(timeout=600.0) as http:
        while not stop.is_set():
            for item in items:
                if stop.is_set():
                    break
                data = item.path.read_bytes()
                try:
                    if item.kind == "image":
                        answer = http.post(f"{url}/search", files={"file": (item.path.name, data)})
                    elif item.kind == "archive":
                        answer = http.post(f"{url}/admin/ingest", files={"archive": (item.path.name, data)})
                    else:
                        files = {
                            "archive": ("good.zip", good_zip.read_bytes()),
                            "manifest": (item.path.name, data),
                        }
                        answer = http.post(f"{url}/admin/ingest", files=files)
                    statuses.append(answer.status_code)
                except httpx.HTTPError:
                    statuses.append(0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per concurrent client")
    parser.add_argument("--baseline-requests", type=int, default=30)
    parser.add_argument(
        "--hostile-clients", type=int, default=0, help="extra clients posting the hostile corpus meanwhile"
    )
    args = parser.parse_args()

    from embeddings import create_encoder
    from indexer.archive import Archive
    from indexer.cli.demo import build_demo_archive
    from indexer.ingest.local import ingest_path
    from indexer.settings import IndexerSettings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build_demo_archive(root / "demo")
        settings = IndexerSettings(data_dir=root / "data")
        archive = Archive.open(settings, encoder=create_encoder("efficientnet_lite0", device="cpu"))
        ingest_path(archive, root / "demo", progress=False)
        indexed = len(archive.index)
        archive.close()
        payloads = [(p.name, p.read_bytes()) for p in sorted(files)]
        port = free_port()
        env = dict(os.environ, MEDCBIR_DATA_DIR=str(settings.data_dir), MEDCBIR_API_AUTH_DISABLED="1")
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "search_api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        served_backend = "unknown"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    health = httpx.get(f"{url}/health", timeout=2)
                    if health.status_code == 200:
                        served_backend = str(health.json().get("backend"))  # the one that runs
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"uvicorn exited with {server.returncode}")
                time.sleep(0.5)
            run_clients(url, payloads, 1, 3)  # warm-up
            baseline = run_clients(url, payloads, 1, args.baseline_requests)
            stop = threading.Event()
            hostile_statuses: list[int] = []
            items: list[Any] = []
            if args.hostile_clients:
                sys.path.insert(0, str(Path(__file__).parent))
                from make_hostile_corpus import build_corpus

                items = build_corpus(root / "hostile")
            hostile = [
                threading.Thread(
                    target=post_hostile, args=(url, items[i:] + items[:i], stop, hostile_statuses)
                )
                for i in range(args.hostile_clients)
            ]
            for thread in hostile:
                thread.start()
            while hostile and not hostile_statuses:  # the good clients start once the hostile ones are in
                time.sleep(0.1)
            overlapping_from = len(hostile_statuses)
            loaded = run_clients(url, payloads, args.clients, args.requests)
            overlapping = len(hostile_statuses) - overlapping_from
            stop.set()
            for thread in hostile:
                thread.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        json.dumps(
            {
                "bench": "api",
                "index_size": indexed,
                "query_files": len(payloads),
                "backend": served_backend,
                "one_client": baseline,
                "concurrent": loaded,
                "hostile_clients": args.hostile_clients,
                "hostile_requests": len(hostile_statuses),
                "hostile_requests_answered_during_good_load": overlapping,
                "hostile_5xx_or_no_answer": sum(1 for s in hostile_statuses if s >= 500 or s == 0),
                "hostile_statuses": {
                    str(s): hostile_statuses.count(s) for s in sorted(set(hostile_statuses))
                },
                "p50_ratio_concurrent_over_one": round(
                    float(loaded["p50_ms"]) / float(baseline["p50_ms"]), 2
                ),  # type: ignore[arg-type]
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
