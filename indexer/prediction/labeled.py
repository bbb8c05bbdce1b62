"""The catalog's stored vectors with patient groups and labels, grouped splits and neighbour lists for fitting."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from indexer.catalog import Case, Catalog, Diagnosis, Image
from indexer.errors import HeadError
from indexer.prediction.vote import label_set_shares

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LabeledEmbeddings:
    """Every stored vector of an encoder with its image id, patient group and (single) class, -1 if none."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    groups: list[str]
    classes: npt.NDArray[np.int64]
    labels: list[str]
    multi_label_images: int
    left_out_classes: dict[str, int]
    label_sets: list[tuple[str, ...]] = field(default_factory=list)  # every image's labels, multi-label too

    @property
    def vote_columns(self) -> list[str]:
        """The vote's class list: the fitted classes, then every other label of a stored image, sorted."""
        others = {label for labels in self.label_sets for label in labels} - set(self.labels)
        return list(self.labels) + sorted(others)

    def neighbour_shares(self, positions: npt.NDArray[np.int64]) -> FloatArray:
        """(Q, k, C) vote shares over `vote_columns` of the neighbours at these positions (-1: none).

        A neighbour votes with all of its labels, as it does when the search API serves the vote.
        """
        columns = self.vote_columns
        per_image = label_set_shares([self.label_sets], columns)[0] if self.label_sets else None
        if per_image is None:
            per_image = np.zeros((len(self.ids), len(columns)), dtype=np.float64)
        shares = per_image[np.clip(positions, 0, None)]
        shares[positions < 0] = 0.0
        result: FloatArray = shares
        return result


def load_labeled_embeddings(catalog: Catalog, encoder: str, min_class_images: int = 2) -> LabeledEmbeddings:
    """The encoder's vectors with patient groups and classes; multi-label images and rare classes get -1.

    An image is labeled when its case carries exactly one diagnosis (several labels are ambiguous for a
    single-label head); classes with fewer than `min_class_images` such images are left out.
    """
    id_chunks, vector_chunks = [], []
    for ids, vectors in catalog.embeddings(encoder):
        id_chunks.append(ids)
        vector_chunks.append(vectors)
    if not id_chunks:
        raise HeadError(
            f"the catalog has no vectors from encoder {encoder}: index the archive with it first "
            "(medcbir index / medcbir reindex)"
        )
    ids = np.concatenate(id_chunks)
    order = np.argsort(ids)
    ids, vectors = ids[order], np.concatenate(vector_chunks)[order]
    case_of: dict[int, tuple[int, str | None]] = {}
    labels_of: dict[int, list[str]] = defaultdict(list)
    with catalog.session() as session:
        for image_id, case_id, patient_ref in session.execute(
            select(Image.id, Case.id, Case.patient_ref).join(Case, Case.id == Image.case_id)
        ):
            case_of[int(image_id)] = (int(case_id), patient_ref)
        for case_id, label in session.execute(
            select(Diagnosis.case_id, Diagnosis.label).order_by(Diagnosis.id)
        ):
            labels_of[int(case_id)].append(str(label))
    groups: list[str] = []
    single: list[str | None] = []
    label_sets: list[tuple[str, ...]] = []
    multi = 0
    for image_id in ids:
        case_id, patient_ref = case_of[int(image_id)]
        groups.append(f"patient:{patient_ref}" if patient_ref else f"case:{case_id}")
        case_labels = labels_of.get(case_id, [])
        label_sets.append(tuple(case_labels))
        if len(case_labels) > 1:
            multi += 1
        single.append(case_labels[0] if len(case_labels) == 1 else None)
    counts: dict[str, int] = defaultdict(int)
    for maybe in single:
        if maybe is not None:
            counts[maybe] += 1
    kept = sorted(name for name, n in counts.items() if n >= min_class_images)
    index = {name: i for i, name in enumerate(kept)}
    classes = np.array([index.get(s, -1) if s else -1 for s in single], dtype=np.int64)
    return LabeledEmbeddings(
        ids=ids,
        vectors=vectors.astype(np.float32),
        groups=groups,
        classes=classes,
        labels=kept,
        multi_label_images=multi,
        left_out_classes={label: n for label, n in sorted(counts.items()) if n < min_class_images},
        label_sets=label_sets,
    )


def grouped_split(
    groups: list[str], classes: npt.NDArray[np.int64], fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    """A mask of the images put in the held-out part: whole patient groups, about `fraction` of each class.

    Patients are stratified by their most frequent class; a class with a single patient stays in training.
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        by_group[group].append(i)
    strata: dict[int, list[str]] = defaultdict(list)
    for group in sorted(by_group):
        values = classes[by_group[group]]
        strata[int(np.bincount(values + 1).argmax()) - 1].append(group)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), dtype=bool)
    for _, members in sorted(strata.items()):
        if len(members) < 2:
            continue
        picked = rng.permutation(len(members))[: max(1, round(fraction * len(members)))]
        for j in picked:
            held[by_group[members[j]]] = True
    return held


def top_neighbours(
    data: LabeledEmbeddings, queries: npt.NDArray[np.int64], k: int, chunk: int = 512
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """(Q, k) positions and similarities of each query's nearest stored images of other patients."""
    group_codes = np.unique(np.asarray(data.groups), return_inverse=True)[1]
    k = min(k, len(data.ids))
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    sims = np.full((len(queries), k), np.nan, dtype=np.float64)
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        scores = (data.vectors[part] @ data.vectors.T).astype(np.float64)
        scores[group_codes[part][:, None] == group_codes[None, :]] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :k]
        values = np.take_along_axis(scores, top, axis=1)
        valid = np.isfinite(values)
        positions[start : start + chunk] = np.where(valid, top, -1)
        sims[start : start + chunk] = np.where(valid, values, np.nan)
    return positions, sims
