"""The Encoder: a timm feature model plus its preprocessing, batching, device choice and AMP."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from embeddings.onnx_runtime import OnnxForward, default_cache_dir
from embeddings.preprocessing import Preprocessing, validate_image
from embeddings.registry import RANDOM_SUFFIX
from embeddings.settings import BACKENDS, EmbeddingsSettings, configured
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


def _settings_or_default() -> EmbeddingsSettings:
    """The settings, or their defaults when the environment holds a bad value (an explicit backend was given)."""
    try:
        return configured()
    except EmbeddingsError:
        return EmbeddingsSettings.model_construct()


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
        # CPU forward pass (EmbeddingsSettings.backend unless given): "auto", the default, takes ONNX
        # Runtime on CPU when it is installed and agrees with torch, else torch. It is chosen at the first
        # embed (or `backend`), so a command that only needs the name and dim never exports the model.
        settings = configured() if backend is None else None
        asked = backend or (settings.backend if settings else "auto")
        if asked not in BACKENDS:
            raise EmbeddingsError(f"unknown backend {asked!r}; choose one of {', '.join(BACKENDS)}")
        if asked == "onnxruntime" and on_cuda:
            raise EmbeddingsError("the onnxruntime backend runs on CPU; leave it unset on CUDA")
        self._asked = "torch" if on_cuda else asked
        # random weights (tests) are never seen again: their export is not kept
        keep = (settings or _settings_or_default()).onnx_cache and not name.endswith(f"@{RANDOM_SUFFIX}")
        self._onnx_cache = default_cache_dir() if keep else None
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._backend = "torch"
        self._forward_lock = threading.Lock()

    def _chosen_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        forward = self._forward
        if forward is not None:
            return forward
        with self._forward_lock:
            if self._forward is None:
                chosen: Callable[[torch.Tensor], torch.Tensor] = self._model
                if self._asked in ("onnxruntime", "auto"):
                    try:
                        size = self._preprocess.input_size
                        chosen = OnnxForward(self._model, size, cache_dir=self._onnx_cache)
                        self._backend = "onnxruntime"
                    except EmbeddingsError as exc:
                        if self._asked == "onnxruntime":
                            raise
                        log.info("encoder forward pass on torch (ONNX Runtime not used: %s)", exc)
                self._forward = chosen
            return self._forward

    @property
    def backend(self) -> str:
        """The forward pass in use: "torch" or "onnxruntime" (chosen now if no image was embedded yet)."""
        self._chosen_forward()
        return self._backend

    @property
    def embedded_with(self) -> str | None:
        """The forward pass that has embedded images so far; None before the first embed."""
        return self._backend if self._forward is not None else None

    @property
    def requested_backend(self) -> str:
        """What was asked for: "torch", "onnxruntime" or "auto" ("torch" on CUDA)."""
        return self._asked

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
        """The underlying timm feature model (eval mode). Changing its weights after the first embed leaves
        an ONNX Runtime forward pass on the old ones: build a new Encoder (or use backend="torch")."""
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
            features = self._chosen_forward()(batch)
        if features.ndim != 2 or features.shape[1] != self._dim:
            raise EmbeddingsError(
                f"{self._model_name} returned features of shape {tuple(features.shape)}, "
                f"expected (N, {self._dim}); "
                "create the timm model with num_classes=0"
            )
        vectors = F.normalize(features.float(), p=2.0, dim=1, eps=1e-12)
        result: npt.NDArray[np.float32] = vectors.cpu().numpy().astype(np.float32, copy=False)
        return result
