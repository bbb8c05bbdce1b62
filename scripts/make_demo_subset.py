"""Build the demo archive's labeled subset (indexer/cli/demo_archive/) from ../shared/datasets/covid-chestxray.

Keeps only images whose `license` column names a Creative Commons licence that allows adaptation
(CC BY, CC BY-SA, CC BY-NC-SA; no-derivatives and unlicensed images are left out, since the subset is
downscaled), a real finding (not `todo`), X-ray or CT, and clinical notes (the case's report text, as
published). Every kept row keeps its licence, DOI and source URL in the manifest.

    python scripts/make_demo_subset.py [--source ../shared/datasets/covid-chestxray] [--side 320]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "covid-chestxray"
TARGET = ROOT / "indexer" / "cli" / "demo_archive"
ADAPTABLE = {"CC BY", "CC BY 3.0", "CC BY 4.0", "CC BY-SA", "CC BY-NC-SA", "CC BY-NC-SA 4.0"}
# At most this many images per finding (COVID-19 has ~500; the rare findings keep all they have).
PER_FINDING = 60
MAX_BYTES = 10 * 1024 * 1024
FIELDS = ["filename", "patient", "finding", "modality", "view", "report", "license", "doi", "url"]


def _rows(source: Path) -> list[dict[str, str]]:
    with (source / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept = []
    seen: set[str] = set()
    for row in rows:
        name = row["filename"]
        if (
            row["license"].strip() in ADAPTABLE
            and row["finding"].strip() not in ("", "todo")
            and row["modality"] in ("X-ray", "CT")
            and row["clinical_notes"].strip()
            and (source / "images" / name).is_file()
            and name not in seen
        ):
            seen.add(name)
            kept.append(row)
    return kept


def _select(rows: list[dict[str, str]], seed: int) -> list[dict[str, str]]:
    by_finding: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_finding[row["finding"]].append(row)
    rng = random.Random(seed)
    chosen = []
    for finding in sorted(by_finding):
        members = sorted(by_finding[finding], key=lambda r: r["filename"])
        rng.shuffle(members)
        chosen.extend(members[:PER_FINDING])
    return sorted(chosen, key=lambda r: (r["patientid"], r["filename"]))


def _downscaled(path: Path, side: int) -> bytes:
    with Image.open(path) as image:
        grey = image.convert("L")
        grey.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        grey.save(out, format="JPEG", quality=85, optimize=True)
        return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--side", type=int, default=320, help="longest side of the stored JPEGs (px)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = _select(_rows(args.source), args.seed)
    images = TARGET / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    total = 0
    manifest = []
    for row in rows:
        name = Path(row["filename"]).stem + ".jpg"
        data = _downscaled(args.source / "images" / row["filename"], args.side)
        (images / name).write_bytes(data)
        total += len(data)
        manifest.append(
            {
                "filename": name,
                "patient": f"covid-{row['patientid']}",
                "finding": row["finding"].strip(),
                "modality": row["modality"],
                "view": row["view"].strip(),
                "report": row["clinical_notes"].strip(),
                "license": row["license"].strip(),
                "doi": row["doi"].strip(),
                "url": row["url"].strip(),
            }
        )
    with (TARGET / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(manifest)
    if total > MAX_BYTES:
        raise SystemExit(f"the subset is {total / 2**20:.1f} MiB, over the 10 MiB the datasets README allows")
    findings: dict[str, int] = defaultdict(int)
    for row in manifest:
        findings[row["finding"]] += 1
    print(
        f"{len(manifest)} images, {len({r['patient'] for r in manifest})} patients, {total / 2**20:.2f} MiB"
    )
    for finding, count in sorted(findings.items(), key=lambda item: -item[1]):
        print(f"  {finding}: {count}")


if __name__ == "__main__":
    main()
