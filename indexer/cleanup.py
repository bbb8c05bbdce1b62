"""Image clean-up before embedding (text masked, body cropped): one archive-wide policy, part of the encoder identity.

The policy (`MEDCBIR_IMAGE_CLEANUP`, e.g. `mask_text,crop_body`) is applied to every image the archive
embeds, stored images and queries alike, because both go through `Archive.encoder`. It is recorded in the
encoder's name (`efficientnet_lite0@weights+crop_body+mask_text`) beside every stored vector and in the
index file name, so a cleaned archive is never searched with uncleaned queries: a process opened with
another policy finds no vectors of its own and says so. Measured on the COVID-19 X-rays
(docs/EVALUATION.md, scripts/explanation_shortcuts.py): masking and cropping move little Grad-CAM mass
and leave retrieval within noise, so the default is no clean-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from imaging.masking import crop_to_body, mask_burned_in_text

if TYPE_CHECKING:  # the settings import this module: keep it free of torch
    from embeddings import ImageEncoder

Transform = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

# Applied in this order whatever order the setting names them in: text is masked before the crop looks
# for the body (the crop itself ignores text, so the order only matters for the masked pixels).
CLEANUPS: dict[str, Transform] = {"mask_text": mask_burned_in_text, "crop_body": crop_to_body}


def parse_cleanup(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The policy's steps in their fixed order; an unknown step raises ValueError naming the valid ones."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    steps = {p.strip().lower() for p in parts if p and p.strip() and p.strip().lower() != "none"}
    unknown = sorted(steps - set(CLEANUPS))
    if unknown:
        raise ValueError(
            f"unknown image clean-up {', '.join(unknown)}: use any of {', '.join(CLEANUPS)} "
            "(comma-separated), or none"
        )
    return tuple(name for name in CLEANUPS if name in steps)


class CleanedEncoder:
    """An encoder that cleans each image before embedding it; every other attribute is the inner encoder's."""

    def __init__(self, inner: ImageEncoder, steps: Sequence[str]) -> None:
        self.inner = inner
        self.steps = tuple(parse_cleanup(list(steps)))
        self._transforms = [CLEANUPS[step] for step in self.steps]

    @property
    def name(self) -> str:
        """The inner name plus the steps, sorted: what the catalog records beside each vector."""
        return "+".join([self.inner.name, *sorted(self.steps)])

    @property
    def dim(self) -> int:
        """Length of each vector (the inner encoder's)."""
        return self.inner.dim

    def clean(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One image after every step of the policy."""
        for transform in self._transforms:
            image = transform(image)
        return image

    def embed(self, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """Clean, then embed with the inner encoder."""
        return self.inner.embed([self.clean(image) for image in images])

    def embed_one(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One cleaned image's vector."""
        result: npt.NDArray[np.float32] = self.embed([image])[0]
        return result

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


def with_cleanup(encoder: ImageEncoder, steps: Sequence[str]) -> ImageEncoder:
    """The encoder wrapped with the policy (the same encoder when there is nothing to do)."""
    if not steps or isinstance(encoder, CleanedEncoder):
        return encoder
    return CleanedEncoder(encoder, steps)  # type: ignore[return-value]


def model_encoder(encoder: ImageEncoder) -> ImageEncoder:
    """The encoder whose CNN explains and locates matches: the inner one of a cleaned encoder.

    Grad-CAM and region location look at the images as shown (uncleaned) on both sides of a match.
    """
    return encoder.inner if isinstance(encoder, CleanedEncoder) else encoder  # type: ignore[return-value]
