"""int8 ONNX Runtime quantisation of the encoder vs float torch on real images: cosine and speed per variant.

The bar for an int8 backend (issue 16): every vector keeps cosine >= 0.99 to the float one. Variants:
dynamic (weights only), static QDQ per-channel with MinMax or Percentile calibration on --calibration
images that are not the measured ones. Ends by printing one JSON line.

    python scripts/bench_int8.py --data ../shared/datasets/brain-tumor-mri/Training --calibration 64 --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BAR = 0.99


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from embeddings import create_encoder
    from embeddings.onnx_runtime import export_onnx
    from imaging import load_image

    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".dcm"})
    pick = np.random.default_rng(args.seed).choice(len(files), args.calibration + args.images, replace=False)
    encoder = create_encoder(args.encoder, device="cpu")

    def batch(chosen: np.ndarray) -> torch.Tensor:
        images = [load_image(files[i].read_bytes()).pixels for i in chosen]
        prep = encoder.preprocessing
        return torch.stack([prep(torch.from_numpy(i).permute(2, 0, 1)) for i in images]).contiguous()

    calibration, measured = batch(pick[: args.calibration]), batch(pick[args.calibration :])
    with torch.inference_mode():
        reference = F.normalize(encoder.model(measured), dim=1).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                [{"x": calibration[i : i + 8].numpy()} for i in range(0, len(calibration), 8)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    def measure(path: Path) -> dict[str, Any]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = measured.numpy()

        def run() -> np.ndarray:
            return np.concatenate([session.run(["y"], {"x": x[i : i + 32]})[0] for i in range(0, len(x), 32)])

        run()
        times = []
        for _ in range(2):
            started = time.perf_counter()
            y = run()
            times.append(time.perf_counter() - started)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        cosines = np.sum(y * reference, axis=1)
        return {
            "vps": round(len(x) / min(times), 2),
            "cosine_min": round(float(cosines.min()), 5),
            "cosine_mean": round(float(cosines.mean()), 5),
            "passes_bar": bool(cosines.min() >= BAR),
        }

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain, prepared = folder / "float.onnx", folder / "prepared.onnx"
        export_onnx(encoder.model, measured[:2], plain)
        quant_pre_process(str(plain), str(prepared))
        results["float"] = measure(plain)
        quantize_dynamic(str(plain), str(folder / "dynamic.onnx"), weight_type=QuantType.QUInt8)
        results["dynamic_u8"] = measure(folder / "dynamic.onnx")
        for name, method, extra in [
            ("static_qdq_minmax", CalibrationMethod.MinMax, {}),
            ("static_qdq_percentile", CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
        ]:
            out = folder / f"{name}.onnx"
            quantize_static(
                str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=method, extra_options=extra,
            )  # fmt: skip
            results[name] = measure(out)
        for name, figures in results.items():
            print(f"{name:>22}: {json.dumps(figures)}", flush=True)
    torch_rate = 0.0
    with torch.inference_mode():
        started = time.perf_counter()
        for i in range(0, len(measured), 32):
            encoder.model(measured[i : i + 32])
        torch_rate = len(measured) / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "bench": "int8",
                "encoder": encoder.name,
                "data": str(args.data),
                "calibration_images": args.calibration,
                "measured_images": args.images,
                "bar_cosine_min": BAR,
                "torch_vps": round(torch_rate, 2),
                "torch_threads": torch.get_num_threads(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "variants": results,
            }
        )
    )


if __name__ == "__main__":
    main()
