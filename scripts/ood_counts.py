"""How many queries the OOD threshold of `medcbir train-head` flags: held-out MRIs, chest X-rays, photographs, noise.

Reproduces the README's out-of-distribution counts (Predictions section) on the brain MRI archive:

    python scripts/brain_mri_subsample.py --per-class 200 --out /tmp/mri_src
    medcbir index /tmp/mri_src --manifest /tmp/mri_src/manifest.csv --data-dir /tmp/mri
    medcbir train-head --data-dir /tmp/mri --seed 0 --json benchmarks/train_head_brain_mri_800.json
    python scripts/ood_counts.py --data-dir /tmp/mri --source /tmp/mri_src --output benchmarks/ood_counts_brain_mri.json

A query is flagged when its best similarity to the archive is below the newest vote calibration's
threshold, as the search API flags it. The MRI queries are Testing-split images whose file is not in the
archive (md5); the X-rays come from the COVID-19 collection; all are decoded by imaging.load_image.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imaging import load_image
from indexer.archive import Archive
from indexer.prediction.versions import latest_vote_calibration
from indexer.settings import IndexerSettings

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


def photographs() -> list[npt.NDArray[np.float32]]:
    """Five colour photographs bundled with scikit-image, as float32 H x W x 3 in [0, 1]."""
    from skimage import data as skdata

    return [(np.asarray(getattr(skdata, name)())[..., :3] / 255).astype(np.float32) for name in PHOTOGRAPHS]


def mri_queries(root: Path, source: Path, count: int, seed: int) -> list[Path]:
    """`count` Testing-split MRIs (seeded, md5-unique) whose bytes are not among the archive's files."""
    stored = {hashlib.md5(p.read_bytes()).hexdigest() for p in source.glob("*.jpg")}
    rows = [r for r in csv.DictReader((root / "labels.csv").open()) if r["split"] == "Testing"]
    picked: list[Path] = []
    seen = set(stored)
    for i in np.random.default_rng(seed).permutation(len(rows)):
        if len(picked) == count:
            break
        if rows[i]["md5"] not in seen:
            seen.add(rows[i]["md5"])
            picked.append(root / rows[i]["path"])
    return picked


def xray_queries(root: Path, count: int, seed: int) -> list[Path]:
    """`count` chest X-rays of the COVID-19 collection (seeded)."""
    rows = [r for r in csv.DictReader((root / "metadata.csv").open()) if r["modality"] == "X-ray"]
    paths = [root / "images" / r["filename"] for r in rows if (root / "images" / r["filename"]).is_file()]
    order = np.random.default_rng(seed).permutation(len(paths))[:count]
    return [paths[i] for i in order]


def top_similarities(archive: Archive, images: list[npt.NDArray[np.float32]]) -> list[float]:
    """Each image's best cosine similarity to the archive."""
    vectors = archive.encoder.embed(images)
    return [float(r.similarities[0]) for r in archive.index.search(vectors, 1)]


def summary(similarities: list[float], threshold: float) -> dict[str, Any]:
    values = np.asarray(similarities)
    return {
        "queries": len(values),
        "flagged_out_of_distribution": int((values < threshold).sum()),
        "top_similarity_min": round(float(values.min()), 4),
        "top_similarity_median": round(float(np.median(values)), 4),
        "top_similarity_max": round(float(values.max()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the indexed archive (after train-head)")
    parser.add_argument("--source", type=Path, required=True, help="the folder that was indexed")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--mri", type=int, default=100)
    parser.add_argument("--xrays", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    archive = Archive.open(IndexerSettings(data_dir=args.data_dir))
    calibration = latest_vote_calibration(args.data_dir, archive.encoder.name)
    if calibration is None:
        raise SystemExit(f"no vote calibration in {args.data_dir}: run `medcbir train-head` first")
    threshold = float(calibration.ood_similarity)
    mri = mri_queries(args.datasets / "brain-tumor-mri", args.source, args.mri, args.seed)
    xrays = xray_queries(args.datasets / "covid-chestxray", args.xrays, args.seed)
    noise = [np.random.default_rng(args.seed).random((224, 224, 3), dtype=np.float32)]
    groups = {
        "held_out_mri": [load_image(p.read_bytes()).pixels for p in mri],
        "chest_xray": [load_image(p.read_bytes()).pixels for p in xrays],
        "photograph": photographs(),
        "uniform_noise": noise,
    }
    result: dict[str, Any] = {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "encoder": archive.encoder.name,
        "archive_images": len(archive.index),
        "ood_similarity": round(threshold, 4),
        "photographs": list(PHOTOGRAPHS),
        "groups": {
            name: summary(top_similarities(archive, images), threshold) for name, images in groups.items()
        },
    }
    result["seconds"] = round(time.monotonic() - started, 1)
    archive.close()
    line = json.dumps(result)
    print(line)
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
