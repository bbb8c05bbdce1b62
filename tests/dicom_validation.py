"""Validating DICOM files that medcbir writes with dicom3tools' `dciodvfy`: errors, and errors new against a source.

Use it for every DICOM object the project writes (de-identified export, SR / KOS, test files):

    report = validate_dicom(path)                      # dciodvfy's Error lines, normalised
    assert not new_errors(written, source=original)    # errors the source did not already have
    assert not report.errors                           # or: no error at all, for objects made from scratch

`dciodvfy` comes from Debian's dicom3tools (`apt-get install dicom3tools`; `.ci/run` installs it and
sets MEDCBIR_TEST_REQUIRE_DCIODVFY=1, and then a missing validator fails the test instead of skipping it).
Error lines are compared after normalising values that de-identification changes by design (UIDs,
dates, numbers quoted in a message), so a remapped UID does not count as a new error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ENV = "MEDCBIR_TEST_REQUIRE_DCIODVFY"
_TIMEOUT_S = 60
_VALUE = re.compile(r"<[^<>]*>")  # dciodvfy quotes values and names in <...>
_NUMBER = re.compile(r"\d[\d.]*")
DEFLATED = "1.2.840.10008.1.2.1.99"


def dciodvfy_path() -> str:
    """The validator's path; the test fails when MEDCBIR_TEST_REQUIRE_DCIODVFY is set and it is missing,
    and is skipped (saying how to install it) otherwise."""
    found = shutil.which("dciodvfy")
    if found:
        return found
    message = "dciodvfy (dicom3tools) is not installed: apt-get install -y dicom3tools"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set, so the validation must run)")
    pytest.skip(message)


@dataclass(frozen=True)
class DicomValidation:
    """What dciodvfy said about one file: the IOD it recognised and its error lines (raw and normalised)."""

    path: Path
    iod: str | None
    raw_errors: tuple[str, ...]
    errors: frozenset[str]


def normalise_error(line: str) -> str:
    """An error line with the values that de-identification changes masked: digits in quoted values
    (UIDs, dates, numbers) become '#', so 'same value as FrameOfReferenceUID <1.2.3>' compares equal
    before and after UID remapping. Attribute and module names in <...> stay."""

    def mask(match: re.Match[str]) -> str:
        return _NUMBER.sub("#", match.group(0))

    return _VALUE.sub(mask, line.strip())


def _source_arguments(path: Path) -> list[str]:
    """dciodvfy reads a file without preamble and File Meta only when told its transfer syntax."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM":
        return []
    import pydicom

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    implicit, little = ds.original_encoding
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
    return ["-input-nometa", "-input-ts", syntax]


def _inflated_copy(path: Path, folder: Path) -> Path | None:
    """dciodvfy cannot read Deflated Explicit VR Little Endian: an explicit-VR copy of a deflated file
    (pydicom inflates it, so the deflate stream itself is checked by reading it), else None."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if DEFLATED.encode() not in head:
        return None
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy = folder / "inflated.dcm"
    ds.save_as(copy, enforce_file_format=True)
    return copy


def validate_dicom(path: Path) -> DicomValidation:
    """Run dciodvfy on one file (with or without File Meta; a deflated one through an inflated copy)
    and collect its 'Error -' lines."""
    exe = dciodvfy_path()
    with tempfile.TemporaryDirectory() as folder:
        target = _inflated_copy(path, Path(folder)) or path
        result = subprocess.run(
            [exe, *_source_arguments(target), str(target)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_TIMEOUT_S,
            check=False,
        )
    lines = (result.stdout + result.stderr).splitlines()
    errors = tuple(line.strip() for line in lines if "Error - " in line)
    iod = next(
        (line.strip() for line in lines if line and not line.startswith(("Error", "Warning", "("))), None
    )
    return DicomValidation(path, iod, errors, frozenset(normalise_error(line) for line in errors))


def new_errors(written: Path, *, source: Path | None = None, known: Iterable[str] = ()) -> list[str]:
    """dciodvfy errors of `written` that `source` does not have (all of them without a source), less
    those matching a `known` regular expression (each known error should say why it is accepted)."""
    before = validate_dicom(source).errors if source is not None else frozenset()
    after = validate_dicom(written)
    patterns = [re.compile(pattern) for pattern in known]
    return sorted(
        raw
        for raw in after.raw_errors
        if normalise_error(raw) not in before and not any(p.search(raw) for p in patterns)
    )
