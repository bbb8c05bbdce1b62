"""Explanations from spatial feature maps: per-location similarity contributions and Grad-CAM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from embeddings.encoder import Encoder
from embeddings.preprocessing import validate_image
from embeddings.types import EmbeddingsError

# Pooled features must match the mean of the spatial map this closely (relative), else the model pools
# differently (max, attention, tokens) and per-location contributions would not add up to its vector.
_POOL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SimilarityMaps:
    """Where two images' feature maps agree: each map's mean is the cosine similarity of their vectors.

    `query` and `neighbour` are the per-location contributions (h x w, float32), scaled to [0, 1] for
    display by `normalise_map`; `similarity` is the cosine of the pooled, L2-normalised vectors, i.e.
    the score the index ranks by.
    """

    query: npt.NDArray[np.float32]
    neighbour: npt.NDArray[np.float32]
    query_contributions: npt.NDArray[np.float32]
    neighbour_contributions: npt.NDArray[np.float32]
    similarity: float


def feature_box(encoder: Encoder, height: int, width: int) -> tuple[float, float, float, float]:
    """The part of an H x W image that the model sees after resize and centre crop, as fractions
    (top, left, bottom, right) of the image; the feature map covers exactly this box."""
    prep = encoder.preprocessing
    new_h, new_w = prep.resize_shape(height, width)
    crop_h, crop_w = prep.input_size
    top = round((new_h - crop_h) / 2.0)
    left = round((new_w - crop_w) / 2.0)
    return (top / new_h, left / new_w, (top + crop_h) / new_h, (left + crop_w) / new_w)


def _spatial(encoder: Encoder, batch: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) features of the last conv stage, checked to average-pool into the model's vector."""
    model = encoder.model
    forward_features = getattr(model, "forward_features", None)
    forward_head = getattr(model, "forward_head", None)
    if forward_features is None or forward_head is None:
        raise EmbeddingsError(
            f"{encoder.model_name} exposes no forward_features/forward_head; explanations need a timm CNN"
        )
    features = forward_features(batch)
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        raise EmbeddingsError(
            f"{encoder.model_name} gives no spatial feature map (got shape "
            f"{tuple(getattr(features, 'shape', ()))}); explanations need a CNN such as efficientnet_lite0"
        )
    with torch.no_grad():
        pooled = forward_head(features.detach(), pre_logits=True).float()
        mean = features.detach().float().mean(dim=(2, 3))
        gap = float((pooled - mean).norm()) / max(float(pooled.norm()), 1e-12)
    if pooled.shape != mean.shape or gap > _POOL_TOLERANCE:
        raise EmbeddingsError(
            f"{encoder.model_name} does not average-pool its feature map into its vector; "
            "similarity maps and Grad-CAM need global average pooling"
        )
    return features.float()


def _batch(encoder: Encoder, images: Sequence[npt.NDArray[np.float32]]) -> torch.Tensor:
    arrays = [validate_image(image, index) for index, image in enumerate(images)]
    prep = encoder.preprocessing
    tensors = [prep(torch.from_numpy(a).to(encoder.device).permute(2, 0, 1)) for a in arrays]
    return torch.stack(tensors)


def spatial_features(encoder: Encoder, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """The last conv feature maps of H x W x 3 float32 [0, 1] images, as (N, h, w, C) float32.

    Their spatial mean is the encoder's pooled feature: L2-normalised, it is the indexed vector.
    """
    if not images:
        raise EmbeddingsError("pass at least one image")
    with torch.inference_mode():
        features = _spatial(encoder, _batch(encoder, images))
    result: npt.NDArray[np.float32] = features.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
    return result


def normalise_map(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Keep the positive part and scale it to [0, 1] (all zeros when nothing is positive)."""
    positive = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, None)
    peak = float(positive.max()) if positive.size else 0.0
    scaled = positive / peak if peak > 0 else np.zeros_like(positive)
    return scaled.astype(np.float32)


def similarity_maps(
    query_features: npt.NDArray[np.float32], neighbour_features: npt.NDArray[np.float32]
) -> SimilarityMaps:
    """Split the cosine similarity of two pooled (h, w, C) feature maps over their locations.

    With q = mean(query locations) and n = mean(neighbour locations), cos(q, n) is the mean over query
    locations of <q_loc, n / |n|> / |q|, and symmetrically for the neighbour; those terms are the maps.
    """
    q_map = np.asarray(query_features, dtype=np.float64)
    n_map = np.asarray(neighbour_features, dtype=np.float64)
    if q_map.ndim != 3 or n_map.ndim != 3 or q_map.shape[2] != n_map.shape[2]:
        raise EmbeddingsError(
            f"pass two (h, w, C) feature maps with the same C, got {q_map.shape} and {n_map.shape}"
        )
    q = q_map.mean(axis=(0, 1))
    n = n_map.mean(axis=(0, 1))
    q_norm = max(float(np.linalg.norm(q)), 1e-12)
    n_norm = max(float(np.linalg.norm(n)), 1e-12)
    query_contributions = (q_map @ (n / n_norm)) / q_norm
    neighbour_contributions = (n_map @ (q / q_norm)) / n_norm
    return SimilarityMaps(
        query=normalise_map(query_contributions),
        neighbour=normalise_map(neighbour_contributions),
        query_contributions=query_contributions.astype(np.float32),
        neighbour_contributions=neighbour_contributions.astype(np.float32),
        similarity=float(np.dot(q, n) / (q_norm * n_norm)),
    )


def grad_cam_of_features(
    features: npt.NDArray[np.float32], class_weight: npt.NDArray[np.floating], bias: float = 0.0
) -> npt.NDArray[np.float32]:
    """Grad-CAM (h x w, in [0, 1]) of a linear head's logit `w . normalize(mean(features)) + bias` from an
    (h, w, C) feature map of `spatial_features`: the head sees only this map, so no model is needed.

    Channel weights are the spatially averaged gradients of the logit with respect to the map; the map
    is the ReLU of their weighted sum over channels.
    """
    weight = np.asarray(class_weight, dtype=np.float32).reshape(-1)
    values = np.asarray(features, dtype=np.float32)
    if values.ndim != 3 or weight.shape[0] != values.shape[2]:
        raise EmbeddingsError(
            f"the class weight has {weight.shape[0]} values but the features are {values.shape} "
            f"({values.shape[-1]}-d); use a head trained on this encoder's vectors"
        )
    with torch.enable_grad():
        activations = torch.from_numpy(values.copy()).requires_grad_(True)
        vector = F.normalize(activations.mean(dim=(0, 1)), p=2.0, dim=0, eps=1e-12)
        logit = (vector * torch.from_numpy(weight)).sum() + float(bias)
        (gradient,) = torch.autograd.grad(logit, activations)
    channel_weights = gradient.mean(dim=(0, 1))
    cam = torch.relu((activations.detach() * channel_weights).sum(dim=2))
    return normalise_map(cam.numpy())


def grad_cam(
    encoder: Encoder,
    image: npt.NDArray[np.float32],
    class_weight: npt.NDArray[np.floating],
    bias: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Grad-CAM (h x w, in [0, 1]) of a linear head's logit `w . normalize(pool(features)) + bias` over
    one image, at the encoder's last conv feature map (the model stays frozen, in eval mode)."""
    return grad_cam_of_features(spatial_features(encoder, [image])[0], class_weight, bias)
