"""Unlabeled images for `medcbir adapt`: the catalog, a folder, or an npz split; and the patient-held-out split."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from imaging import load_image
from indexer.catalog import Case, Catalog, Image
from indexer.evaluation.augment import AdaptError
from indexer.evaluation.datasets import IMAGE_SUFFIXES, LabeledDataset, ManifestSpec, load_npz_dataset
from indexer.evaluation.protocol import group_keys, grouped_split, make_split
from indexer.storage.stored import load_stored_image, stored_exists


def _unlabeled(
    name: str, keys: list[str], uris: list[str], read: Callable[[int], npt.NDArray[np.float32]], **extra: Any
) -> LabeledDataset:
    return LabeledDataset(
        name=name,
        labels=np.zeros(len(keys), np.int64),
        class_names=["unlabeled"],
        content_keys=keys,
        uris=uris,
        _reader=read,
        **extra,
    )


def load_image_folder(root: Path) -> LabeledDataset:
    """Every image file below `root` (hidden folders skipped), grouped by content hash, no labels."""
    if not root.is_dir():
        raise AdaptError(
            f"{root} is not a folder; pass a folder of images, a MedMNIST .npz or --from-catalog"
        )
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES - {""}
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise AdaptError(f"no image files (.png, .jpg, .dcm, ...) under {root}")
    keys = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]

    def read(index: int) -> npt.NDArray[np.float32]:
        return load_image(paths[index].read_bytes()).pixels

    return _unlabeled(root.name, keys, [str(p.relative_to(root)) for p in paths], read)


def load_catalog_images(database_url: str) -> LabeledDataset:
    """Every catalog image whose source is reachable, grouped by (pseudonymous) patient; labels unused."""
    catalog = Catalog(database_url)
    try:
        with catalog.session() as session:
            rows = session.execute(
                select(
                    Image.id,
                    Image.case_id,
                    Image.source_uri,
                    Image.frame_index,
                    Image.sha256,
                    Case.patient_ref,
                )
                .join(Case, Case.id == Image.case_id)
                .order_by(Image.id)
            ).all()
    finally:
        catalog.dispose()
    kept = [row for row in rows if stored_exists(str(row[2]))]
    if not kept:
        raise AdaptError(
            f"the catalog has no image with a reachable source ({len(rows)} images); index images first "
            "(medcbir index FOLDER) or pass --data FOLDER"
        )
    uris = [str(row[2]) for row in kept]
    frames = [int(row[3] or 0) for row in kept]

    def read(index: int) -> npt.NDArray[np.float32]:
        return load_stored_image(uris[index], frames[index]).pixels

    return _unlabeled(
        "catalog",
        [f"{row[4]}:{row[3] or 0}" for row in kept],
        [f"image:{row[0]}" for row in kept],
        read,
        patients=[f"ref:{row[5]}" if row[5] else f"case:{row[1]}" for row in kept],
        provenance={"catalog_images": len(rows), "left_out_source_missing": len(rows) - len(kept)},
    )


def load_manifest_part(
    data: Path,
    manifest: Path,
    spec: ManifestSpec,
    *,
    part: str = "train",
    dedupe: bool = False,
    split_seed: int = 0,
) -> LabeledDataset:
    """One part of a folder + manifest dataset exactly as `medcbir eval` with the same options splits it.

    `train` is eval's database, `test` its queries (`all`: every image). The manifest's filters
    (--include, --ignore-label) choose the images as in eval; the labels themselves are dropped here.
    """
    from indexer.evaluation.runner import EvaluationConfig, prepare_dataset

    config = EvaluationConfig(data=data, manifest=manifest, spec=spec, dedupe=dedupe, seed=split_seed)
    dataset = prepare_dataset(config)
    split = make_split(
        dataset, seed=split_seed, test_fraction=config.test_fraction, val_fraction=config.val_fraction
    )
    parts = {"train": split.train, "val": split.val, "test": split.test}
    if part != "all" and part not in parts:
        raise AdaptError(f"--split {part!r}: use train (eval's database), val, test or all")
    chosen = np.arange(len(dataset)) if part == "all" else parts[part]
    if len(chosen) == 0:
        raise AdaptError(f"{manifest} gives no {part!r} images ({split.how}); use another --split")
    kept = dataset.subset(chosen)
    return _unlabeled(
        dataset.name,  # the manifest dataset's name (e.g. covid-chestxray, not its images/ folder)
        kept.content_keys,
        kept.uris,
        kept.image,
        patients=kept.patients,
        provenance={
            "manifest": manifest.name,
            "part": part,
            "eval_split": split.how,
            "split_seed": split_seed,
            "eval_images": len(dataset),
            "eval_database": len(split.train),
            "eval_queries": len(split.test),
        },
    )


def load_unlabeled(
    data: Path | None,
    *,
    catalog_url: str | None = None,
    split: str = "train",
    manifest: Path | None = None,
    spec: ManifestSpec | None = None,
    dedupe: bool = False,
    split_seed: int = 0,
) -> LabeledDataset:
    """The images to adapt on: the catalog, a folder, one split of a MedMNIST .npz, or one part of a
    folder + manifest as eval splits it."""
    if catalog_url is not None:
        return load_catalog_images(catalog_url)
    if data is None:
        raise AdaptError("pass --data (a folder or .npz) or use the catalog (--from-catalog)")
    if manifest is not None:
        if data.suffix.lower() == ".npz":
            raise AdaptError("--manifest goes with a folder of images, not with an .npz (it has its splits)")
        return load_manifest_part(
            data, manifest, spec or ManifestSpec(), part=split, dedupe=dedupe, split_seed=split_seed
        )
    if data.suffix.lower() == ".npz":
        dataset = load_npz_dataset(data)
        splits = np.array(dataset.splits or [])
        chosen = np.flatnonzero(splits == split) if split != "all" else np.arange(len(dataset))
        if len(chosen) == 0:
            raise AdaptError(f"{data} has no {split!r} images; --split takes train, val, test or all")
        return dataset.subset(chosen)
    return load_image_folder(data)


def heldout_split(
    dataset: LabeledDataset, *, seed: int, fraction: float, max_heldout: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], str]:
    """(train, held-out) positions with every patient (else every content) wholly on one side."""
    train, _, heldout = grouped_split(
        group_keys(dataset), seed=seed, test_fraction=fraction, val_fraction=0.0
    )
    if len(train) < 2 or len(heldout) < 2:
        raise AdaptError(
            f"{len(dataset)} images give {len(train)} training and {len(heldout)} held-out images; "
            "adaptation needs images of at least 2 patients on each side (add images or raise --heldout-fraction)"
        )
    if len(heldout) > max_heldout:
        # a subsample of held-out images: still no patient of them is trained on
        heldout = np.sort(np.random.default_rng(seed).choice(heldout, size=max_heldout, replace=False))
    unit = "patient" if dataset.patients is not None else "content-hash"
    return (
        train,
        heldout,
        f"{unit}-grouped, seed {seed}, held out {fraction:.0%} (at most {max_heldout} images)",
    )
