"""Region vs whole-image queries on the COVID-19 chest X-rays with lung boxes: precision@10, mAP@10, location.

Every X-ray with a finding and a lung-box annotation is a query against every other patient's X-rays
(leave one patient out); it is asked three ways: the whole image, the box around both lungs, the right
lung's box. The database is always whole images, as the product indexes them. With --locate N, the
first N queries' lung-union regions are also located in their 10 neighbours (the API's second stage),
and the located box is compared with the neighbour's own lung box where it has one (IoU, and whether
the located box's centre lies in the neighbour's lungs).

    python scripts/eval_regions.py --data ../shared/datasets/covid-chestxray --cache-dir artifacts/fb/cache \
        --locate 40 --json benchmarks/regions_covid.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings import create_encoder
from embeddings.encoder import Encoder
from embeddings.explain import feature_box
from embeddings.regions import locate_region
from imaging.region import Box, crop
from indexer.evaluation import metrics
from indexer.evaluation.datasets import ManifestSpec, load_dataset
from indexer.evaluation.protocol import embed_dataset

K = 10
ANNOTATIONS = "annotations/imageannotation_ai_lung_bounding_boxes.json"


def lung_boxes(root: Path) -> dict[str, dict[Any, Any]]:
    """file name -> {'size': (w, h) of the annotated original, 1: right lung xywh, 2: left lung xywh}."""
    raw = json.loads((root / ANNOTATIONS).read_text())
    by_id = {im["id"]: {"name": im["file_name"], "size": (im["width"], im["height"])} for im in raw["images"]}
    out: dict[str, dict[Any, Any]] = {}
    for ann in raw["annotations"]:
        image = by_id[ann["image_id"]]
        if len(ann.get("bbox") or []) != 4 or any(v is None for v in ann["bbox"]):
            continue  # a few upstream annotations have no box
        out.setdefault(image["name"], {"size": image["size"]})[ann["category_id"]] = ann["bbox"]
    return out


def scaled(xywh: list[float], size: tuple[int, int], shape: tuple[int, ...]) -> Box:
    """An annotation box (original pixels) in the pixels of the decoded (downscaled) image."""
    sx, sy = shape[1] / size[0], shape[0] / size[1]
    x, y, w, h = xywh
    x0, y0 = max(0, int(x * sx)), max(0, int(y * sy))
    return Box(
        x0, y0, min(shape[1], max(x0 + 8, int((x + w) * sx))), min(shape[0], max(y0 + 8, int((y + h) * sy)))
    )


def union(a: Box, b: Box) -> Box:
    return Box(min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1))


def iou(a: tuple[int, int, int, int], b: Box) -> float:
    ix = max(0, min(a[2], b.x1) - max(a[0], b.x0))
    iy = max(0, min(a[3], b.y1) - max(a[1], b.y0))
    inter = ix * iy
    total = (a[2] - a[0]) * (a[3] - a[1]) + b.width * b.height - inter
    return inter / total if total > 0 else 0.0


def scores(relevant: npt.NDArray[np.bool_]) -> dict[str, float]:
    return {
        "precision@10": float(metrics.precision_at_k(relevant, K).mean()),
        "map@10": float(metrics.average_precision_at_k(relevant, K).mean()),
        "acc@1": float(metrics.hit_at_k(relevant, 1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/covid-chestxray"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--locate", type=int, default=0, help="Queries whose region is located in neighbours")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    spec = ManifestSpec(
        path_column="filename",
        label_column="finding",
        patient_column="patientid",
        include=(("modality", "X-ray"),),
        ignore_labels=("todo",),
    )
    dataset = load_dataset(args.data / "images", args.data / "metadata.csv", spec)
    encoder = create_encoder("efficientnet_lite0")
    size = getattr(encoder, "input_size", None)
    tag = f"-{size[0]}px" if size else ""  # the same cache key as medcbir eval's
    vectors = embed_dataset(dataset, encoder, cache_dir=args.cache_dir, cache_tag=tag, progress=False)
    boxes = lung_boxes(args.data)
    names = [Path(uri.split("://")[-1]).name for uri in dataset.uris]
    queries = [i for i, n in enumerate(names) if n in boxes and 1 in boxes[n] and 2 in boxes[n]]
    patients = dataset.patients or [str(i) for i in range(len(dataset))]
    kinds = ("whole image", "both lungs (union box)", "right lung")
    lung_of: dict[int, Box] = {}
    for i in range(len(dataset)):
        if names[i] in boxes and 1 in boxes[names[i]] and 2 in boxes[names[i]]:
            ann = boxes[names[i]]
            shape = dataset.image(i).shape
            lung_of[i] = union(scaled(ann[1], ann["size"], shape), scaled(ann[2], ann["size"], shape))
    region_vectors: dict[str, list[npt.NDArray[np.float32]]] = {k: [] for k in kinds}
    for i in queries:
        pixels = dataset.image(i)
        ann = boxes[names[i]]
        right = scaled(ann[1], ann["size"], pixels.shape)
        crops = [crop(pixels, lung_of[i]), crop(pixels, right)]
        both, right_v = encoder.embed(crops)
        region_vectors["whole image"].append(vectors[i])
        region_vectors["both lungs (union box)"].append(both)
        region_vectors["right lung"].append(right_v)
    labels = dataset.labels
    results: dict[str, Any] = {}
    neighbours_of: dict[str, list[list[int]]] = {}
    for kind, qs in region_vectors.items():
        relevant = np.zeros((len(queries), K), bool)
        lists = []
        for row, (i, q) in enumerate(zip(queries, qs, strict=True)):
            sims = vectors @ q
            order = [int(j) for j in np.argsort(-sims) if patients[j] != patients[i]][:K]
            lists.append(order)
            relevant[row, : len(order)] = labels[order] == labels[i]
        results[kind] = scores(relevant)
        neighbours_of[kind] = lists
    located: dict[str, Any] = {}
    if args.locate and isinstance(encoder, Encoder):
        ious, centre_in, compared = [], [], 0
        trivial: dict[str, list[float]] = {"whole image": [], "the centre crop the model sees": []}
        for row in range(min(args.locate, len(queries))):
            hits = neighbours_of["both lungs (union box)"][row]
            images = [dataset.image(j) for j in hits]
            matches = locate_region(encoder, images, region_vectors["both lungs (union box)"][row])
            for j, match in zip(hits, matches, strict=True):
                if j not in lung_of:
                    continue
                compared += 1
                ious.append(iou(match.box, lung_of[j]))
                height, width = images[hits.index(j)].shape[:2]
                seen = feature_box(encoder, height, width)  # top, left, bottom, right as fractions
                trivial["whole image"].append(iou((0, 0, width, height), lung_of[j]))
                centre_box = (
                    int(seen[1] * width),
                    int(seen[0] * height),
                    int(seen[3] * width),
                    int(seen[2] * height),
                )
                trivial["the centre crop the model sees"].append(iou(centre_box, lung_of[j]))
                cx, cy = (match.box[0] + match.box[2]) / 2, (match.box[1] + match.box[3]) / 2
                lung = lung_of[j]
                centre_in.append(lung.x0 <= cx < lung.x1 and lung.y0 <= cy < lung.y1)
        located = {
            "queries": min(args.locate, len(queries)),
            "neighbours_with_lung_boxes": compared,
            "mean_iou_with_their_lung_box": float(np.mean(ious)) if ious else None,
            "median_iou": float(np.median(ious)) if ious else None,
            "share_iou_over_0.5": float(np.mean(np.array(ious) > 0.5)) if ious else None,
            "share_centre_inside_lungs": float(np.mean(centre_in)) if centre_in else None,
            # What a box that ignores the region would score on the same neighbours.
            "baselines_mean_iou": {k: float(np.mean(v)) if v else None for k, v in trivial.items()},
            "baselines_share_iou_over_0.5": {
                k: float(np.mean(np.array(v) > 0.5)) if v else None for k, v in trivial.items()
            },
        }
    report = {
        "dataset": "covid-chestxray X-rays with a finding (todo left out), lung boxes from upstream annotations",
        "queries": len(queries),
        "query_patients": len({patients[i] for i in queries}),
        "database": f"all {len(dataset)} X-rays but the query's patient (whole images, as indexed)",
        "encoder": encoder.name,
        "k": K,
        "retrieval": results,
        "location": located,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
