"""Crash-safety drill: SIGKILL `medcbir index` at random moments, resume, and check nothing is lost or doubled.

Generates N small real-looking DICOM files (pixels of pydicom's bundled CT/MR images, perturbed per
file, re-encoded with fresh UIDs), then K times starts `medcbir index` and kills it with SIGKILL, and
finally runs it to completion. By default (`--kill-when rows`) each kill lands once the catalog holds
a random number of new rows (polled), so the catalog is partly written when the power goes, whatever
the model's start-up time; `--kill-when time` kills after a random delay instead. Asserts: every file
indexed exactly once, the saved index holds exactly the catalog's ids, no duplicate SOP Instance UID or
sha256. Prints one JSON line: per run, the rows the catalog held after the kill and how many times the
next run rebuilt the index ("REBUILDING" in its log).

    python scripts/crash_ingest.py --files 2000 --kills 10 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SOURCES = ("CT_small.dcm", "MR_small.dcm")


def make_corpus(folder: Path, n: int, seed: int) -> None:
    """N distinct DICOM files: bundled pixels with a per-file perturbation and new UIDs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    templates = [pydicom.dcmread(str(get_testdata_file(name))) for name in SOURCES]
    study = generate_uid()
    for i in range(n):
        ds = templates[i % len(templates)].copy()
        pixels = ds.pixel_array.astype(np.int32)
        y, x = rng.integers(0, pixels.shape[0] - 8), rng.integers(0, pixels.shape[1] - 8)
        pixels[y : y + 8, x : x + 8] = int(pixels.max())  # a marker makes each file's pixels unique
        pixels += int(rng.integers(-20, 20))
        ds.PixelData = (
            pixels.clip(np.iinfo(ds.pixel_array.dtype).min, np.iinfo(ds.pixel_array.dtype).max)
            .astype(ds.pixel_array.dtype)
            .tobytes()
        )
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{i:06d}.dcm")


def catalog_rows(data_dir: Path) -> int:
    """Images the catalog holds now (0 before it exists); a busy moment is waited out, never counted as 0."""
    path = data_dir / "catalog.sqlite3"
    for _ in range(100):
        if not path.exists():
            return 0
        try:
            with closing(sqlite3.connect(path, timeout=5)) as connection:
                return int(connection.execute("SELECT count(*) FROM images").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # the first run has not created its tables yet
            time.sleep(0.05)
    raise RuntimeError(f"the catalog {path} stayed locked")


def run_index(
    folder: Path,
    data_dir: Path,
    encoder: str,
    kill_after: float | None = None,
    kill_at_rows: int | None = None,
) -> tuple[int | None, str]:
    """Run `medcbir index`; SIGKILL it after `kill_after` seconds or once the catalog holds `kill_at_rows`
    images. Answers (exit code, or None when killed; its output)."""
    env = dict(os.environ, MEDCBIR_DATA_DIR=str(data_dir), MEDCBIR_ENCODER=encoder)
    cmd = [sys.executable, "-m", "indexer.cli", "index", str(folder), "--no-progress"]
    # its own session, so SIGKILL takes the whole process group (decode workers too), like a power cut
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    if kill_after is None and kill_at_rows is None:
        out, _ = process.communicate()
        return process.returncode, out
    if kill_at_rows is not None:
        while process.poll() is None and catalog_rows(data_dir) < kill_at_rows:
            time.sleep(0.02)
        kill_after = 0.0
    try:
        out, _ = process.communicate(timeout=kill_after)
        return process.returncode, out  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return None, out


def check(data_dir: Path, encoder: str, n: int) -> dict[str, object]:
    from sqlalchemy import func, select

    from embeddings import create_encoder
    from indexer.archive import index_path
    from indexer.catalog import Catalog, Image
    from indexer.settings import IndexerSettings
    from indexer.vectors.index import VectorIndex

    settings = IndexerSettings(data_dir=data_dir, encoder=encoder)
    enc = create_encoder(encoder)
    catalog = Catalog(settings.resolved_database_url)
    ids = np.sort(catalog.image_ids_where(encoder=enc.name))
    saved = VectorIndex.load(index_path(settings, enc), encoder=enc.name, dim=enc.dim)
    with catalog.session() as session:
        dup_uid = session.execute(
            select(func.count()).select_from(
                select(Image.sop_instance_uid).group_by(Image.sop_instance_uid, Image.frame_index)
                .having(func.count() > 1).subquery()
            )
        ).scalar_one()  # fmt: skip
        dup_sha = session.execute(
            select(func.count()).select_from(
                select(Image.sha256)
                .group_by(Image.sha256, Image.frame_index)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
    stats = catalog.stats()
    result = {
        "images": stats.images,
        "failures": stats.failures,
        "index_equals_catalog": bool(np.array_equal(np.sort(saved.ids()), ids)),
        "duplicate_sop_uids": int(dup_uid),
        "duplicate_sha256": int(dup_sha),
    }
    assert stats.images == n, f"{stats.images} images indexed, expected {n}"
    assert stats.failures == 0, f"{stats.failures} failures recorded"
    assert result["index_equals_catalog"], "saved index ids differ from catalog ids"
    assert dup_uid == 0 and dup_sha == 0, "duplicates in the catalog"
    catalog.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument(
        "--kill-when",
        choices=("rows", "time"),
        default="rows",
        help="rows: once the catalog holds a random number of new rows; time: after a random delay",
    )
    parser.add_argument(
        "--min-delay", type=float, default=2.0, help="time: earliest kill, seconds after start"
    )
    parser.add_argument(
        "--max-delay", type=float, default=None, help="time: latest kill [default: from the corpus size]"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medcbir-crash-"))
    folder, data_dir = work / "corpus", work / "data"
    make_corpus(folder, args.files, args.seed)
    max_delay = args.max_delay or max(args.min_delay + 1, args.files / 15)
    start = time.perf_counter()
    runs: list[dict[str, object]] = []
    for _ in range(args.kills):
        before = catalog_rows(data_dir)
        if args.kill_when == "rows":  # a few more rows than now, at most 3/4 of what is left
            rows = before + rng.randint(1, max(1, (args.files - before) * 3 // 4))
            code, out = run_index(folder, data_dir, args.encoder, kill_at_rows=rows)
        else:
            code, out = run_index(
                folder, data_dir, args.encoder, kill_after=rng.uniform(args.min_delay, max_delay)
            )
        if code not in (None, 0):
            raise SystemExit(f"index run failed with exit code {code}:\n{out[-3000:]}")
        if runs:
            runs[-1]["rebuilds_logged"] = out.count("REBUILDING")  # this run recovered the previous kill
        runs.append({"killed": code is None, "rows_before": before, "rows_at_kill": catalog_rows(data_dir)})
    code, out = run_index(folder, data_dir, args.encoder)
    if code != 0:
        raise SystemExit(f"final index run failed with exit code {code}:\n{out[-3000:]}")
    if runs:
        runs[-1]["rebuilds_logged"] = out.count("REBUILDING")
    result = check(data_dir, args.encoder, args.files)
    killed = [run for run in runs if run["killed"]]
    result.update(
        files=args.files,
        kill_when=args.kill_when,
        kills=len(killed),
        runs_finished_before_kill=len(runs) - len(killed),
        kills_with_catalog_partly_written=sum(0 < int(run["rows_at_kill"]) < args.files for run in killed),  # type: ignore[call-overload]
        rebuilds_logged=sum(int(run.get("rebuilds_logged", 0)) for run in runs),  # type: ignore[call-overload]
        runs=runs,
        seed=args.seed,
        elapsed_s=round(time.perf_counter() - start, 1),
        ok=True,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
