"""`medcbir index` on the hostile corpus: exit 0, bad inputs recorded with reasons, good ones indexed, RSS bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from indexer.catalog import Catalog, Image
from indexer.settings import IndexerSettings
from indexer.storage.stored import SourceUri
from scripts.make_hostile_corpus import CorpusItem, build_corpus

# Peak RSS a hostile input may add to a process that has already indexed good files (model loaded):
# measured +0..60 MB for the corpus (bombs refused at ~64 MiB inflated); the old code read a sparse tar
# member whole (768 MiB) and 32 zip members per batch.
RSS_GROWTH_BOUND_MB = 400

# Runs every `medcbir index` in one process through the real typer app (the model loads once), decoding
# in a thread (--workers 0) so that ru_maxrss covers all of it; one JSON line per run.
DRIVER = textwrap.dedent(
    """
    import json, logging, resource, sys
    from typer.testing import CliRunner
    from indexer.cli import app
    data, runs = sys.argv[1], json.loads(sys.argv[2])
    for target, extra in runs:
        result = CliRunner().invoke(app, ["index", target, "--data-dir", data, "--no-progress", "--workers", "0", *extra])
        logging.getLogger().handlers.clear()  # basicConfig bound them to this run's captured stderr
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"target": target, "code": result.exit_code, "rss_mb": rss, "output": result.output}))
    """
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusItem]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, build_corpus(root)


def _drive(data: Path, runs: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(data), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_index_on_the_hostile_corpus(corpus: tuple[Path, list[CorpusItem]], tmp_path: Path) -> None:
    root, items = corpus
    archives = [i for i in items if i.kind == "archive"]
    good_archives = [str(i.path) for i in archives if i.expectation == "index"]
    hostile = [str(root / "folder")] + [str(i.path) for i in archives if i.expectation == "fail"]
    results = _drive(tmp_path / "data", [(t, []) for t in good_archives + hostile])
    assert [r["target"] for r in results] == good_archives + hostile
    for r in results:
        assert r["code"] == 0, r["output"]
        assert "Traceback" not in r["output"]
    baseline = results[len(good_archives) - 1]["rss_mb"]
    peak = max(r["rss_mb"] for r in results)
    assert peak - baseline <= RSS_GROWTH_BOUND_MB, [(r["target"], r["rss_mb"]) for r in results]

    catalog = Catalog(IndexerSettings(data_dir=tmp_path / "data").resolved_database_url)
    with catalog.session() as session:
        indexed = set(session.scalars(select(Image.source_uri)))
    failures = {f.source_uri: f for f in catalog.failures(1000)}
    catalog.dispose()
    for item in items:
        if item.kind == "image":
            uri = str(SourceUri.of_file(item.path.resolve()))
            if item.expectation == "index":
                assert uri in indexed, (
                    f"{item.path.name} ({item.reason}) was not indexed: {failures.get(uri)}"
                )
            else:
                assert uri in failures and failures[uri].reason, (
                    f"{item.path.name} ({item.reason}) not recorded"
                )
        elif item.kind == "archive":
            prefix = str(SourceUri.of_file(item.path.resolve()))
            members = [u for u in indexed if u.startswith(prefix)]
            refused = [
                f for u, f in failures.items() if u.startswith(prefix) and "MEDCBIR_ARCHIVE_" in f.reason
            ]
            if item.expectation == "index":
                assert len(members) == 2 and not refused, item.path.name
            else:
                assert not members and refused, (
                    f"{item.path.name} ({item.reason}): no refusal naming a setting"
                )


def test_index_with_the_hostile_manifests(corpus: tuple[Path, list[CorpusItem]], tmp_path: Path) -> None:
    root, items = corpus
    manifests = {i.path.name: i for i in items if i.kind == "manifest"}
    runs = [(str(root / "folder" / "good"), ["--manifest", str(i.path)]) for i in manifests.values()]
    results = _drive(tmp_path / "data", runs)
    for item, r in zip(manifests.values(), results, strict=True):
        assert "Traceback" not in r["output"], item.path.name
        if item.expectation == "index":
            assert r["code"] == 0, (item.path.name, r["output"])
            assert "manifest rows matched no file" in r["output"]  # the aspect files and the missing row
        else:
            assert r["code"] == 2 and "error: manifest" in r["output"], (item.path.name, r["output"])
