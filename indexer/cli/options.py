"""Options that several commands take, declared once as Annotated aliases, and the settings they make."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from indexer.settings import IndexerSettings

# -- where the archive is and which encoder reads it -------------------------------------------------

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MEDCBIR_DATA_DIR",
        help="Folder holding the catalog, index and thumbnails (default: ~/.medcbir)",
        show_default=False,
    ),
]
Encoder = Annotated[
    str | None,
    typer.Option(
        "--encoder", envvar="MEDCBIR_ENCODER", help="Encoder name (see list-encoders)", show_default=False
    ),
]
Checkpoint = Annotated[
    Path | None, typer.Option("--checkpoint", help="Local weights file for the encoder (offline use)")
]

# -- how a long run reports itself -------------------------------------------------------------------

Progress = Annotated[bool, typer.Option(help="Show a progress bar")]

# -- where a server listens --------------------------------------------------------------------------

Host = Annotated[str, typer.Option(help="Address to bind")]
Port = Annotated[int, typer.Option(help="Port to bind")]

# -- labeled data described by a manifest (index, eval, finetune) ------------------------------------

PathColumn = Annotated[str, typer.Option(help="Manifest column with the file path or name")]
LabeledManifest = Annotated[
    Path | None, typer.Option(help="CSV naming each file's label (and patient, split)")
]
LabelColumn = Annotated[str, typer.Option(help="Manifest column with the class label")]
PatientColumn = Annotated[str | None, typer.Option(help="Manifest column with the patient id")]
HashColumn = Annotated[
    str | None,
    typer.Option(help="Manifest column with a content hash (e.g. md5) (default: sha256 of the file)"),
]
Include = Annotated[list[str] | None, typer.Option(help="Keep only rows where COLUMN=VALUE (repeatable)")]
IgnoreLabel = Annotated[list[str] | None, typer.Option(help="Label values meaning 'unlabeled' (repeatable)")]
Dedupe = Annotated[bool, typer.Option(help="Drop byte-identical images (keeping the train copy)")]
MinClassCount = Annotated[int, typer.Option(help="Leave out classes with fewer images")]


def settings_from(
    data_dir: Path | None, encoder: str | None = None, checkpoint: Path | None = None
) -> IndexerSettings:
    """Settings from MEDCBIR_* variables, overridden by the flags that were given."""
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir.expanduser().resolve()
    if encoder is not None:
        overrides["encoder"] = encoder
    if checkpoint is not None:
        overrides["checkpoint"] = checkpoint
    return IndexerSettings(**overrides)  # type: ignore[arg-type]
