"""The CLI's wiring: every command answers --help, and every command closes the catalog it opens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image as PILImage
from typer.core import TyperGroup
from typer.testing import CliRunner

from indexer.catalog import Catalog
from indexer.cli import app
from tests.helpers import ThumbnailEncoder

# The order `medcbir --help` lists them in (commands first, then the sub-apps).
TOP_LEVEL = [
    "index", "stats", "failures", "verify", "rebuild-index", "list-encoders", "serve", "ui", "demo",
    "eval", "finetune", "adapt", "reindex", "train-head", "audit", "export", "receive", "db", "users", "pacs",
]  # fmt: skip


def _command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*prefix, name)
        if isinstance(command, TyperGroup):
            yield from _command_paths(command, (*prefix, name))


ROOT = typer.main.get_command(app)
assert isinstance(ROOT, TyperGroup)
COMMAND_PATHS = list(_command_paths(ROOT))


def test_the_root_lists_every_command_in_order() -> None:
    assert ROOT.list_commands(typer.Context(ROOT)) == TOP_LEVEL
    assert {p[1] for p in COMMAND_PATHS if p[0] == "db" and len(p) == 2} == {"upgrade", "current"}
    assert {p[1] for p in COMMAND_PATHS if p[0] == "users" and len(p) == 2} == {
        "create", "list", "disable", "enable", "set-role", "set-password", "api-key",
    }  # fmt: skip


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=" ".join)
def test_every_command_answers_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.fixture()
def open_catalogs(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Ids of the Catalog objects constructed and not yet disposed; a fake encoder stands in for the CNN."""
    still_open: set[int] = set()
    init, dispose = Catalog.__init__, Catalog.dispose

    def tracked_init(self: Catalog, url: str) -> None:
        init(self, url)
        still_open.add(id(self))

    def tracked_dispose(self: Catalog) -> None:
        dispose(self)
        still_open.discard(id(self))

    monkeypatch.setattr(Catalog, "__init__", tracked_init)
    monkeypatch.setattr(Catalog, "dispose", tracked_dispose)
    monkeypatch.setattr("embeddings.create_encoder", lambda *args, **kwargs: ThumbnailEncoder())
    monkeypatch.setattr("indexer.archive.create_encoder", lambda *args, **kwargs: ThumbnailEncoder())
    for name in ("MEDCBIR_DATABASE_URL", "DATABASE_URL", "MEDCBIR_ENCODER", "MEDCBIR_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    return still_open


def _open_files_under(folder: Path) -> list[str]:
    """Files under folder that this process holds open (Linux /proc; empty elsewhere)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return []
    held = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder.resolve())):
            held.append(target)
    return held


def test_commands_close_what_they_open(
    tmp_path: Path, open_catalogs: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDCBIR_EMBEDDINGS_BACKEND", raising=False)  # the default
    data = tmp_path / "data"
    data.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        PILImage.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    runs: list[tuple[list[str], tuple[int, ...]]] = [
        (["db", "upgrade"], (0,)),
        (["db", "current"], (0,)),
        (["stats"], (0,)),
        (["stats"], (0,)),
        (["index", str(images), "--workers", "0", "--no-progress"], (0,)),
        (["failures"], (0,)),
        (["verify"], (0,)),
        (["rebuild-index", "--kind", "flat"], (0,)),
        (["rebuild-index", "--kind", "no-such-kind"], (2,)),  # fails inside the catalog block
        (["reindex", "--no-progress"], (0,)),
        (["users", "create", "--service", "--username", "svc"], (0,)),
        (["users", "set-role", "nobody", "admin"], (2,)),  # fails inside the catalog block
        (["users", "list"], (0,)),
        (["audit"], (0,)),
        (["export", "--deidentify", "--out", str(tmp_path / "out")], (0,)),
        (["train-head"], (0, 2)),  # two unlabeled images: trained or refused, closed either way
    ]
    for args, exit_codes in runs:
        result = CliRunner().invoke(app, [*args, "--data-dir", str(data)])
        assert result.exit_code in exit_codes, (args, result.output, result.exception)
        assert not open_catalogs, f"`medcbir {' '.join(args)}` left a catalog open"
        held = [f for f in _open_files_under(data) if "catalog.sqlite3" in f]
        assert not held, f"`medcbir {' '.join(args)}` still holds {held}"
    stats = CliRunner().invoke(app, ["stats", "--data-dir", str(data)])
    assert "images:        2" in stats.output
    assert "backend:       auto" in stats.output  # the fast path by default, said by stats
    (data / "catalog.sqlite3").unlink()
