"""Optional ONNX Runtime forward pass for CPU encoders (extra `onnx`): the same vectors, faster on small CPUs."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embeddings.types import EmbeddingsError

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
ONNX_HINT = 'pip install "medcbir[onnx]"'


class OnnxForward:
    """Runs a timm feature model exported to ONNX; checked against torch before it is used."""

    def __init__(
        self, model: torch.nn.Module, input_size: tuple[int, int], threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingsError(f"the onnxruntime backend needs ONNX Runtime: {ONNX_HINT}") from exc
        height, width = input_size
        probe = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "encoder.onnx"
            try:
                torch.onnx.export(
                    model, (probe[:1],), str(path), input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False,
                )  # fmt: skip
            except Exception as exc:  # exporter failures are many and version-specific
                raise EmbeddingsError(
                    f"cannot export the model to ONNX ({exc}); use backend='torch'"
                ) from exc
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = F.normalize(model(probe).float(), dim=1)
        got = F.normalize(self(probe), dim=1)
        agreement = float((expected * got).sum(dim=1).min())
        if agreement < MIN_COSINE:
            raise EmbeddingsError(
                f"ONNX Runtime vectors differ from torch (cosine {agreement:.5f} < {MIN_COSINE}); use backend='torch'"
            )
        log.info("encoder forward pass on ONNX Runtime (cosine to torch %.6f)", agreement)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        return torch.from_numpy(np.asarray(self._session.run(["y"], {"x": x})[0]))
