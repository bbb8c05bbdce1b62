"""Raw pixel values and similarity maps for the compare viewer: every frame, downsampled, as base64 float32.

The viewer windows, zooms and scrolls frames in the browser, so it needs values rather than PNGs:
grey DICOM with a VOI window is sent in modality units (HU for CT, after the modality LUT, before any
window), anything else as the 0-255 levels of the decoded image, the same units as the window sliders of
the search page (search_api.windows.window_scale), so one window means the same on both. Colour images
(photographs, slides, colour ultrasound) are sent as RGB, three 0-255 values a pixel, not as luminance.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from embeddings.explain import feature_box, similarity_maps
from imaging import DecodedImage, load_image
from imaging.dicom import iter_modality_values
from imaging.overlay import upsample_map
from imaging.settings import ImagingSettings
from indexer.storage.stored import read_stored_if_present
from search_api.access import RADIOLOGY, allow
from search_api.deps import ArchiveDep, AuditDep, ExplainerDep, PrincipalDep, QueryId, RowId
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.explanations import Explainer
from search_api.searcher import NotFoundError
from search_api.windows import window_scale

router = APIRouter(route_class=StrictJsonRoute)

MAX_SIDE = 512
MAX_FRAMES = 64
# Values sent per image at most (all frames together): 8 Mi float32 = 32 MiB, ~43 MiB of base64.
MAX_VALUES = 8 * 1024 * 1024

SideQuery = Annotated[int, Query(ge=16, le=1024, description="Longest side of each frame sent")]
FramesQuery = Annotated[int, Query(ge=1, le=256, description="Most frames sent (evenly spaced)")]


class PixelsOut(BaseModel):
    """The frames of an image as little-endian float32 values, row-major, frame after frame."""

    rows: int
    columns: int
    frames: int = Field(description="Frames sent (a long series is sampled evenly)")
    frame_indices: list[int] = Field(description="The source frame of each frame sent")
    source_frames: int = Field(description="Frames the source holds")
    start_frame: int = Field(description="Position (in the frames sent) of the frame that was indexed")
    units: Literal["modality", "display"] = Field(
        description="modality: modality values (HU for CT); display: 0-255 grey levels"
    )
    modality: str | None
    invert: bool = Field(description="MONOCHROME1: high values are shown dark")
    window_center: float
    window_width: float
    min_value: float
    max_value: float
    pixel_spacing: list[float] | None = Field(description="(row, column) mm of the pixels SENT")
    channels: Literal[1, 3] = Field(
        default=1, description="1: one value a pixel; 3: RGB (a colour image, display units 0-255)"
    )
    dtype: Literal["float32"] = "float32"
    data: str = Field(
        description="base64 of frames x rows x columns (x 3 when channels is 3) little-endian float32"
    )


class HeatOut(BaseModel):
    """One similarity map in [0, 1], at the size of the frames sent for that image."""

    rows: int
    columns: int
    data: str = Field(description="base64 of rows x columns little-endian float32 in [0, 1]")


class SimilarityMapsOut(BaseModel):
    """Where the query and the neighbour drove their cosine similarity, as maps the viewer overlays."""

    score: float
    query: HeatOut
    neighbour: HeatOut


def _resize(values: npt.NDArray[np.float32], rows: int, columns: int) -> npt.NDArray[np.float32]:
    if values.shape[:2] == (rows, columns):
        return values
    if values.ndim == 3:
        return np.stack([_resize(values[..., c], rows, columns) for c in range(values.shape[2])], axis=-1)
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    resized = image.resize((columns, rows), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float32)


def _fit(rows: int, columns: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def _sampled(total: int, start: int, most: int) -> list[int]:
    """Up to `most` evenly spaced frame indices of `total`, the indexed frame `start` among them."""
    if total <= most:
        return list(range(total))
    picked = [round(i * (total - 1) / max(most - 1, 1)) for i in range(most)]
    nearest = min(range(most), key=lambda i: abs(picked[i] - start))
    picked[nearest] = start
    return sorted(set(picked))


# A decoded image is colour when its channels differ by more than compression noise (a grey picture stored
# as RGB, or a JPEG of one, is sent as one channel: a third of the bytes, and the window works on it).
COLOUR_SPREAD = 4.0 / 255.0


def is_colour(pixels: npt.NDArray[np.float32]) -> bool:
    """Whether decoded [0, 1] pixels are a colour image (RGB channels that really differ)."""
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return False
    rgb = pixels[..., :3]
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return bool(np.percentile(spread, 99) > COLOUR_SPREAD)


def _rgb(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Decoded [0, 1] pixels as rows x columns x 3 levels 0-255 (alpha dropped)."""
    rgb = pixels[..., :3] if pixels.ndim == 3 and pixels.shape[2] >= 3 else np.dstack([pixels] * 3)
    return (np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.float32)


def _grey(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Decoded [0, 1] pixels as 0-255 grey levels (colour images by luminance)."""
    if pixels.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[: pixels.shape[2]]
        grey = pixels[..., :3] @ (weights / weights.sum()) if pixels.shape[2] >= 3 else pixels[..., 0]
    else:
        grey = pixels
    return (np.clip(grey, 0.0, 1.0) * 255.0).astype(np.float32)


def read_pixels(
    source: bytes, start: int | None, max_pixels: int | None, side: int = MAX_SIDE, most: int = MAX_FRAMES
) -> PixelsOut:
    """The frames of `source` in window units, downsampled so that the longest side is at most `side`
    and all frames together hold at most MAX_VALUES values; `start` is the indexed frame."""
    limit = ImagingSettings().pixel_limit if max_pixels is None else max_pixels
    first: DecodedImage = load_image(source, max_pixels=limit, frame=start)
    meta = first.metadata
    scale = window_scale(meta, first.pixels)
    total = max(1, meta.frames)
    start_index = meta.frame_index if 0 <= meta.frame_index < total else 0
    indices = _sampled(total, start_index, most)
    colour = scale.units == "display" and is_colour(first.pixels)
    channels: Literal[1, 3] = 3 if colour else 1
    rows, columns = _fit(meta.rows or first.pixels.shape[0], meta.columns or first.pixels.shape[1], side)
    while len(indices) * rows * columns * channels > MAX_VALUES and max(rows, columns) > 16:
        rows, columns = _fit(rows, columns, int(max(rows, columns) * 0.8))
    frames: list[npt.NDArray[np.float32]] = []
    invert = False
    if scale.units == "modality":
        # The values before any window: imaging's own decode stages (budget checks, codecs, modality LUT).
        for values, monochrome1 in iter_modality_values(source, list(indices), max_pixels=limit):
            invert = monochrome1
            frames.append(_resize(np.nan_to_num(values).astype(np.float32), rows, columns))
        center, width = float(meta.window_center or 0.0), float(meta.window_width or 1.0)
    else:
        for index in indices:
            decoded = first if index == start_index else load_image(source, max_pixels=limit, frame=index)
            levels = _rgb(decoded.pixels) if colour else _grey(decoded.pixels)
            frames.append(_resize(levels, rows, columns))
        center, width = 127.5, 255.0
    stack = np.stack(frames).astype("<f4")
    spacing = None
    if meta.pixel_spacing is not None and meta.rows and meta.columns:
        spacing = [meta.pixel_spacing[0] * meta.rows / rows, meta.pixel_spacing[1] * meta.columns / columns]
    return PixelsOut(
        rows=rows,
        columns=columns,
        frames=len(indices),
        frame_indices=indices,
        source_frames=total,
        start_frame=indices.index(start_index),
        units=scale.units,  # type: ignore[arg-type]
        modality=meta.modality,
        invert=invert,
        window_center=center,
        window_width=width,
        min_value=float(stack.min()),
        max_value=float(stack.max()),
        pixel_spacing=spacing,
        channels=channels,
        data=base64.b64encode(stack.tobytes()).decode("ascii"),
    )


def stored_source(archive: Any, image_id: int) -> tuple[bytes, int | None]:
    """The source bytes of an archived image and its indexed frame; NotFoundError when gone."""
    row = archive.catalog.image(image_id)
    if row is None:
        raise NotFoundError(f"image {image_id} does not exist")
    source = read_stored_if_present(row.source_uri)
    if source is None:
        thumbnail = archive.settings.thumbnail_dir / Path(row.thumbnail_path or "")
        if row.thumbnail_path and thumbnail.is_file():
            return thumbnail.read_bytes(), None
        raise NotFoundError(f"image {image_id}: its source file and thumbnail are gone")
    return source, row.frame_index


@router.get(
    "/images/{image_id}/pixels",
    response_model=PixelsOut,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "view_image")],
)
async def image_pixels(
    image_id: RowId,
    archive: ArchiveDep,
    explainer: ExplainerDep,
    max_side: SideQuery = MAX_SIDE,
    max_frames: FramesQuery = MAX_FRAMES,
) -> PixelsOut:
    """An archived image's frames as values for a viewer (window, zoom and frames in the browser)."""

    def read() -> PixelsOut:
        source, frame = stored_source(archive, image_id)
        return read_pixels(source, frame, explainer.max_pixels, max_side, max_frames)

    return await run_in_threadpool(read)


@router.get(
    "/queries/{query_id}/pixels",
    response_model=PixelsOut,
    responses=ERROR_RESPONSES,
    dependencies=[allow(RADIOLOGY, "view_image")],
)
async def query_pixels(
    query_id: QueryId,
    principal: PrincipalDep,
    explainer: ExplainerDep,
    audit: AuditDep,
    max_side: SideQuery = MAX_SIDE,
    max_frames: FramesQuery = MAX_FRAMES,
) -> PixelsOut:
    """Your uploaded query's frames as values (kept 30 minutes, for you only)."""
    audit(f"query:{query_id}")

    def read() -> PixelsOut:
        source = explainer.queries.get(query_id, principal.username)
        return read_pixels(source, None, explainer.max_pixels, max_side, max_frames)

    return await run_in_threadpool(read)


def _heat(values: npt.NDArray[np.floating], pixels: npt.NDArray[np.float32], box: Any, side: int) -> HeatOut:
    rows, columns = _fit(pixels.shape[0], pixels.shape[1], side)
    heat = upsample_map(values, rows, columns, box).astype("<f4")
    return HeatOut(rows=rows, columns=columns, data=base64.b64encode(heat.tobytes()).decode("ascii"))


def similarity_of(
    explainer: Explainer, query: npt.NDArray[np.float32], other: npt.NDArray[np.float32], side: int
) -> SimilarityMapsOut:
    """The Explainer's similarity maps as values (the PNG route blends them into the image instead)."""
    encoder = explainer._encoder()
    features = explainer._features(encoder, [query, other])
    maps = similarity_maps(features[0], features[1])
    return SimilarityMapsOut(
        score=maps.similarity,
        query=_heat(maps.query, query, feature_box(encoder, *query.shape[:2]), side),
        neighbour=_heat(maps.neighbour, other, feature_box(encoder, *other.shape[:2]), side),
    )


@router.get(
    "/queries/{query_id}/similarity/{image_id}/maps",
    response_model=SimilarityMapsOut,
    responses={**ERROR_RESPONSES},
    dependencies=[allow(RADIOLOGY, "explain")],
)
async def query_similarity_maps(
    query_id: QueryId,
    image_id: RowId,
    principal: PrincipalDep,
    explainer: ExplainerDep,
    audit: AuditDep,
    max_side: SideQuery = MAX_SIDE,
) -> SimilarityMapsOut:
    """The similarity maps of your query and an archived image, as [0, 1] values (409 for an encoder
    without spatial features)."""
    audit(f"query:{query_id} image:{image_id}")

    def explain() -> SimilarityMapsOut:
        query = explainer.query_pixels(query_id, principal.username)
        return similarity_of(explainer, query, explainer.image_pixels(image_id), max_side)

    return await run_in_threadpool(explain)


@router.get(
    "/images/{image_id}/similarity/{other_id}/maps",
    response_model=SimilarityMapsOut,
    responses={**ERROR_RESPONSES},
    dependencies=[allow(RADIOLOGY, "explain")],
)
async def image_similarity_maps(
    image_id: RowId,
    other_id: RowId,
    explainer: ExplainerDep,
    audit: AuditDep,
    max_side: SideQuery = MAX_SIDE,
) -> SimilarityMapsOut:
    """The same for two archived images (a search by image and one of its hits)."""
    audit(f"image:{image_id} image:{other_id}")

    def explain() -> SimilarityMapsOut:
        return similarity_of(
            explainer, explainer.image_pixels(image_id), explainer.image_pixels(other_id), max_side
        )

    return await run_in_threadpool(explain)
