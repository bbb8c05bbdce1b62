"""Labeled evaluation datasets: a folder per class, a folder plus a CSV manifest, or a MedMNIST `.npz`."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select

from imaging import load_image
from indexer.catalog import Case, Catalog, Diagnosis, Image
from indexer.errors import IndexerError
from indexer.storage.stored import load_stored_image, stored_exists

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".dcm", ".dicom", ".dic", ".ima", ""})
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "database": "train",
    "db": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "calibration": "val",
    "test": "test",
    "testing": "test",
    "query": "test",
    "queries": "test",
}


class DatasetError(IndexerError):
    """A labeled dataset cannot be read; the message says what to fix."""


def normalise_split(value: str) -> str:
    """Map a split cell (`Training`, `test`, `validation`, ...) to one of `train`, `val`, `test`."""
    key = value.strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DatasetError(
            f"unknown split value {value!r}; use train/val/test (or training/testing/validation)"
        )
    return _SPLIT_ALIASES[key]


@dataclass
class LabeledDataset:
    """Images with one class label each, and optionally a patient id and a split per image.

    Pixels are produced on demand by `image(i)` (float32 H x W x 3 in [0, 1], exactly what the
    product's encoder is given), so that large datasets are never held decoded in memory.
    `content_keys` identify byte-identical images (a content hash, or a manifest's md5 column).
    """

    name: str
    labels: npt.NDArray[np.int64]
    class_names: list[str]
    content_keys: list[str]
    uris: list[str]
    patients: list[str] | None = None
    splits: list[str] | None = None
    _reader: Callable[[int], npt.NDArray[np.float32]] | None = field(default=None, repr=False)
    # How the images were chosen (e.g. what a catalog dataset left out, and why); goes into model cards.
    provenance: dict[str, int | str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> npt.NDArray[np.float32]:
        return self.image(index)

    def image(self, index: int) -> npt.NDArray[np.float32]:
        """Decoded pixels of image `index`."""
        if self._reader is None:
            raise DatasetError(f"dataset {self.name} has no pixel reader")
        return self._reader(index)

    def iter_images(self, indices: Sequence[int]) -> Iterator[npt.NDArray[np.float32]]:
        """Decoded pixels of the given images, in order."""
        for index in indices:
            yield self.image(int(index))

    def subset(self, indices: Sequence[int] | npt.NDArray[np.int64]) -> LabeledDataset:
        """A view on some of the images (labels and class names kept as they are)."""
        chosen = [int(i) for i in indices]
        reader = self._reader

        def read(position: int) -> npt.NDArray[np.float32]:
            if reader is None:
                raise DatasetError(f"dataset {self.name} has no pixel reader")
            return reader(chosen[position])

        return LabeledDataset(
            name=self.name,
            labels=self.labels[chosen] if chosen else np.zeros(0, np.int64),
            class_names=list(self.class_names),
            content_keys=[self.content_keys[i] for i in chosen],
            uris=[self.uris[i] for i in chosen],
            patients=[self.patients[i] for i in chosen] if self.patients is not None else None,
            splits=[self.splits[i] for i in chosen] if self.splits is not None else None,
            _reader=read,
            provenance=dict(self.provenance),
        )

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def identity(self) -> str:
        """A short hash of what the dataset holds (content keys, labels), for cache file names."""
        digest = hashlib.sha256()
        for key, label in zip(self.content_keys, self.labels.tolist(), strict=True):
            digest.update(f"{key}:{label};".encode())
        return digest.hexdigest()[:16]


def _file_reader(paths: Sequence[Path]) -> Callable[[int], npt.NDArray[np.float32]]:
    def read(index: int) -> npt.NDArray[np.float32]:
        # The same decode as ingest: bytes in, display-ready float32 RGB out.
        return load_image(paths[index].read_bytes()).pixels

    return read


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _encode_labels(names: Sequence[str]) -> tuple[npt.NDArray[np.int64], list[str]]:
    classes = sorted(set(names))
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup[n] for n in names], dtype=np.int64), classes


def load_folder_dataset(root: Path) -> LabeledDataset:
    """A folder whose sub-folders are the classes; images anywhere below each class folder."""
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: pass a folder with one sub-folder per class")
    paths: list[Path] = []
    names: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
            if path.is_file() and not hidden and path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                names.append(class_dir.name)
    if not paths:
        raise DatasetError(f"no images found under class folders of {root}")
    labels, classes = _encode_labels(names)
    return LabeledDataset(
        name=root.name,
        labels=labels,
        class_names=classes,
        content_keys=[_sha256(p) for p in paths],
        uris=[p.relative_to(root).as_posix() for p in paths],
        _reader=_file_reader(paths),
    )


@dataclass(frozen=True)
class ManifestSpec:
    """Which manifest columns hold what; `include` keeps only rows whose column equals a value."""

    path_column: str = "path"
    label_column: str = "label"
    patient_column: str | None = None
    split_column: str | None = None
    hash_column: str | None = None
    include: tuple[tuple[str, str], ...] = ()
    ignore_labels: tuple[str, ...] = ()


def _resolve(root: Path, cell: str, by_name: dict[str, list[Path]]) -> Path | None:
    candidate = (root / cell).resolve()
    if candidate.is_file() and candidate.is_relative_to(root):
        return candidate
    matches = by_name.get(Path(cell).name, [])
    return matches[0] if len(matches) == 1 else None


def load_manifest_dataset(root: Path, manifest: Path, spec: ManifestSpec) -> LabeledDataset:
    """A folder of images plus a CSV naming each file's label (and optionally patient and split).

    Paths are relative to `root`, or bare file names found once below it. Rows whose file is
    missing, whose label is empty or ignored, or that fail an `include` filter are left out. A file
    named by several rows is kept once (the first row).
    """
    root = root.expanduser().resolve()
    if not manifest.is_file():
        raise DatasetError(f"manifest {manifest} does not exist")
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        needed = [spec.path_column, spec.label_column]
        needed += [c for c in (spec.patient_column, spec.split_column, spec.hash_column) if c]
        needed += [c for c, _ in spec.include]
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(
                f"manifest {manifest} has no column(s) {missing}; its columns are {header}; "
                "name them with --path-column/--label-column/--patient-column/--split-column"
            )
        rows = list(reader)
    by_name: dict[str, list[Path]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            by_name.setdefault(path.name, []).append(path)
    ignored = {label.casefold() for label in spec.ignore_labels}
    paths: list[Path] = []
    names: list[str] = []
    patients: list[str] = []
    splits: list[str] = []
    keys: list[str] = []
    seen: set[Path] = set()
    for row in rows:
        if any((row.get(column) or "").strip() != value for column, value in spec.include):
            continue
        label = (row.get(spec.label_column) or "").strip()
        if not label or label.casefold() in ignored:
            continue
        found = _resolve(root, (row.get(spec.path_column) or "").strip(), by_name)
        if found is None or found in seen:
            continue
        path = found
        seen.add(path)
        paths.append(path)
        names.append(label)
        if spec.patient_column:
            patient = (row.get(spec.patient_column) or "").strip()
            # An image without a patient id is its own patient: it can never leak another's.
            patients.append(patient or f"file:{path.name}")
        if spec.split_column:
            splits.append(normalise_split(row.get(spec.split_column) or ""))
        hashed = (row.get(spec.hash_column) or "").strip() if spec.hash_column else ""
        keys.append(hashed or _sha256(path))
    if not paths:
        raise DatasetError(f"no manifest row of {manifest} names an existing labeled file under {root}")
    labels, classes = _encode_labels(names)
    # The manifest's folder names a dataset better than a generic image folder ("images").
    name = root.name if manifest.resolve().parent == root else manifest.resolve().parent.name
    return LabeledDataset(
        name=name,
        labels=labels,
        class_names=classes,
        content_keys=keys,
        uris=[p.relative_to(root).as_posix() for p in paths],
        patients=patients if spec.patient_column else None,
        splits=splits if spec.split_column else None,
        _reader=_file_reader(paths),
    )


def npz_pixels(array: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """One MedMNIST array (H x W grey or H x W x 3 uint8) as float32 H x W x 3 in [0, 1]."""
    pixels = np.asarray(array, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DatasetError(f"npz image of shape {array.shape} is neither grey nor RGB")
    return np.ascontiguousarray(pixels)


def load_npz_dataset(path: Path, class_names: Sequence[str] | None = None) -> LabeledDataset:
    """A MedMNIST-format `.npz`: `{train,val,test}_images` and `{...}_labels` (first label column)."""
    path = path.expanduser()
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    with np.load(path) as data:
        present = [s for s in SPLITS if f"{s}_images" in data and f"{s}_labels" in data]
        if not present:
            raise DatasetError(
                f"{path} holds {sorted(data.keys())}; a MedMNIST npz needs train_images/train_labels, ..."
            )
        images = [np.asarray(data[f"{s}_images"]) for s in present]
        label_arrays = [np.asarray(data[f"{s}_labels"]).reshape(len(images[i]), -1)[:, 0] for i, s in
                        enumerate(present)]  # fmt: skip
    stacked = np.concatenate(images, axis=0)
    raw_labels = np.concatenate(label_arrays).astype(np.int64)
    splits = [s for s, arr in zip(present, images, strict=True) for _ in range(len(arr))]
    n_classes = int(raw_labels.max()) + 1 if len(raw_labels) else 0
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise DatasetError(f"{len(names)} class names given for {n_classes} classes")
    keys = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in stacked]

    def read(index: int) -> npt.NDArray[np.float32]:
        return npz_pixels(stacked[index])

    return LabeledDataset(
        name=path.stem,
        labels=raw_labels,
        class_names=names,
        content_keys=keys,
        uris=[f"{s}/{i}" for s, arr in zip(present, images, strict=True) for i in range(len(arr))],
        splits=splits,
        _reader=read,
    )


def load_catalog_dataset(database_url: str) -> LabeledDataset:
    """The catalog's images labeled with their case's diagnosis, grouped by (pseudonymous) patient.

    Only cases with exactly one diagnosis label are used: multi-label and unlabeled cases are left
    out, and so are images whose source file (or archive) is gone; `provenance` counts each. Pixels
    are re-decoded from the source, as at ingest. A case without a patient reference is its own
    patient. Images are named `image:<id>`, never by path.
    """
    catalog = Catalog(database_url)
    try:
        with catalog.session() as session:
            # per case: how many labels, and the label (the only one, when there is one)
            per_case = session.execute(
                select(Diagnosis.case_id, func.count(), func.min(Diagnosis.label)).group_by(Diagnosis.case_id)
            ).all()
            counts = {int(case_id): int(n) for case_id, n, _ in per_case}
            single = {int(case_id): str(label) for case_id, _, label in per_case}
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
    left_out = {"unlabeled": 0, "multi_label": 0, "source_missing": 0}
    ids: list[int] = []
    uris: list[str] = []
    frames: list[int] = []
    names: list[str] = []
    patients: list[str] = []
    keys: list[str] = []
    for image_id, case_id, uri, frame, sha256, patient_ref in rows:
        labels = counts.get(case_id, 0)
        if labels == 0:
            left_out["unlabeled"] += 1
        elif labels > 1:
            left_out["multi_label"] += 1
        elif not stored_exists(uri):
            left_out["source_missing"] += 1
        else:
            ids.append(int(image_id))
            uris.append(str(uri))
            frames.append(int(frame or 0))
            names.append(str(single[case_id]))
            patients.append(f"ref:{patient_ref}" if patient_ref else f"case:{case_id}")
            keys.append(f"{sha256}:{frame or 0}")
    if not ids:
        raise DatasetError(
            f"the catalog has no image of a single-label case with a reachable source ({len(rows)} images, "
            f"left out: {left_out}); index labeled cases (a manifest with a diagnosis column) first"
        )
    label_ids, classes = _encode_labels(names)

    def read(index: int) -> npt.NDArray[np.float32]:
        return load_stored_image(uris[index], frames[index]).pixels

    return LabeledDataset(
        name="catalog",
        labels=label_ids,
        class_names=classes,
        content_keys=keys,
        uris=[f"image:{i}" for i in ids],
        patients=patients,
        _reader=read,
        provenance={
            "catalog_images": len(rows),
            "used_images": len(ids),
            **{f"left_out_{reason}": count for reason, count in left_out.items()},
        },
    )


def load_dataset(
    data: Path, manifest: Path | None = None, spec: ManifestSpec | None = None
) -> LabeledDataset:
    """The dataset at `data`: an `.npz`, a folder plus `manifest`, or a folder per class."""
    if data.suffix.lower() == ".npz":
        return load_npz_dataset(data)
    if manifest is not None:
        return load_manifest_dataset(data, manifest, spec or ManifestSpec())
    return load_folder_dataset(data)


def drop_exact_duplicates(dataset: LabeledDataset) -> LabeledDataset:
    """Keep the first image of every content key, preferring train over val over test copies.

    Byte-identical files across the train/test split (as in the brain MRI set) would otherwise be
    found at similarity 1.0 and inflate every metric.
    """
    order = sorted(
        range(len(dataset)),
        key=lambda i: (SPLITS.index(dataset.splits[i]) if dataset.splits is not None else 0, i),
    )
    kept: dict[str, int] = {}
    for index in order:
        kept.setdefault(dataset.content_keys[index], index)
    return dataset.subset(sorted(kept.values()))


def drop_rare_classes(dataset: LabeledDataset, min_count: int) -> LabeledDataset:
    """Leave out classes with fewer than `min_count` images (class names are re-indexed)."""
    if min_count <= 1:
        return dataset
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    keep_classes = [c for c in range(len(dataset.class_names)) if counts[c] >= min_count]
    chosen = np.flatnonzero(np.isin(dataset.labels, keep_classes))
    if len(chosen) == 0:
        raise DatasetError(f"no class has at least {min_count} images")
    subset = dataset.subset(chosen)
    remap = {old: new for new, old in enumerate(keep_classes)}
    subset.labels = np.array([remap[int(v)] for v in subset.labels], dtype=np.int64)
    subset.class_names = [dataset.class_names[c] for c in keep_classes]
    return subset
