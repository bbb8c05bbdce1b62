"""The Encoder: a timm feature model plus its preprocessing, batching, device choice and AMP."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from embeddings.onnx_runtime import OnnxForward
from embeddings.preprocessing import Preprocessing, validate_image
from embeddings.settings import BACKENDS, configured_backend
from embeddings.types import EmbeddingsError

log = logging.getLogger(__name__)


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available, else CPU; an explicit device is checked so a typo fails with a clear message."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EmbeddingsError(
            f"unknown device {device!r}; pass 'cpu', 'cuda', 'cuda:1' or leave it unset"
        ) from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise EmbeddingsError(
            f"device {device!r} requested but CUDA is not available; pass device='cpu' or unset it"
        )
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise EmbeddingsError(
            f"device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return chosen


def _feature_dim(model: torch.nn.Module) -> int:
    for attribute in ("head_hidden_size", "num_features"):
        value = getattr(model, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    raise EmbeddingsError(f"cannot tell the feature size of {type(model).__name__}; use a timm model")


class Encoder:
    """Turns H x W x 3 float32 [0, 1] images into L2-normalised float32 vectors with a timm model.

    The model must already output pooled features (timm `num_classes=0`). On CUDA the forward pass
    runs under bf16 (or fp16) autocast with channels_last; the returned vectors are always float32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        model_name: str,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        data_config: dict[str, Any] | None = None,
        amp: bool | None = None,
        backend: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise EmbeddingsError(f"batch_size must be at least 1, got {batch_size}")
        import timm.data

        self._device = choose_device(device)
        self._name = name
        self._model_name = model_name
        self._batch_size = batch_size
        self._data_config: dict[str, Any] = dict(data_config or timm.data.resolve_model_data_config(model))
        self._preprocess = Preprocessing.from_data_config(self._data_config)
        self._dim = _feature_dim(model)
        on_cuda = self._device.type == "cuda"
        self._amp_dtype: torch.dtype | None = None
        if amp if amp is not None else on_cuda:
            if not on_cuda:
                raise EmbeddingsError("amp=True needs a CUDA device; leave amp unset on CPU")
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._memory_format = torch.channels_last if on_cuda else torch.contiguous_format
        self._model = model.eval().to(self._device).to(memory_format=self._memory_format)
        for parameter in self._model.parameters():
            parameter.requires_grad_(False)
        # CPU backend (EmbeddingsSettings.backend, read when the encoder is built): ONNX Runtime gives the
        # same vectors faster. "auto" (what `medcbir serve` uses) takes it on CPU when it is installed and
        # agrees with torch, else torch.
        asked = backend or configured_backend()
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self._model
        self._backend = "torch"
        if asked not in BACKENDS:
            raise EmbeddingsError(f"unknown backend {asked!r}; choose one of {', '.join(BACKENDS)}")
        if asked == "onnxruntime":
            if on_cuda:
                raise EmbeddingsError("the onnxruntime backend runs on CPU; leave it unset on CUDA")
            self._forward = OnnxForward(self._model, self._preprocess.input_size)
            self._backend = "onnxruntime"
        elif asked == "auto" and not on_cuda:
            try:
                self._forward = OnnxForward(self._model, self._preprocess.input_size)
                self._backend = "onnxruntime"
            except EmbeddingsError as exc:
                log.info("encoder forward pass on torch (ONNX Runtime not used: %s)", exc)

    @property
    def backend(self) -> str:
        """The forward pass in use: "torch" or "onnxruntime"."""
        return self._backend

    @property
    def name(self) -> str:
        """Registry name plus weight identity, e.g. `efficientnet_lite0@efficientnet-lite0-57934424`."""
        return self._name

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self._dim

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._device

    @property
    def input_size(self) -> tuple[int, int]:
        """Model input height and width after resize and crop."""
        return self._preprocess.input_size

    @property
    def model_name(self) -> str:
        """The timm architecture name, e.g. `tf_efficientnet_lite0`."""
        return self._model_name

    @property
    def batch_size(self) -> int:
        """Images per forward pass."""
        return self._batch_size

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype on CUDA, None when running in float32."""
        return self._amp_dtype

    @property
    def preprocessing(self) -> Preprocessing:
        """The resize/crop/normalise settings taken from the model's data config."""
        return self._preprocess

    @property
    def model(self) -> torch.nn.Module:
        """The underlying timm feature model (eval mode)."""
        return self._model

    def __repr__(self) -> str:
        return f"Encoder(name={self._name!r}, dim={self._dim}, device={str(self._device)!r})"

    def embed(self, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """Embed H x W x 3 float32 [0, 1] images into an (N, dim) float32 array of unit rows."""
        arrays = [validate_image(image, index) for index, image in enumerate(images)]
        if not arrays:
            return np.zeros((0, self._dim), dtype=np.float32)
        chunks = [self._embed_batch(batch) for batch in self._batches(arrays)]
        return np.concatenate(chunks, axis=0)

    def embed_one(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Embed a single image into a (dim,) float32 unit vector."""
        result: npt.NDArray[np.float32] = self.embed([image])[0]
        return result

    def _batches(self, arrays: list[npt.NDArray[np.float32]]) -> Iterator[list[npt.NDArray[np.float32]]]:
        for start in range(0, len(arrays), self._batch_size):
            yield arrays[start : start + self._batch_size]

    @torch.inference_mode()
    def _embed_batch(self, arrays: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        on_cuda = self._device.type == "cuda"
        # On CUDA the decoded pixels go through pinned (page-locked) memory so the copy is truly asynchronous.
        tensors = [
            self._preprocess(
                (torch.from_numpy(array).pin_memory() if on_cuda else torch.from_numpy(array))
                .to(self._device, non_blocking=True)
                .permute(2, 0, 1)
            )
            for array in arrays
        ]
        batch = torch.stack(tensors).contiguous(memory_format=self._memory_format)
        autocast = (
            torch.autocast(device_type=self._device.type, dtype=self._amp_dtype)
            if self._amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            features = self._forward(batch)
        if features.ndim != 2 or features.shape[1] != self._dim:
            raise EmbeddingsError(
                f"{self._model_name} returned features of shape {tuple(features.shape)}, "
                f"expected (N, {self._dim}); "
                "create the timm model with num_classes=0"
            )
        vectors = F.normalize(features.float(), p=2.0, dim=1, eps=1e-12)
        result: npt.NDArray[np.float32] = vectors.cpu().numpy().astype(np.float32, copy=False)
        return result
