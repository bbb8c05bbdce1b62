"""The hostile-input corpus (scripts/make_hostile_corpus.py) against the live API in its own process, with
the real encoder and default limits: no 5xx, a clear 4xx where refused, and bounded server memory."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.helpers import free_port

PASSWORD = "a long hostile-test password"
# Measured peak growth over the images, manifests and good archives: +0 MiB after warm-up (2026-12-02);
# before the limits one 100000x1 PNG asked for ~50 GB. The archive bombs still cost +287 MiB (zip),
# +228 MiB (tar.gz) and +3 GiB (sparse tar). The bound leaves margin for a busier machine.
MAX_PEAK_GROWTH_BYTES = 1024**3

SERVER = """
import sys
from pathlib import Path

import uvicorn

from indexer.archive import Archive
from indexer.cli.serve import uvicorn_options
from indexer.governance.accounts import create_user
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from search_api.app import create_app

data, good, port, password = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
archive = Archive.open(IndexerSettings(data_dir=data))
create_user(archive.catalog, "hostile-admin", password, "admin")
ingest_path(archive, good, progress=False, workers=0)
options = {k: v for k, v in uvicorn_options("127.0.0.1", port).items() if k != "factory"}
uvicorn.run(create_app(archive=archive), log_level="info", **options)
"""


def load_corpus_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "make_hostile_corpus.py"
    spec = importlib.util.spec_from_file_location("make_hostile_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@dataclass
class HostileServer:
    url: str
    process: subprocess.Popen[bytes]
    headers: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    items: list[Any] = load_corpus_script().build_corpus(tmp_path_factory.mktemp("hostile"))
    return items


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, corpus: list[Any]) -> Iterator[HostileServer]:
    root = tmp_path_factory.mktemp("hostile-server")
    good = next(item.path.parent for item in corpus if item.path.parent.name == "good")
    port = free_port()
    log = root / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(root / "data"), str(good), str(port), PASSWORD],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the hostile-test server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        login = {"username": "hostile-admin", "password": PASSWORD}
        token = httpx.post(f"{url}/token", data=login, timeout=60).json()["access_token"]
        yield HostileServer(url, process, {"Authorization": f"Bearer {token}"}, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _post(server: HostileServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers=server.headers, timeout=600, **kwargs)


def _check(answer: httpx.Response, item: Any, accepted: tuple[int, ...], what: str) -> str | None:
    """What is wrong with the answer to a corpus item, or None."""
    where = f"{what} {item.path.name} ({item.reason}): HTTP {answer.status_code} {answer.text[:200]}"
    if answer.status_code >= 500:
        return where
    recorded = what == "/admin/ingest" and answer.status_code < 400 and answer.json().get("failed")
    if item.expectation == "fail" and answer.status_code < 400 and not recorded:  # an ingest records failures
        return where
    if answer.status_code >= 400 and not isinstance(answer.json().get("detail"), str):
        return where  # a refusal always says why
    if item.expectation == "index" and answer.status_code not in accepted:
        return where
    return None


def _post_items(server: HostileServer, items: list[Any], good_zip: Path) -> list[str]:
    """Each item to every route that takes its kind; what went wrong."""
    problems: list[str | None] = []
    for item in items:
        data = item.path.read_bytes()
        if item.kind == "image":
            answer = _post(server, "/search", files={"file": (item.path.name, data)}, data={"k": "5"})
            problems.append(_check(answer, item, (200,), "/search"))
            answer = _post(
                server, "/cases", files={"files": (item.path.name, data)}, data={"report": "hostile"}
            )
            problems.append(
                _check(answer, item, (201, 409), "POST /cases")
            )  # 409: a good file already stored
        elif item.kind == "archive":
            answer = _post(server, "/admin/ingest", files={"archive": (item.path.name, data)})
            problems.append(_check(answer, item, (201,), "/admin/ingest"))
        else:
            files = {"archive": (good_zip.name, good_zip.read_bytes()), "manifest": (item.path.name, data)}
            answer = _post(server, "/admin/ingest", files=files)
            problems.append(_check(answer, item, (201,), "/admin/ingest"))
    assert server.process.poll() is None, "the server died"
    return [p for p in problems if p]


def _is_bomb(item: Any) -> bool:
    return bool(item.kind == "archive" and item.expectation == "fail")


def test_hostile_images_and_manifests_get_no_5xx_and_memory_stays_bounded(
    hostile_server: HostileServer, corpus: list[Any]
) -> None:
    server = hostile_server
    good_image = next(i for i in corpus if i.kind == "image" and i.expectation == "index")
    warm = _post(server, "/search", files={"file": (good_image.path.name, good_image.path.read_bytes())})
    assert warm.status_code == 200, warm.text
    baseline = peak_rss_bytes(server.process.pid)
    good_zip = next(i.path for i in corpus if i.kind == "archive" and i.expectation == "index")
    problems = _post_items(server, [i for i in corpus if not _is_bomb(i)], good_zip)
    growth = peak_rss_bytes(server.process.pid) - baseline
    print(
        f"hostile corpus: server peak RSS {baseline / 1024**2:.0f} MiB after warm-up, +{growth / 1024**2:.0f} MiB"
    )
    assert problems == []
    assert growth < MAX_PEAK_GROWTH_BYTES, f"peak RSS grew by {growth / 1024**2:.0f} MiB"
    assert "Traceback" not in server.log.read_text()


def test_archive_bombs_get_no_5xx_and_memory_stays_bounded(
    hostile_server: HostileServer, corpus: list[Any]
) -> None:
    server = hostile_server
    baseline = peak_rss_bytes(server.process.pid)
    good_zip = next(i.path for i in corpus if i.kind == "archive" and i.expectation == "index")
    problems = _post_items(server, [i for i in corpus if _is_bomb(i)], good_zip)
    growth = peak_rss_bytes(server.process.pid) - baseline
    print(f"archive bombs: server peak RSS {baseline / 1024**2:.0f} MiB before, +{growth / 1024**2:.0f} MiB")
    assert problems == []
    assert growth < MAX_PEAK_GROWTH_BYTES, f"peak RSS grew by {growth / 1024**2:.0f} MiB"
