"""Who may do what, and what they did: the `users` sub-app, audit, and de-identified export."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.cli.options import DataDir, settings_from
from indexer.cli.runtime import cli_audit, fail, opened_catalog, setup_logging

if TYPE_CHECKING:
    from indexer.catalog import Catalog
    from indexer.governance.accounts import Account

users_app = typer.Typer(help="User accounts of the search API (no default passwords).", no_args_is_help=True)


def _read_password(username: str) -> str:
    """From a hidden prompt (twice) at a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        password: str = typer.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _governed_catalog(data_dir: Path | None) -> AbstractContextManager[Catalog]:
    """The catalog account and audit commands work on; the data folder is created when new."""
    return opened_catalog(settings_from(data_dir), create_data_dir=True)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Option("--username", help="Login name")],
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role")] = False,
    role: Annotated[str, typer.Option(help="radiologist or admin")] = "radiologist",
    service: Annotated[
        bool, typer.Option("--service", help="A service account: no password, prints an API key")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a user; the password is read from a prompt, or from standard input when not a terminal."""
    from indexer.governance.accounts import AccountError, create_api_key, create_user

    with _governed_catalog(data_dir) as catalog:
        try:
            password = None if service else _read_password(username)
            account = create_user(catalog, username, password, "admin" if admin else role, service=service)
            cli_audit(catalog, "create_user", f"user:{account.username}")
            typer.echo(f"created {account.role} {account.username}")
            if service:
                typer.echo(
                    f"API key (shown once; send it as the X-API-Key header): {create_api_key(catalog, username)}"
                )
        except AccountError as exc:
            raise fail(str(exc)) from exc


@users_app.command("list")
def users_list(data_dir: DataDir = None) -> None:
    """List the accounts."""
    from indexer.governance.accounts import list_accounts

    with _governed_catalog(data_dir) as catalog:
        for account in list_accounts(catalog):
            status = "disabled" if account.disabled else "active"
            kind = "service" if account.service else "person"
            typer.echo(f"{account.username}\t{account.role}\t{status}\t{kind}")


def _user_change(
    data_dir: Path | None, action: str, username: str, change: Callable[[Catalog], Account]
) -> None:
    """Apply one change to an account, audit it and print the account's new state."""
    from indexer.governance.accounts import AccountError

    with _governed_catalog(data_dir) as catalog:
        try:
            account = change(catalog)
            cli_audit(catalog, action, f"user:{username}")
            typer.echo(f"{account.username}: {account.role}, {'disabled' if account.disabled else 'active'}")
        except AccountError as exc:
            raise fail(str(exc)) from exc


@users_app.command("disable")
def users_disable(username: str, data_dir: DataDir = None) -> None:
    """Disable a user: their tokens and API keys stop working at once."""
    from indexer.governance.accounts import set_disabled

    _user_change(data_dir, "disable_user", username, lambda c: set_disabled(c, username, True))


@users_app.command("enable")
def users_enable(username: str, data_dir: DataDir = None) -> None:
    """Enable a disabled user."""
    from indexer.governance.accounts import set_disabled

    _user_change(data_dir, "enable_user", username, lambda c: set_disabled(c, username, False))


@users_app.command("set-role")
def users_set_role(username: str, role: str, data_dir: DataDir = None) -> None:
    """Change a user's role (radiologist or admin)."""
    from indexer.governance.accounts import set_role

    _user_change(data_dir, "set_role", username, lambda c: set_role(c, username, role))


@users_app.command("set-password")
def users_set_password(username: str, data_dir: DataDir = None) -> None:
    """Replace a user's password (prompt, or standard input when not a terminal)."""
    from indexer.governance.accounts import AccountError, set_password

    with _governed_catalog(data_dir) as catalog:
        try:
            set_password(catalog, username, _read_password(username))
            cli_audit(catalog, "set_password", f"user:{username}")
            typer.echo(f"password of {username} changed")
        except AccountError as exc:
            raise fail(str(exc)) from exc


@users_app.command("api-key")
def users_api_key(username: str, data_dir: DataDir = None) -> None:
    """Issue a new API key for a (service) account; it is printed once and stored only as a hash."""
    from indexer.governance.accounts import AccountError, create_api_key

    with _governed_catalog(data_dir) as catalog:
        try:
            key = create_api_key(catalog, username)
            cli_audit(catalog, "create_api_key", f"user:{username}")
            typer.echo(key)
        except AccountError as exc:
            raise fail(str(exc)) from exc


def audit(
    limit: Annotated[int, typer.Option(help="How many rows, newest first")] = 50,
    user: Annotated[str | None, typer.Option(help="Only this user's rows")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action (search, view_case, login, ...)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print the audit trail: UTC time, user, role, action, object, outcome, client, request id."""
    from indexer.governance.audit import audit_records

    with _governed_catalog(data_dir) as catalog:
        total, rows = audit_records(catalog, limit=limit, username=user, action=action)
    for r in rows:
        typer.echo(
            f"{r.at:%Y-%m-%dT%H:%M:%SZ}  {r.username or '-'}  {r.role or '-'}  {r.action}  {r.object or '-'}  "
            f"{r.outcome}({r.status or '-'})  {r.client or '-'}  {r.request_id or '-'}"
        )
    typer.echo(f"{len(rows)} of {total} rows")


def export(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the DICOM files to")],
    deidentify: Annotated[
        bool, typer.Option("--deidentify", help="Required: apply the PS3.15 Basic Profile")
    ] = False,
    case: Annotated[list[int] | None, typer.Option("--case", help="Only this case id (repeatable)")] = None,
    allow_burned_in: Annotated[
        bool, typer.Option("--allow-burned-in", help="Export images flagged Burned In Annotation = YES")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Export archived DICOM files de-identified (PS3.15 Basic Profile); exit 1 when any was not exported."""
    setup_logging()
    from indexer.governance.export import export_deidentified
    from indexer.governance.pseudonym import load_or_create_key

    if not deidentify:
        raise fail("medcbir only exports de-identified data: add --deidentify")
    settings = settings_from(data_dir)
    with opened_catalog(settings, create_data_dir=True) as catalog:
        report = export_deidentified(
            catalog,
            load_or_create_key(settings.key_path),
            out,
            case_ids=case,
            allow_burned_in=allow_burned_in,
        )
        cli_audit(
            catalog, "export", f"images:{report.exported} cases:{','.join(map(str, case or [])) or 'all'}"
        )
    typer.echo(f"{report.summary()} (de-identified, to {out})")
    for line in report.failure_lines():
        typer.echo(f"  {line}")
    if report.burned_in_refused:
        typer.echo("check those images' pixels, then re-run with --allow-burned-in to include them")
    if not report.complete:
        raise typer.Exit(code=1)
