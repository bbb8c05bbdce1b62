"""`medcbir pacs add | list | test | sync` against a live Orthanc, a PACS that is down, and one that answers garbage."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.cli import app
from tests.helpers import ThumbnailEncoder, dicom_testfile, free_port
from tests.pacs.orthanc import OrthancServer

runner = CliRunner()


def invoke(args: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, args, env=env)


def credentials(orthanc: OrthancServer, name: str = "orthanc") -> dict[str, str]:
    prefix = f"MEDCBIR_PACS_{name.upper()}_"
    return {f"{prefix}USERNAME": orthanc.username, f"{prefix}PASSWORD": orthanc.password}


def test_add_list_test_and_no_credentials_in_output_or_logs(
    orthanc: OrthancServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orthanc.upload([dicom_testfile("CT_small.dcm"), dicom_testfile("MR_small.dcm")])
    data = ["--data-dir", str(tmp_path)]
    added = invoke(
        [
            "pacs",
            "add",
            "orthanc",
            "--url",
            orthanc.dicomweb_url,
            "--kind",
            "orthanc",
            "--viewer-url",
            "http://viewer.example",
            *data,
        ]
    )
    assert added.exit_code == 0, added.output
    listed = invoke(["pacs", "list", *data])
    assert "orthanc\torthanc\t" in listed.output
    assert "http://viewer.example/viewer?StudyInstanceUIDs={study}" in listed.output

    caplog.set_level(logging.DEBUG)  # every library's debug lines too: none may hold the password
    tested = invoke(["pacs", "test", "orthanc", *data], env=credentials(orthanc))
    assert tested.exit_code == 0, tested.output
    assert "QIDO-RS sees 2 studies" in tested.output

    refused = invoke(
        ["pacs", "test", "orthanc", *data],
        env={"MEDCBIR_PACS_ORTHANC_USERNAME": "nobody", "MEDCBIR_PACS_ORTHANC_PASSWORD": "wrong-canary"},
    )
    assert refused.exit_code == 2 and "HTTP 401" in refused.output and "USERNAME" in refused.output
    assert "Traceback" not in refused.output
    everything = tested.output + refused.output + caplog.text
    assert orthanc.password not in everything and "wrong-canary" not in everything


def test_a_password_flag_does_not_exist(tmp_path: Path) -> None:
    result = invoke(
        ["pacs", "add", "x", "--url", "http://h/dicom-web", "--password", "p", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code != 0


def test_sync_from_the_cli(orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc.upload([dicom_testfile("CT_small.dcm")])
    data = ["--data-dir", str(tmp_path)]
    assert invoke(["pacs", "add", "orthanc", "--url", orthanc.dicomweb_url, *data]).exit_code == 0
    monkeypatch.setattr("indexer.archive.create_encoder", lambda *a, **k: ThumbnailEncoder())
    result = invoke(
        ["pacs", "sync", "orthanc", "--no-progress", "--workers", "0", *data], env=credentials(orthanc)
    )
    assert result.exit_code == 0, result.output
    assert "indexed 1," in result.output
    again = invoke(
        ["pacs", "sync", "orthanc", "--no-progress", "--workers", "0", *data], env=credentials(orthanc)
    )
    assert "1 already here" in again.output and "indexed 0," in again.output


def test_a_pacs_that_is_down_is_a_clear_error(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert invoke(["pacs", "add", "down", "--url", url, *data]).exit_code == 0
    result = invoke(
        ["pacs", "test", "down", *data], env={"MEDCBIR_PACS_RETRIES": "1", "MEDCBIR_PACS_BACKOFF_MS": "10"}
    )
    assert result.exit_code == 2
    assert "does not answer" in result.output and "Traceback" not in result.output


class _Broken(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if "500" in self.path:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b"<html>not json at all")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def broken_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    "path, said", [("/500/dicom-web", "kept failing"), ("/garbage/dicom-web", "not DICOMweb")]
)
def test_500s_and_garbage_are_survived_with_a_clear_error(
    broken_server: str, tmp_path: Path, path: str, said: str
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert invoke(["pacs", "add", "broken", "--url", broken_server + path, *data]).exit_code == 0
    _Broken.hits = 0
    result = invoke(
        ["pacs", "test", "broken", *data], env={"MEDCBIR_PACS_RETRIES": "2", "MEDCBIR_PACS_BACKOFF_MS": "10"}
    )
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output
    if said == "kept failing":
        assert _Broken.hits == 3  # retried with back-off, then given up


def test_follow_once_from_the_cli(
    orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from tests.pacs.orthanc import STABLE_AGE_S

    data = ["--data-dir", str(tmp_path)]
    url = orthanc.dicomweb_url
    assert invoke(["pacs", "add", "orthanc", "--url", url, "--kind", "orthanc", *data]).exit_code == 0
    monkeypatch.setattr("indexer.archive.create_encoder", lambda *a, **k: ThumbnailEncoder())
    orthanc.upload([dicom_testfile("CT_small.dcm")])
    time.sleep(STABLE_AGE_S + 2)  # Orthanc's stability check runs about once a second
    result = invoke(["pacs", "follow", "orthanc", "--once", *data], env=credentials(orthanc))
    assert result.exit_code == 0, result.output
    assert "1 stable studies (1 images indexed)" in result.output
    again = invoke(["pacs", "follow", "orthanc", "--once", *data], env=credentials(orthanc))
    assert "0 stable studies" in again.output  # resumed from the stored cursor
    plain = invoke(["pacs", "add", "plain", "--url", url, *data])
    assert plain.exit_code == 0
    unauthorized = invoke(["pacs", "follow", "plain", "--once", *data])  # no account in the environment
    assert unauthorized.exit_code == 2 and "MEDCBIR_PACS_PLAIN_USERNAME" in unauthorized.output
    assert "Traceback" not in unauthorized.output
    # a plain DICOMweb server is polled by study date: CT_small (2004) is found from --since, and it is
    # the instance the Orthanc feed already indexed, so nothing is indexed twice
    polled = invoke(
        ["pacs", "follow", "plain", "--once", "--since", "2000-01-01", *data],
        env=credentials(orthanc, "plain"),
    )
    assert polled.exit_code == 0, polled.output
    assert "deletions are seen only by the periodic full listing" in polled.output
    assert "1 polls, 1 studies looked at, 1 studies ingested (0 images indexed)" in polled.output
    assert "cursor at " in polled.output
