"""Copy a seeded, md5-unique per-class subsample of the brain tumour MRI set into a folder with a manifest.

Reproduces the README's prediction numbers:

    python scripts/brain_mri_subsample.py --per-class 200 --out /tmp/mri_src
    medcbir index /tmp/mri_src --manifest /tmp/mri_src/manifest.csv --data-dir /tmp/mri
    medcbir train-head --data-dir /tmp/mri
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "brain-tumor-mri"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--split", default="Training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = list(csv.DictReader((args.root / "labels.csv").open()))
    rng = np.random.default_rng(args.seed)
    seen: set[str] = set()
    picked: list[dict[str, str]] = []
    for label in sorted({r["label"] for r in rows}):
        pool = [r for r in rows if r["label"] == label and r["split"] == args.split]
        taken = 0
        for i in rng.permutation(len(pool)):
            if taken == args.per_class:
                break
            if pool[i]["md5"] not in seen:
                seen.add(pool[i]["md5"])
                picked.append(pool[i])
                taken += 1
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "case_id", "diagnosis"])
        for n, row in enumerate(picked):
            name = f"{n:04d}.jpg"
            shutil.copyfile(args.root / row["path"], args.out / name)
            writer.writerow([name, f"MRI-{n:04d}", row["label"]])
    print(f"{len(picked)} images in {args.out}")


if __name__ == "__main__":
    main()
