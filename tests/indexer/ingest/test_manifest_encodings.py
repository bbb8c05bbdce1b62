"""Manifests in odd encodings, binary or with huge fields: decoded when detectable, else a ManifestError saying the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import ManifestError
from indexer.ingest.manifest import ManifestColumns, load_manifest

TEXT = "filename,case_id,report,diagnosis\r\nsub/a.png,c1,Lungenödem rechts — Stauung,Ödem;Erguss\r\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_utf_manifests_with_a_byte_order_mark_are_decoded(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "m.csv"
    data = TEXT.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path.write_bytes(data)
    info = load_manifest(path, ManifestColumns()).lookup("sub/a.png")
    assert (
        info is not None
        and info.report == "Lungenödem rechts — Stauung"
        and info.labels == ["Ödem", "Erguss"]
    )


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("latin1.csv", TEXT.replace("—", "-").encode("latin-1"), "save it as UTF-8"),
        ("cp1252.csv", TEXT.encode("cp1252"), "save it as UTF-8"),
        ("binary.csv", bytes(range(256)) * 8, "save it as UTF-8"),
        ("nul.csv", TEXT.encode().replace(b",", b"\0"), "NUL bytes"),
        ("long.csv", TEXT.replace("Stauung", "x" * (129 * 1024)).encode(), "shorten the longest cell"),
    ],
)
def test_undecodable_or_oversized_manifests_raise_a_manifest_error(
    tmp_path: Path, name: str, data: bytes, says: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ManifestError, match=says) as caught:
        load_manifest(path, ManifestColumns())
    assert caught.value.__cause__ is None  # no chained UnicodeDecodeError/csv.Error traceback in the CLI


def test_the_cli_says_what_to_do_with_a_latin1_manifest_and_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from indexer.cli import app

    (tmp_path / "in").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(TEXT.replace("—", "-").encode("latin-1"))
    args = ["index", str(tmp_path / "in"), "--manifest", str(manifest), "--data-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "save it as UTF-8" in result.output and "Traceback" not in result.output
