"""Optional ONNX Runtime forward pass for CPU encoders (extra `onnx`): the same vectors, faster on small CPUs."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from embeddings.types import EmbeddingsError

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
ONNX_HINT = 'pip install "medcbir[onnx]"'
OPSET = 17
# Sessions already checked against torch in this process, by weights fingerprint (a few encoders at most).
_SESSIONS: OrderedDict[str, Any] = OrderedDict()
_SESSIONS_KEPT = 4
# Exports kept on disk (most recently used first): the encoder at a few input sizes, a fine-tuned one or two.
CACHE_KEPT = 8
_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """Where exported models are kept between runs: $XDG_CACHE_HOME/medcbir/onnx (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medcbir" / "onnx"


def weights_fingerprint(model: torch.nn.Module, input_size: tuple[int, int], threads: int) -> str:
    """A hash of the architecture, every weight, the input size and the library versions: the export's identity."""
    import onnxruntime as ort

    digest = hashlib.blake2b(digest_size=16)
    head = f"{type(model).__module__}.{type(model).__qualname__}|{input_size}|{threads}"
    digest.update(f"{head}|torch {torch.__version__}|ort {ort.__version__}|opset {OPSET}".encode())
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def export_onnx(model: torch.nn.Module, probe: torch.Tensor, path: Path) -> None:
    """Export a pooled-feature model to `path` (input "x", output "y", any batch size, at the probe's size)."""
    try:
        torch.onnx.export(
            model, (probe[:1],), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    except Exception as exc:  # exporter failures are many and version-specific
        raise EmbeddingsError(f"cannot export the model to ONNX ({exc}); use backend='torch'") from exc


def _cached_export(model: torch.nn.Module, probe: torch.Tensor, cache: Path, fresh: bool) -> Path | None:
    """The exported file in `cache` (exported now when absent or `fresh`); None when the folder is unusable."""
    path = cache / "encoder.onnx"
    try:
        if path.is_file() and not fresh:
            os.utime(cache)  # recently used: kept by the pruning below
            return path
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # written whole, then renamed: never half a file
            part = Path(tmp) / "encoder.onnx"
            export_onnx(model, probe, part)
            os.replace(part, path)
        _prune(cache.parent)
    except OSError as exc:
        log.info("ONNX export not cached in %s (%s)", cache, exc)
        return None
    return path


def _prune(root: Path) -> None:
    """Remove all but the CACHE_KEPT most recently used exports (each a folder named by its fingerprint)."""
    entries = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[CACHE_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)


class OnnxForward:
    """Runs a timm feature model exported to ONNX; checked against torch before it is used.

    The export (seconds) is kept in `cache_dir` under a fingerprint of the weights, so the next run with
    the same weights only loads it; a cached file is checked against torch like a fresh one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_size: tuple[int, int],
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingsError(f"the onnxruntime backend needs ONNX Runtime: {ONNX_HINT}") from exc
        height, width = input_size
        threads = threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        key = weights_fingerprint(model, input_size, threads)
        with _LOCK:
            known = _SESSIONS.get(key)
        if known is not None:  # this process checked these very weights already
            self._session = known
            return
        probe = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            self._expected = F.normalize(model(probe).float(), dim=1)
        folder = cache_dir / key if cache_dir is not None else None
        for fresh in (False, True):
            last_try = folder is None or fresh
            with tempfile.TemporaryDirectory() as tmp:
                path = _cached_export(model, probe, folder, fresh) if folder is not None else None
                if path is None:
                    path = Path(tmp) / "encoder.onnx"
                    export_onnx(model, probe, path)
                try:
                    self._session = ort.InferenceSession(
                        str(path), options, providers=["CPUExecutionProvider"]
                    )
                    agreement = self.agreement(probe)
                except (
                    Exception
                ) as exc:  # ONNX Runtime's errors have many types; a cached file may be damaged
                    if last_try:
                        raise EmbeddingsError(
                            f"ONNX Runtime cannot run the model ({exc}); use backend='torch'"
                        ) from exc
                    agreement = -1.0
            if agreement >= MIN_COSINE:
                break
            if last_try:
                raise EmbeddingsError(
                    f"ONNX Runtime vectors differ from torch (cosine {agreement:.5f} < {MIN_COSINE}); "
                    "use backend='torch'"
                )
            log.warning(
                "cached ONNX export in %s disagrees with torch or is damaged; exporting again", folder
            )
        with _LOCK:
            _SESSIONS[key] = self._session
            while len(_SESSIONS) > _SESSIONS_KEPT:
                _SESSIONS.popitem(last=False)
        log.info("encoder forward pass on ONNX Runtime (cosine to torch %.6f)", agreement)

    def agreement(self, probe: torch.Tensor) -> float:
        """The smallest cosine between this forward's and torch's vectors of the probe batch."""
        got = F.normalize(self(probe), dim=1)
        return float((self._expected * got).sum(dim=1).min())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        return torch.from_numpy(np.asarray(self._session.run(["y"], {"x": x})[0]))
