"""The row writer both engines use: thumbnails, then catalog rows (cases, images) for embedded frames."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from imaging import DecodedImage
from indexer.archive import Archive
from indexer.catalog import Image
from indexer.governance.pseudonym import patient_reference
from indexer.ingest.manifest import CaseInfo, Manifest
from indexer.storage.sources import SourceItem


@dataclass
class DecodedFrame:
    """One decoded frame of a source file, ready to embed and write: the item, its hash, pixels, thumbnail."""

    item: SourceItem
    sha256: str
    image: DecodedImage
    thumbnail: bytes
    digest: str


def case_key_for(decoded: DecodedFrame, info: CaseInfo | None) -> str:
    """Manifest case id, else one case per manifest row (file), else the DICOM study, else the file."""
    if info is not None and info.case_key:
        return info.case_key
    if info is None and decoded.image.metadata.study_instance_uid:
        return f"study:{decoded.image.metadata.study_instance_uid}"
    return f"file:{decoded.sha256[:24]}"


def _thumbnail_name(decoded: DecodedFrame) -> str:
    """Thumbnail path under the data folder, from the content hash and frame (never from DICOM text)."""
    return f"{decoded.sha256[:2]}/{decoded.sha256}-f{decoded.image.metadata.frame_index}.png"


def write_rows(
    archive: Archive, manifest: Manifest | None, fresh: list[DecodedFrame], vectors: np.ndarray
) -> list[int]:
    """Thumbnails (content-addressed), then one catalog row per frame with its case; returns the row ids."""
    thumb_dir = archive.settings.thumbnail_dir
    for d in fresh:
        path = thumb_dir / _thumbnail_name(d)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(d.thumbnail)
            os.replace(tmp, path)
    with archive.catalog.session() as session:
        rows: list[Image] = []
        for d, vector in zip(fresh, vectors, strict=True):
            info = manifest.lookup(d.item.relative) if manifest is not None else None
            meta = d.image.metadata
            case = archive.catalog.get_or_create_case(
                session,
                case_key_for(d, info),
                patient_ref=patient_reference(
                    archive.pseudonym_key, (info.patient_id if info else None) or meta.patient_id
                ),
                study_instance_uid=meta.study_instance_uid,
                report=info.report if info else None,
                labels=info.labels if info else [],
            )
            row = Image(
                case=case,
                source_uri=d.item.uri,
                sha256=d.sha256,
                pixel_digest=d.digest,
                format=meta.format,
                sop_instance_uid=meta.sop_instance_uid,
                study_instance_uid=meta.study_instance_uid,
                series_instance_uid=meta.series_instance_uid,
                modality=meta.modality or (info.modality if info else None),
                body_part=meta.body_part or (info.body_part if info else None),
                study_description=meta.study_description,
                series_description=meta.series_description,
                view_position=meta.view_position or (info.view_position if info else None),
                laterality=meta.laterality,
                pixel_spacing_row=meta.pixel_spacing[0] if meta.pixel_spacing else None,
                pixel_spacing_column=meta.pixel_spacing[1] if meta.pixel_spacing else None,
                study_date=meta.study_date,
                sop_class_uid=meta.sop_class_uid,
                rows=meta.rows,
                columns=meta.columns,
                frames=meta.frames,
                frame_index=meta.frame_index,
                window_center=meta.window_center,
                window_width=meta.window_width,
                thumbnail_path=_thumbnail_name(d),
                encoder=archive.encoder.name,
                embedding=np.asarray(vector, dtype=np.float32).tobytes(),
            )
            session.add(row)
            rows.append(row)
        session.flush()
        return [row.id for row in rows]
