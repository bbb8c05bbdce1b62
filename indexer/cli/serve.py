"""Starting the upper layers: serve (the API), ui (Streamlit) and demo (index the demo archive, then both)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any

import typer

from indexer.cli.options import Checkpoint, DataDir, Encoder, Host, Port, settings_from
from indexer.cli.runtime import fail, opened_archive, opened_catalog, setup_logging
from indexer.settings import IndexerSettings

# The API and the UI are higher layers: they are started by import string or script path, never
# imported here (see the import-linter layers contract).
API_FACTORY = "search_api.app:create_app"


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """How the API is run by uvicorn. uvicorn believes X-Forwarded-For from loopback by default, which
    lets anyone on the host forge the client the login limiter and the audit see; it never does here:
    the app believes only the proxies of MEDCBIR_API_TRUSTED_PROXIES (none by default)."""
    return {"factory": True, "host": host, "port": port, "proxy_headers": False, "forwarded_allow_ips": ""}


def api_env(settings: IndexerSettings) -> dict[str, str]:
    """The environment an API process reads its settings from: this process's, plus the flags given."""
    env = dict(os.environ)
    env["MEDCBIR_DATA_DIR"] = str(settings.data_dir)
    env["MEDCBIR_ENCODER"] = settings.encoder
    if settings.checkpoint is not None:
        env["MEDCBIR_CHECKPOINT"] = str(settings.checkpoint)
    return env


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
) -> None:
    """Serve the search API (loads the encoder, catalog and index once)."""
    setup_logging()
    import uvicorn

    settings = settings_from(data_dir, encoder, checkpoint)
    os.environ.update(api_env(settings))
    os.environ["MEDCBIR_API_HOST"] = host  # the API refuses non-loopback hosts without authentication
    uvicorn.run(API_FACTORY, **uvicorn_options(host, port))


def _ui_script() -> Path:
    spec = find_spec("ui")
    if spec is None or spec.origin is None:
        raise fail("the ui package is not installed; reinstall medcbir")
    return Path(spec.origin).parent / "web_app.py"  # app.py plus the sign-in cookie route


def _ui_command(api_url: str, host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(_ui_script()),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--", "--api-url", api_url,
    ]  # fmt: skip


def ui(
    api_url: Annotated[
        str, typer.Option(envvar="MEDCBIR_UI_API_URL", help="Base URL of the search API")
    ] = "http://127.0.0.1:8000",
    host: Host = "127.0.0.1",
    port: Port = 8501,
) -> None:
    """Start the Streamlit UI, talking to the search API over HTTP."""
    raise typer.Exit(subprocess.call(_ui_command(api_url, host, port)))


def _wait_for_api(url: str, process: subprocess.Popen[bytes], timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise fail(f"the API process exited with code {process.returncode}; see the log above")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise fail(f"the API did not answer at {url} within {timeout_s:.0f} s")


def _has_accounts(settings: IndexerSettings) -> bool:
    from indexer.governance.accounts import list_accounts

    with opened_catalog(settings) as catalog:
        return bool(list_accounts(catalog))


def demo(
    data: Annotated[
        Path | None, typer.Option(help="Your own archive folder instead of the embedded demo")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest CSV for --data (same columns as `index`)")
    ] = None,
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Address for the API and UI")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="API port")] = 8000,
    ui_port: Annotated[int, typer.Option(help="UI port")] = 8501,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the API and UI after indexing")
    ] = True,
) -> None:
    """Build and index the embedded demo archive (or --data), then serve the API and the UI."""
    setup_logging()
    from indexer.cli.demo import DEMO_COLUMNS, build_demo_archive, demo_manifest
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest

    settings = settings_from(data_dir)
    root = data
    columns = ManifestColumns()
    if root is None:
        root = settings.data_dir / "demo-archive"
        files = build_demo_archive(root)
        typer.echo(f"demo archive: {len(files)} distinct images in {root}")
        manifest, columns = demo_manifest(root), DEMO_COLUMNS
    loaded = load_manifest(manifest, columns) if manifest is not None else None
    with opened_archive(settings) as archive:
        report = ingest_path(archive, root, loaded)
    typer.echo(f"indexed {report.indexed}, already indexed {report.already_indexed}, failed {report.failed}")
    if not serve_after:
        return
    api_url = f"http://{host}:{api_port}"
    env = api_env(settings)
    env["MEDCBIR_API_HOST"] = host
    if not _has_accounts(settings):
        # A fresh demo has no accounts: serve it in the explicit development mode, which the API
        # honours on loopback only (it refuses to start with it on any other address).
        env["MEDCBIR_API_AUTH_DISABLED"] = "1"
        typer.secho("no user accounts: demo API in development mode (loopback only, no sign-in)", fg="yellow")
    # --no-proxy-headers as in uvicorn_options: only the app decides whom to believe.
    command = [sys.executable, "-m", "uvicorn", API_FACTORY, "--factory", "--no-proxy-headers"]
    api = subprocess.Popen([*command, "--host", host, "--port", str(api_port)], env=env)
    ui_process: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_api(api_url, api)
        ui_process = subprocess.Popen(_ui_command(api_url, host, ui_port))
        typer.secho(f"search API: {api_url}  (docs: {api_url}/docs)", fg=typer.colors.GREEN)
        typer.secho(f"UI:         http://{host}:{ui_port}", fg=typer.colors.GREEN)
        typer.echo("press Ctrl-C to stop")
        while api.poll() is None and ui_process.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (ui_process, api):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
