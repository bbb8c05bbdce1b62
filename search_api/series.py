"""Series queries: every frame of the sent files (or zip members) embedded as slices, searched in two stages."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import numpy.typing as npt

from imaging import (
    ImagingSettings,
    UnsupportedFormatError,
    count_frames,
    iter_frames,
    pixel_digest,
    render_png,
    sniff_format,
)
from indexer.catalog.content_match import match_content
from indexer.errors import NotFoundError
from indexer.governance.pseudonym import patient_reference
from indexer.storage.archives import ArchiveSettings, UnsafeSourceError, iter_zip_members
from indexer.storage.dicomweb import DicomwebPacs
from indexer.storage.sources import safe_member_name
from indexer.vectors.series import SeriesHit, SeriesIndex
from search_api.exclusion import QueryPatient, excluded_ids, sent_patient_ref
from search_api.predictions import calibrated_vote, flag_uncertain, vote
from search_api.schemas import (
    Exclusion,
    ExclusionSource,
    Prediction,
    SearchFilters,
    SeriesHitOut,
    SeriesPair,
    SeriesSearchResponse,
    SlicePreview,
)
from search_api.searcher import Searcher

log = logging.getLogger(__name__)

MAX_SLICES = 500
MAX_PAIRS = 20
SHORTLIST = 200
_BATCH = 32
_PREVIEW_SIDE = 256
# Zip members that are not slices and are skipped rather than refused (macOS and Windows debris, DICOMDIR).
_SKIPPED = ("__MACOSX/", ".DS_Store", "Thumbs.db", "DICOMDIR")


class InvalidSeriesError(ValueError):
    """A series query that cannot be searched: too many slices, mixed modalities, or no frames."""


class SeriesTooLargeError(InvalidSeriesError):
    """A series query over a size budget: a zip bomb, a member or a whole zip that inflates too far."""


@dataclass
class _Query:
    """The sent slices: their vectors (embedded a batch at a time), small previews, and where each came from."""

    vectors: list[npt.NDArray[np.float32]] = field(default_factory=list)
    previews: list[npt.NDArray[np.float32]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    modalities: set[str] = field(default_factory=set)
    # Kept only when exclude_patient asks for them: the headers' PatientIDs, each file's sha256 and each
    # slice's pixel digest (to recognise a stored copy of the query, as POST /search does).
    patient_ids: set[str] = field(default_factory=set)
    file_sha256: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)


def expand_zips(
    files: Sequence[tuple[str, bytes]], max_members: int, max_total_bytes: int
) -> Iterator[tuple[str, bytes]]:
    """The sent files, each zip replaced by its DICOM members (in name order), read under the archive
    inflation budgets (MEDCBIR_ARCHIVE_*), at most `max_members` members and `max_total_bytes` inflated."""
    for name, data in files:
        if not data.startswith(b"PK\x03\x04") or not zipfile.is_zipfile(io.BytesIO(data)):
            yield name, data
            continue
        yield from _zip_members(name, data, max_members, max_total_bytes)


def _zip_members(
    name: str, data: bytes, max_members: int, max_total_bytes: int
) -> Iterator[tuple[str, bytes]]:
    with tempfile.TemporaryDirectory(prefix="medcbir-series-") as folder:
        path = Path(folder) / "series.zip"
        path.write_bytes(data)
        members = list(iter_zip_members(path, ArchiveSettings().limits(), safe_member_name))
        members = [m for m in members if not _skipped(m[1])]
        if len(members) > max_members:
            raise InvalidSeriesError(
                f"zip {name!r} holds {len(members)} files: more than {max_members} slices in one series "
                "query; send a subset (every n-th slice)"
            )
        total = 0
        for _, member, reader, _ in sorted(members, key=lambda m: m[1]):
            try:
                content = reader()
            except UnsafeSourceError as exc:
                raise SeriesTooLargeError(f"zip {name!r}: {exc}") from None
            except OSError as exc:
                raise InvalidSeriesError(f"zip {name!r}: {exc}; send an intact zip") from None
            total += len(content)
            if total > max_total_bytes:
                raise SeriesTooLargeError(
                    f"zip {name!r} inflates past {max_total_bytes:,} bytes (the upload limit, "
                    "MEDCBIR_API_MAX_UPLOAD_BYTES): send fewer slices"
                )
            try:
                is_dicom = sniff_format(content) == "dicom"
            except UnsupportedFormatError:
                is_dicom = False
            if not is_dicom:
                raise UnsupportedFormatError(
                    f"zip {name!r} member {member!r} is not a DICOM file; a zipped series holds DICOM "
                    "slices only (send PNG or JPEG slices as separate files)"
                )
            yield f"{name}/{member}", content


def _skipped(member: str) -> bool:
    path = PurePosixPath(member)
    return member.startswith(_SKIPPED[0]) or path.name in _SKIPPED[1:] or path.name.startswith("._")


def fetch_pacs_series(
    client: DicomwebPacs, study: str, series: str, max_slices: int, max_total_bytes: int
) -> list[tuple[str, bytes]]:
    """Every instance of one PACS series, retrieved with WADO-RS: refused past `max_slices` instances
    (from the QIDO-RS listing, before any retrieval) or past `max_total_bytes` retrieved."""
    instances = [i for i in client.instances_of_study(study) if i.series == series]
    if not instances:
        raise NotFoundError(
            f"the PACS lists no instance of series {series} in study {study}; check both UIDs"
        )
    if len(instances) > max_slices:
        raise InvalidSeriesError(
            f"the PACS series holds {len(instances)} instances: more than {max_slices} slices in one series "
            "query; send a subset (every n-th slice) as files"
        )
    out, total = [], 0
    for instance in instances:
        data = client.retrieve(instance)
        total += len(data)
        if total > max_total_bytes:
            raise SeriesTooLargeError(
                f"the PACS series passes {max_total_bytes:,} bytes (the upload limit, "
                "MEDCBIR_API_MAX_UPLOAD_BYTES): send a subset of its slices as files"
            )
        out.append((f"pacs:{instance.sop}", data))
    return out


@dataclass(frozen=True)
class _Grouping:
    """The stored series of one index generation: their index, member image ids, cases and keys."""

    generation: int
    index: SeriesIndex
    members: list[list[int]]
    cases: list[int]
    keys: list[str]
    slice_ids: npt.NDArray[np.int64]  # every member id, series after series (the index's slice order)


class SeriesSearcher:
    """Stored images grouped into series (by SeriesInstanceUID, else by source file: the frames of one
    multi-frame object), slices ordered by frame; the grouping is rebuilt when the index changes."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self._lock = threading.Lock()
        self._built: _Grouping | None = None

    def search(
        self,
        files: Sequence[bytes | tuple[str, bytes]],
        k: int = 10,
        max_slices: int | None = None,
        *,
        pairs: int = 3,
        max_total_bytes: int = 256 * 1024 * 1024,
        filters: SearchFilters | None = None,
        patient_ref: str | None = None,
    ) -> SeriesSearchResponse:
        """The k stored series most like the sent slices (several files, one multi-frame DICOM, or a zip
        of DICOM files), each with its `pairs` best slice pairs, and the vote of their diagnoses; at most
        `max_slices` (default MAX_SLICES) slices, all of one modality.

        `filters` (when given) wins over `k`, as in POST /search: a stored series can be a hit only when
        every one of its slices passes the modality / body part / label filters and none belongs to the
        query's patient (with exclude_patient: `patient_ref`, the slices' DICOM PatientIDs, and stored
        copies of the first, middle and last slice); min_similarity drops hits scoring under it.
        """
        start = time.perf_counter()
        filters = filters or SearchFilters(k=k)
        max_slices = max_slices or MAX_SLICES
        named = [f if isinstance(f, tuple) else (f"file {i + 1}", f) for i, f in enumerate(files)]
        query = self._embed(
            expand_zips(named, max_slices, max_total_bytes), max_slices, identify=filters.exclude_patient
        )
        vectors = np.concatenate(query.vectors)
        grouping = self._index()
        index = grouping.index
        allowed, exclusion = self._allowed(filters, query, patient_ref, grouping)
        found = index.search(
            vectors,
            k=filters.k,
            shortlist=SHORTLIST,
            pairs=max(1, min(pairs, MAX_PAIRS)),
            allowed_ids=allowed,
        )
        # The OOD check judges the best series the filters allow, before min_similarity (as POST /search).
        top = found[0].score if found else None
        if filters.min_similarity is not None:
            found = [hit for hit in found if hit.score >= filters.min_similarity]
        hits = self._hits(found, grouping)
        used = sorted({p.query_slice for h in hits for p in h.pairs})
        return SeriesSearchResponse(
            query_slices=len(vectors),
            series_indexed=len(index),
            hits=hits,
            took_ms=(time.perf_counter() - start) * 1000.0,
            modality=next(iter(query.modalities), None),
            prediction=self._prediction(hits, top),
            filters=filters,
            candidates=None if allowed is None else len(allowed),
            exclusion=exclusion,
            query_previews=[
                SlicePreview(
                    query_slice=i,
                    name=query.names[i],
                    png_base64=base64.b64encode(render_png(query.previews[i], _PREVIEW_SIDE)).decode(),
                )
                for i in used
            ],
        )

    def _allowed(
        self, filters: SearchFilters, query: _Query, patient_ref: str | None, grouping: _Grouping
    ) -> tuple[npt.NDArray[np.int64] | None, Exclusion]:
        """The series that may be hits (None: every one), and the answer's account of exclude_patient."""
        archive = self.searcher.archive
        patient = self._patient(query, patient_ref) if filters.exclude_patient else QueryPatient()
        dropped, exclusion = excluded_ids(archive, patient, filters.exclude_patient)
        if not (filters.modality or filters.body_part or filters.label or dropped is not None):
            return None, exclusion
        images = archive.catalog.filtered_image_ids(
            encoder=archive.encoder.name,
            modality=filters.modality,
            body_part=filters.body_part,
            label=filters.label,
        )
        if dropped is not None:
            images = images[~np.isin(images, dropped)]
        passed = np.isin(grouping.slice_ids, images)
        whole = np.logical_and.reduceat(passed, grouping.index.offsets[:-1])  # every slice passed
        return np.flatnonzero(whole).astype(np.int64), exclusion

    def _patient(self, query: _Query, sent: str | None) -> QueryPatient:
        """The series query's patient: the sent reference, its slices' DICOM PatientIDs, and the patients of
        stored images with the same file or pixels as its first, middle or last slice."""
        archive = self.searcher.archive
        refs: list[str] = []
        sources: list[ExclusionSource] = []
        explicit = sent_patient_ref(archive.pseudonym_key, sent)
        if explicit:
            refs.append(explicit)
            sources.append("patient_ref")
        from_headers = [patient_reference(archive.pseudonym_key, p) for p in sorted(query.patient_ids)]
        if any(from_headers):
            refs.extend(r for r in from_headers if r)
            sources.append("dicom_patient_id")
        cases: set[int] = set()
        count = len(query.digests)
        for i in sorted({0, count // 2, count - 1} if count else set()):
            match = match_content(archive.catalog, sha256=query.file_sha256[i], pixel_digest=query.digests[i])
            if match.found:
                refs.extend(match.patient_refs)
                cases.update(match.cases_without_patient)
                if "content_match" not in sources:
                    sources.append("content_match")
        notes = ("a stored copy of the query has no patient reference: only its case was left out",)
        return QueryPatient(
            patient_refs=tuple(dict.fromkeys(refs)),
            sources=tuple(sources),
            cases_without_patient=tuple(sorted(cases)),
            notes=notes if cases else (),
        )

    def _embed(self, files: Iterator[tuple[str, bytes]], max_slices: int, identify: bool = False) -> _Query:
        """Decode and embed every frame a batch at a time (at most _BATCH frames, and about one decode
        budget of pixels, held at once; only small previews are kept), refusing a query past
        `max_slices` (from the headers, before decoding) or one that mixes modalities. With `identify`,
        the patient ids and content digests that exclude_patient needs are kept too."""
        encoder, budget = self.searcher.archive.encoder, self.searcher.max_pixels
        held = 3 * (budget or ImagingSettings().pixel_limit)  # float RGB values of one full decode budget
        query, batch = _Query(), []
        for name, data in files:
            if len(query.names) + count_frames(data) > max_slices:
                raise InvalidSeriesError(
                    f"more than {max_slices} slices in one series query; send a subset (every n-th slice)"
                )
            sha256 = hashlib.sha256(data).hexdigest() if identify else ""
            for frame in iter_frames(data, max_pixels=budget):
                if identify:
                    if frame.metadata.patient_id:
                        query.patient_ids.add(frame.metadata.patient_id)
                    query.file_sha256.append(sha256)
                    query.digests.append(pixel_digest(frame.pixels))
                if frame.metadata.modality:
                    query.modalities.add(frame.metadata.modality)
                if len(query.modalities) > 1:
                    raise InvalidSeriesError(
                        f"the slices mix modalities ({', '.join(sorted(query.modalities))}); "
                        "send one series at a time"
                    )
                batch.append(frame.pixels)
                query.names.append(name[:256])
                query.previews.append(_small(frame.pixels))
                if len(batch) == _BATCH or sum(p.size for p in batch) >= held:
                    query.vectors.append(encoder.embed(batch))
                    batch = []
        if batch:
            query.vectors.append(encoder.embed(batch))
        if not query.vectors:
            raise InvalidSeriesError("no image frames in the sent files; send DICOM, PNG or JPEG slices")
        return query

    def _hits(self, found: list[SeriesHit], grouping: _Grouping) -> list[SeriesHitOut]:
        members = grouping.members
        firsts = [members[hit.series_id][0] for hit in found]
        rows = self.searcher.archive.catalog.images_by_ids(firsts)  # the diagnoses as they are now
        out = []
        for rank, (hit, first) in enumerate(zip(found, firsts, strict=True), start=1):
            images = members[hit.series_id]
            row = rows.get(first)
            out.append(
                SeriesHitOut(
                    rank=rank,
                    series_key=grouping.keys[hit.series_id],
                    case_id=grouping.cases[hit.series_id],
                    slices=len(images),
                    score=hit.score,
                    pairs=[
                        SeriesPair(query_slice=q, image_id=images[s], similarity=v) for q, s, v in hit.pairs
                    ],
                    diagnosis=row.case.labels if row is not None else [],
                )
            )
        return out

    def _prediction(self, hits: list[SeriesHitOut], top: float | None) -> Prediction:
        """The /search vote and uncertainty rules over the hit series: each votes its case's diagnoses
        with its MaxSim score; `top`, the best score among the series the filters allow, is the query's
        top similarity for the OOD check."""
        predictors = self.searcher.predictors()
        neighbours = [(h.score, h.diagnosis) for h in hits]
        knn = calibrated_vote(neighbours, predictors.vote) if predictors.vote else vote(neighbours)
        ood, floor, source = predictors.ood_similarity, predictors.min_confidence, predictors.ood_source
        return flag_uncertain(knn, top, ood, floor, source)

    def _index(self) -> _Grouping:
        archive = self.searcher.archive
        generation = archive.index.generation
        with self._lock:
            if self._built is not None and self._built.generation == generation:
                return self._built
            ids: list[int] = []
            vectors: list[npt.NDArray[np.float32]] = []
            for chunk_ids, chunk in archive.catalog.embeddings(archive.encoder.name):
                ids.extend(int(i) for i in chunk_ids)
                vectors.append(np.asarray(chunk, np.float32))
            if not ids:
                raise InvalidSeriesError("the archive holds no images yet; index some first")
            by_id = dict(zip(ids, np.concatenate(vectors), strict=True))
            rows = archive.catalog.images_by_ids(ids)
            groups: dict[str, list[tuple[int, int]]] = {}
            case_of: dict[str, int] = {}
            for image_id, row in rows.items():
                key = f"series:{row.series_instance_uid}" if row.series_instance_uid else f"file:{row.sha256}"
                groups.setdefault(key, []).append((row.frame_index, image_id))
                case_of[key] = row.case_id
            keys = sorted(groups)
            members = [[image_id for _, image_id in sorted(groups[key])] for key in keys]
            index = SeriesIndex(list(range(len(keys))), [np.stack([by_id[i] for i in m]) for m in members])
            cases = [case_of[key] for key in keys]
            flat = np.fromiter((i for m in members for i in m), dtype=np.int64, count=sum(map(len, members)))
            self._built = _Grouping(generation, index, members, cases, keys, flat)
            log.info("series index: %d series from %d images", len(keys), len(ids))
            return self._built


def _small(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A slice cut down (by striding) to about _PREVIEW_SIDE pixels on its longest side, for its preview."""
    step = max(1, -(-max(pixels.shape[:2]) // _PREVIEW_SIDE))
    return np.ascontiguousarray(pixels[::step, ::step])
