"""`medcbir users` and `medcbir audit`: no default passwords, passwords from standard input, role changes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from indexer.catalog import Catalog
from indexer.cli import app
from indexer.governance.accounts import authenticate
from indexer.settings import IndexerSettings

PASSWORD = "first admin password 1"


def _run(data: Path, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*args, "--data-dir", str(data)], input=stdin)


def test_users_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _run(data, "users", "list").output.strip() == ""  # no account exists until one is created
    weak = _run(data, "users", "create", "--admin", "--username", "boss", stdin="short\n")
    assert weak.exit_code != 0 and "at least 12 characters" in weak.output
    created = _run(data, "users", "create", "--admin", "--username", "boss", stdin=PASSWORD + "\n")
    assert created.exit_code == 0 and "created admin boss" in created.output
    assert _run(data, "users", "create", "--username", "boss", stdin=PASSWORD + "\n").exit_code != 0
    assert _run(data, "users", "create", "--username", "rad", stdin=PASSWORD + "\n").exit_code == 0
    service = _run(data, "users", "create", "--service", "--username", "pacs-bridge")
    assert service.exit_code == 0 and "mcb_" in service.output
    listing = _run(data, "users", "list").output
    assert "boss\tadmin\tactive\tperson" in listing and "pacs-bridge\tradiologist\tactive\tservice" in listing
    catalog = Catalog(IndexerSettings(data_dir=data).resolved_database_url)
    try:
        assert authenticate(catalog, "boss", PASSWORD) is not None
        assert authenticate(catalog, "boss", PASSWORD + "x") is None
        assert _run(data, "users", "disable", "boss").exit_code != 0  # the last admin stays
        assert "rad: admin" in _run(data, "users", "set-role", "rad", "admin").output
        assert "boss: admin, disabled" in _run(data, "users", "disable", "boss").output
        assert authenticate(catalog, "boss", PASSWORD) is None
        assert "boss: admin, active" in _run(data, "users", "enable", "boss").output
        assert _run(data, "users", "set-role", "rad", "superuser").exit_code != 0
        assert _run(data, "users", "disable", "nobody").exit_code != 0
    finally:
        catalog.dispose()
    audit = _run(data, "audit", "--limit", "20").output
    for action in ("create_user", "set_role", "disable_user", "enable_user"):
        assert f"  {action}  " in audit
    assert PASSWORD not in audit
