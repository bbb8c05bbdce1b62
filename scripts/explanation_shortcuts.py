"""Do explanations sit on burned-in text and borders? Grad-CAM mass and retrieval before / after masking.

On the COVID-19 chest X-rays (every X-ray with a finding; `todo` left out) each image is embedded four
ways, as an ingest option would store it: as decoded ("original"), with burned-in text / markers filled
("mask text", `imaging.masking.mask_burned_in_text`), cropped to the body ("crop body",
`crop_to_body`), and both (mask, then crop). For each way:

- the product's linear head (`indexer.prediction.heads.train_head`, default settings) is cross-fitted on
  5 folds of patients: a query's Grad-CAM comes from a head that never saw its patient; the Grad-CAM is
  that of the head's top class, as `/explain` serves it, at efficientnet_lite0's last conv map (7 x 7),
  bilinearly spread over the part of the image the model sees (`feature_box`);
- its mass is split over three label-free or annotated regions of the image the model sees: burned-in
  text / markers (the mask of the *original* pixels, so the masked variant is measured where the text
  was), the border band (outer 6% of each side of the image given to the model), and both lungs (the
  union of the upstream lung boxes, present for a subset: the queries). Each share is shown beside the
  region's share of the area (what a map spread evenly would give), and the share of queries whose
  Grad-CAM peak falls in the region;
- retrieval: precision@10 and mAP@10, leave one patient out (same finding = relevant), with every
  X-ray as a query against the same variant's database, and over the lung-box queries alone.

    python scripts/explanation_shortcuts.py --queries 120 --json benchmarks/explanation_shortcuts_covid.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from embeddings import create_encoder
from embeddings.encoder import Encoder
from embeddings.explain import feature_box, grad_cam_of_features, spatial_features
from imaging.masking import body_box, border_mask, burned_in_text_mask, mask_burned_in_text
from imaging.region import Box, crop
from indexer.evaluation import metrics
from indexer.evaluation.datasets import ManifestSpec, load_dataset
from indexer.prediction.heads import LinearHead, train_head
from indexer.prediction.labeled import LabeledEmbeddings

K = 10
FOLDS = 5
ANNOTATIONS = "annotations/imageannotation_ai_lung_bounding_boxes.json"
Pixels = npt.NDArray[np.float32]
VARIANTS = ("original", "mask text", "crop body", "mask text + crop body")


def lung_union(root: Path) -> dict[str, tuple[tuple[int, int], list[float]]]:
    """file name -> (annotated size (w, h), union of both lung boxes as x0, y0, x1, y1 in its pixels)."""
    raw = json.loads((root / ANNOTATIONS).read_text())
    by_id = {im["id"]: (im["file_name"], (im["width"], im["height"])) for im in raw["images"]}
    boxes: dict[str, dict[int, list[float]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for ann in raw["annotations"]:
        name, size = by_id[ann["image_id"]]
        if len(ann.get("bbox") or []) != 4 or any(v is None for v in ann["bbox"]):
            continue
        x, y, w, h = ann["bbox"]
        boxes.setdefault(name, {})[ann["category_id"]] = [x, y, x + w, y + h]
        sizes[name] = size
    out = {}
    for name, parts in boxes.items():
        if 1 in parts and 2 in parts:
            a, b = parts[1], parts[2]
            out[name] = (sizes[name], [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
    return out


def variants(pixels: Pixels) -> dict[str, tuple[Pixels, Box, npt.NDArray[np.bool_]]]:
    """Each variant's pixels, the box of the original they cover, and the original's text mask there."""
    text = burned_in_text_mask(pixels)
    masked = mask_burned_in_text(pixels, text)
    whole = Box(0, 0, pixels.shape[1], pixels.shape[0])
    body = body_box(pixels)
    body_masked = body_box(masked)

    def cut(mask: npt.NDArray[np.bool_], box: Box) -> npt.NDArray[np.bool_]:
        return mask[box.y0 : box.y1, box.x0 : box.x1]

    return {
        "original": (pixels, whole, text),
        "mask text": (masked, whole, text),
        "crop body": (crop(pixels, body), body, cut(text, body)),
        "mask text + crop body": (crop(masked, body_masked), body_masked, cut(text, body_masked)),
    }


def spread(cam: npt.NDArray[np.float32], encoder: Encoder, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """The h x w Grad-CAM over the image's pixels: bilinear inside the seen box, 0 outside it."""
    rows, columns = shape[:2]
    top, left, bottom, right = feature_box(encoder, rows, columns)
    y0, x0, y1, x1 = round(top * rows), round(left * columns), round(bottom * rows), round(right * columns)
    out = np.zeros((rows, columns), np.float64)
    heat = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (x1 - x0, y1 - y0), Image.Resampling.BILINEAR
    )
    out[y0:y1, x0:x1] = np.clip(np.asarray(heat, np.float64), 0, None)
    return out


def seen_mask(encoder: Encoder, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    rows, columns = shape[:2]
    top, left, bottom, right = feature_box(encoder, rows, columns)
    mask = np.zeros((rows, columns), bool)
    mask[round(top * rows) : round(bottom * rows), round(left * columns) : round(right * columns)] = True
    return mask


def seen_border(encoder: Encoder, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """The border band of what the model sees: timm's centre crop (crop_pct 0.875) already drops the outer
    ~6% of each side of the image, so the corners a Grad-CAM can light up are the crop's."""
    rows, columns = shape[:2]
    top, left, bottom, right = feature_box(encoder, rows, columns)
    y0, x0, y1, x1 = round(top * rows), round(left * columns), round(bottom * rows), round(right * columns)
    mask = np.zeros((rows, columns), bool)
    mask[y0:y1, x0:x1] = border_mask((y1 - y0, x1 - x0))
    return mask


def cross_fit_heads(
    vectors: npt.NDArray[np.float32], labels: list[str], patients: list[str], fold_of: npt.NDArray[np.int64]
) -> list[LinearHead]:
    """One product head per fold of patients, trained on the other folds."""
    heads = []
    for fold in range(FOLDS):
        train = np.flatnonzero(fold_of != fold)
        names = sorted({labels[i] for i in train})
        counts = {n: len({patients[i] for i in train if labels[i] == n}) for n in names}
        kept = [n for n in names if counts[n] >= 2]
        index = {n: c for c, n in enumerate(kept)}
        data = LabeledEmbeddings(
            ids=train.astype(np.int64),
            vectors=vectors[train],
            groups=[patients[i] for i in train],
            classes=np.array([index.get(labels[i], -1) for i in train], np.int64),
            labels=kept,
            multi_label_images=0,
            left_out_classes={n: counts[n] for n in names if n not in index},
        )
        heads.append(train_head(None, "efficientnet_lite0", data=data))  # type: ignore[arg-type]
    return heads


def retrieval(
    vectors: npt.NDArray[np.float32], labels: npt.NDArray[Any], patients: list[str], queries: list[int]
):
    relevant = np.zeros((len(queries), K), bool)
    owner = np.array(patients)
    for row, i in enumerate(queries):
        sims = vectors @ vectors[i]
        sims[owner == patients[i]] = -np.inf
        order = np.argsort(-sims)[:K]
        relevant[row] = labels[order] == labels[i]
    return {
        "precision@10": round(float(metrics.precision_at_k(relevant, K).mean()), 4),
        "map@10": round(float(metrics.average_precision_at_k(relevant, K).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/covid-chestxray"))
    parser.add_argument("--queries", type=int, default=120, help="Lung-box X-rays whose Grad-CAM is measured")
    parser.add_argument("--limit", type=int, default=0, help="Embed only this many X-rays (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(2)
    spec = ManifestSpec(
        path_column="filename",
        label_column="finding",
        patient_column="patientid",
        include=(("modality", "X-ray"),),
        ignore_labels=("todo",),
    )
    dataset = load_dataset(args.data / "images", args.data / "metadata.csv", spec)
    rng = np.random.default_rng(args.seed)
    lungs = lung_union(args.data)
    all_names = [Path(uri.split("://")[-1]).name for uri in dataset.uris]
    boxed = [i for i, n in enumerate(all_names) if n in lungs]
    picked = rng.choice(boxed, min(args.queries, len(boxed)), replace=False)
    chosen = np.arange(len(dataset))
    if args.limit and args.limit < len(dataset):  # the queries, then other X-rays drawn at random
        others = np.setdiff1d(chosen, picked)
        fill = rng.choice(others, max(0, args.limit - len(picked)), replace=False)
        chosen = np.sort(np.concatenate([picked, fill]))
    encoder = create_encoder("efficientnet_lite0")
    assert isinstance(encoder, Encoder)
    names = [Path(dataset.uris[i].split("://")[-1]).name for i in chosen]
    labels = [str(dataset.labels[i]) for i in chosen]
    patients = [str((dataset.patients or [])[i]) if dataset.patients else str(i) for i in chosen]
    queries = [row for row, i in enumerate(chosen) if i in set(picked.tolist())]
    query_set = set(queries)
    vectors = {v: np.zeros((len(chosen), 1280), np.float32) for v in VARIANTS}
    features: dict[str, dict[int, Pixels]] = {v: {} for v in VARIANTS}
    regions: dict[str, dict[int, dict[str, npt.NDArray[np.bool_]]]] = {v: {} for v in VARIANTS}
    text_share = []
    for row, index in enumerate(chosen):
        pixels = dataset.image(int(index))
        made = variants(pixels)
        text_share.append(float(made["original"][2].mean()))
        maps = spatial_features(encoder, [made[v][0] for v in VARIANTS])
        for v, fmap in zip(VARIANTS, maps, strict=True):
            pooled = fmap.mean(axis=(0, 1))
            vectors[v][row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
            if row in query_set:
                image, box, text = made[v]
                (w, h), (a, b, c, d) = lungs[names[row]]
                sx, sy = pixels.shape[1] / w, pixels.shape[0] / h
                lung = np.zeros(image.shape[:2], bool)
                lx0, ly0 = max(0, int(a * sx) - box.x0), max(0, int(b * sy) - box.y0)
                lung[ly0 : max(0, int(d * sy) - box.y0), lx0 : max(0, int(c * sx) - box.x0)] = True
                features[v][row] = fmap
                regions[v][row] = {"text": text, "border": seen_border(encoder, image.shape), "lungs": lung}
        if row % 50 == 0:
            print(f"{row}/{len(chosen)} embedded, {time.perf_counter() - started:.0f} s", flush=True)
    label_array = np.array(labels)
    patient_ids = sorted(set(patients))
    fold_of_patient = {p: f % FOLDS for f, p in enumerate(rng.permutation(patient_ids).tolist())}
    fold_of = np.array([fold_of_patient[p] for p in patients], np.int64)
    results: dict[str, Any] = {}
    for v in VARIANTS:
        heads = cross_fit_heads(vectors[v], labels, patients, fold_of)
        mass: dict[str, list[float]] = {"text": [], "border": [], "lungs": []}
        area: dict[str, list[float]] = {"text": [], "border": [], "lungs": []}
        peak: dict[str, list[bool]] = {"text": [], "border": [], "lungs": []}
        correct = []
        text_in_view: list[int] = []
        for position, row in enumerate(queries):
            head = heads[fold_of[row]]
            fmap = features[v][row]
            probabilities = head.predict_proba(vectors[v][row])[0]
            top = int(np.argmax(probabilities))
            correct.append(head.labels[top] == labels[row])
            cam = grad_cam_of_features(fmap, head.weight[top], float(head.bias[top]))
            shape = regions[v][row]["lungs"].shape
            heat = spread(cam, encoder, shape)
            seen = seen_mask(encoder, shape)
            total = float(heat.sum())
            where = np.unravel_index(int(np.argmax(heat)), heat.shape)
            if (regions[v][row]["text"] & seen).any():
                text_in_view.append(position)
            for name, region in regions[v][row].items():
                mass[name].append(float(heat[region].sum()) / total if total > 0 else 0.0)
                area[name].append(float((region & seen).sum()) / float(seen.sum()))
                peak[name].append(bool(total > 0 and region[where]))
        results[v] = {
            "gradcam_mass_share": {n: round(float(np.mean(x)), 4) for n, x in mass.items()},
            "area_share_of_seen_pixels": {n: round(float(np.mean(x)), 4) for n, x in area.items()},
            "share_of_queries_with_peak_in": {n: round(float(np.mean(x)), 4) for n, x in peak.items()},
            "queries_with_text_in_view": len(text_in_view),
            "their_text_mass_share": round(float(np.mean([mass["text"][p] for p in text_in_view])), 4)
            if text_in_view
            else None,
            "their_text_area_share": round(float(np.mean([area["text"][p] for p in text_in_view])), 4)
            if text_in_view
            else None,
            "their_share_with_peak_on_text": round(float(np.mean([peak["text"][p] for p in text_in_view])), 4)
            if text_in_view
            else None,
            "head_top_class_accuracy_on_queries": round(float(np.mean(correct)), 4),
            "retrieval_all_xrays": retrieval(vectors[v], label_array, patients, list(range(len(chosen)))),
            "retrieval_lung_box_queries": retrieval(vectors[v], label_array, patients, queries),
        }
        print(v, json.dumps(results[v]), flush=True)
    report = {
        "dataset": "covid-chestxray X-rays with a finding (todo left out); lung boxes from upstream annotations",
        "images": len(chosen),
        "images_with_text_detected": int(np.sum(np.array(text_share) > 0)),
        "mean_text_area_share": round(float(np.mean(text_share)), 5),
        "gradcam_queries": len(queries),
        "query_patients": len({patients[i] for i in queries}),
        "encoder": encoder.name,
        "head": f"indexer.prediction.heads.train_head (defaults), cross-fitted on {FOLDS} folds of patients",
        "gradcam_of": "the head's top class, at the last conv map (7x7), over the pixels the model sees",
        "border_band": "outer 6% of each side of the centre crop the model sees (timm drops the outer ~6% itself)",
        "k": K,
        "seed": args.seed,
        "results": results,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
