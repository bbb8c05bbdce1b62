"""Manifest CSVs that map image files to cases, patients, reports and diagnosis labels."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from indexer.errors import ManifestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestColumns:
    """Column names of a manifest; None means the manifest has no such column."""

    path: str = "filename"
    case: str | None = None
    patient: str | None = None
    report: str | None = None
    diagnosis: str | None = None
    # Header fields a non-DICOM archive can only get from its manifest (a DICOM header wins when set).
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    label_separators: str = ";|,"
    ignore_labels: tuple[str, ...] = ()


@dataclass
class CaseInfo:
    """What the manifest says about one file."""

    case_key: str | None = None
    patient_id: str | None = None
    report: str | None = None
    labels: list[str] = field(default_factory=list)
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None


class Manifest:
    """Rows of a manifest, looked up by the file's path relative to the indexed root, or by its name."""

    def __init__(
        self, by_path: dict[str, CaseInfo], by_name: dict[str, CaseInfo | None], patient_conflicts: int = 0
    ) -> None:
        self._by_path = by_path
        self._by_name = by_name
        self.patient_conflicts = patient_conflicts  # files listed under two patients (the first row wins)
        self.unlisted = 0  # files indexed that no row names (so indexed without labels)
        self._matched: set[int] = set()  # id() of the rows some file of this run matched

    def __len__(self) -> int:
        return len(self._by_path)

    def lookup(self, relative: str) -> CaseInfo | None:
        """The row of a file, matched by relative path first, then by unambiguous file name."""
        normal = PurePosixPath(relative).as_posix()
        if normal in self._by_path:
            return self._by_path[normal]
        return self._by_name.get(PurePosixPath(normal).name)

    def note_file(self, relative: str) -> None:
        """Remember that a file of the indexed source matched its row (for `unmatched_count`)."""
        info = self.lookup(relative)
        if info is not None:
            self._matched.add(id(info))

    def note_indexed_unlisted(self, relatives: set[str]) -> None:
        """Count the files just indexed that no row names (a non-image like the manifest itself never is)."""
        self.unlisted += sum(1 for relative in relatives if self.lookup(relative) is None)

    def unmatched_count(self) -> int:
        """How many rows named no file seen since this manifest was loaded (a typo, or files not there)."""
        return sum(1 for info in self._by_path.values() if id(info) not in self._matched)


def split_labels(value: str, separators: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """Split a diagnosis cell into distinct, stripped labels, keeping their order."""
    if not value or not value.strip():
        return []
    parts = re.split("[" + re.escape(separators) + "]", value) if separators else [value]
    ignored = {i.casefold() for i in ignore}
    out: list[str] = []
    for part in parts:
        label = part.strip()
        if label and label.casefold() not in ignored and label not in out:
            out.append(label)
    return out


# csv's own limit on one field (131072 characters); a longer field is refused with the way to fix it
MAX_FIELD_CHARS = csv.field_size_limit()
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip


def read_manifest_text(path: Path) -> str:
    """The manifest's text: UTF-8, or UTF-8/16/32 with a byte-order mark; anything else is a ManifestError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot open manifest {path}: {exc}") from exc
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"manifest {path.name} is not {encoding.upper()} text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}): save it as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8 old.csv > new.csv`)"
        ) from None
    if "\0" in text:
        raise ManifestError(
            f"manifest {path.name} holds NUL bytes: it is not a CSV text file; export the manifest as CSV (UTF-8)"
        )
    return text


def load_manifest(path: Path, columns: ManifestColumns) -> Manifest:
    """Read a manifest CSV; rows naming the same file merge their labels (first report wins).

    Raises ManifestError (never a csv or Unicode error) for an unreadable, mis-encoded or binary file,
    a missing column, or a field over MAX_FIELD_CHARS characters.
    """
    text = read_manifest_text(path)
    try:
        return _parse(io.StringIO(text, newline=""), path, columns)
    except csv.Error as exc:
        raise ManifestError(
            f"manifest {path.name} cannot be read as CSV ({exc}); fields are limited to {MAX_FIELD_CHARS:,} "
            "characters: shorten the longest cell (a report over 128 KiB?) or check the quoting"
        ) from None


def _parse(handle: io.StringIO, path: Path, columns: ManifestColumns) -> Manifest:
    with handle:
        reader = csv.DictReader(handle)
        header = [h for h in (reader.fieldnames or []) if h]
        columns = _with_conventional_columns(columns, header)
        wanted = {
            "--path-column": columns.path,
            "--case-column": columns.case,
            "--patient-column": columns.patient,
            "--report-column": columns.report,
            "--diagnosis-column": columns.diagnosis,
            "--modality-column": columns.modality,
            "--body-part-column": columns.body_part,
            "--view-column": columns.view,
        }
        missing = [
            f"{flag} {name!r}" for flag, name in wanted.items() if name is not None and name not in header
        ]
        if missing:
            raise ManifestError(
                f"manifest {path.name} has no column {', '.join(missing)}; its columns are: {', '.join(header)}. "
                "Pass the right names with those flags."
            )
        by_path: dict[str, CaseInfo] = {}
        conflicts: set[str] = set()
        for row in reader:
            raw = (row.get(columns.path) or "").strip()
            if not raw:
                continue
            key = PurePosixPath(raw.replace("\\", "/")).as_posix()
            info = CaseInfo(
                case_key=_cell(row, columns.case),
                patient_id=_cell(row, columns.patient),
                report=_cell(row, columns.report),
                labels=split_labels(
                    _cell(row, columns.diagnosis) or "", columns.label_separators, columns.ignore_labels
                ),
                modality=_upper(_cell(row, columns.modality)),
                body_part=_upper(_cell(row, columns.body_part)),
                view_position=_upper(_cell(row, columns.view)),
            )
            if key in by_path:
                merged = by_path[key]
                if merged.patient_id and info.patient_id and merged.patient_id != info.patient_id:
                    conflicts.add(key)  # counted and said; the first row's patient is kept
                merged.labels.extend(lbl for lbl in info.labels if lbl not in merged.labels)
                merged.report = merged.report or info.report
            else:
                by_path[key] = info
    by_name: dict[str, CaseInfo | None] = {}
    for key, info in by_path.items():
        name = PurePosixPath(key).name
        by_name[name] = None if name in by_name else info  # ambiguous names match nothing
    if conflicts:
        log.warning(
            "%d files are listed under two patients in %s; the first row wins", len(conflicts), path.name
        )
    return Manifest(by_path, by_name, patient_conflicts=len(conflicts))


_CONVENTIONAL = {"case": "case_id", "patient": "patient_id", "report": "report", "diagnosis": "diagnosis"}


def _with_conventional_columns(columns: ManifestColumns, header: list[str]) -> ManifestColumns:
    """Columns not named by the user default to the conventional names when the CSV has them."""
    found: dict[str, str] = {
        field_name: name
        for field_name, name in _CONVENTIONAL.items()
        if getattr(columns, field_name) is None and name in header
    }
    return replace(columns, **found) if found else columns  # type: ignore[arg-type]


def _upper(value: str | None) -> str | None:
    return value.upper()[:32] if value else None


def _cell(row: dict[str, str | None], column: str | None) -> str | None:
    if column is None:
        return None
    value = (row.get(column) or "").strip()
    return value or None
