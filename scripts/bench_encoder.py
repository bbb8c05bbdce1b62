"""Encoder benchmark: vectors/s of the full embed path vs a bare model forward on the same batch, same process.

Also tries CPU alternatives on the same preprocessed batch (torch thread counts, torch.compile, ONNX Runtime)
and reports each one's speed ratio to torch eager and its cosine to the eager vectors (must be >= 0.999).
Then embeds --images images through the product's Encoder once per --encoder-backends entry (torch, auto,
...: EmbeddingsSettings.backend) in this one process and prints each one's rate, its ratio to torch,
its first-embed cost (the export or the cached file) and its smallest cosine to the torch vectors.
Ends by printing one JSON line.

    python scripts/bench_encoder.py --batch 32 --repeats 3 --backends eager,threads1,onnxruntime
    python scripts/bench_encoder.py --backends eager --images 64 --encoder-backends torch,auto
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def best_rate(run: Callable[[], object], n: int, repeats: int) -> float:
    """Vectors/s of the best of `repeats` timed runs after one warm-up (the least disturbed by other load)."""
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return n / min(times)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def compare_encoder_backends(
    encoder: Any, images: list[np.ndarray], names: list[str], repeats: int
) -> dict[str, dict[str, object]]:
    """Vectors/s of Encoder.embed on each backend (same model, same images), ratios to torch, cosines."""
    from embeddings.encoder import Encoder

    figures: dict[str, dict[str, object]] = {}
    reference: np.ndarray | None = None
    torch_rate: float | None = None
    for name in ["torch", *[n for n in names if n != "torch"]]:
        built = Encoder(
            encoder.model, name=encoder.name, model_name=encoder.model_name, device="cpu",
            batch_size=encoder.batch_size, backend=name,
        )  # fmt: skip
        t = time.perf_counter()
        out = built.embed(
            images[: built.batch_size]
        )  # the first embed chooses (and exports) the forward pass
        first_s = time.perf_counter() - t
        rate = best_rate(lambda built=built: built.embed(images), len(images), repeats)
        out = built.embed(images)
        reference = out if reference is None else reference
        torch_rate = rate if torch_rate is None else torch_rate
        figures[name] = {
            "ran": built.backend,
            "vps": round(rate, 2),
            "ratio_vs_torch": round(rate / torch_rate, 3),
            "first_embed_s": round(first_s, 2),
            "cosine_min_vs_torch": round(cosine(out, reference), 6),
        }
        print(f"{'Encoder ' + name:>20}: {json.dumps(figures[name])}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-side", type=int, default=512, help="side of the synthetic input images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="eager,threads1,onnxruntime", help="also: compile")
    parser.add_argument("--images", type=int, default=64, help="images for the Encoder comparison")
    parser.add_argument("--encoder-backends", default="torch,auto", help="EmbeddingsSettings.backend values")
    args = parser.parse_args()

    from embeddings import create_encoder

    encoder = create_encoder(args.encoder, device="cpu", batch_size=args.batch)
    rng = np.random.default_rng(0)
    images = [rng.random((args.image_side, args.image_side, 3), dtype=np.float32) for _ in range(args.batch)]
    model = encoder.model
    preprocess = encoder.preprocessing
    with torch.inference_mode():
        batch = torch.stack([preprocess(torch.from_numpy(i).permute(2, 0, 1)) for i in images]).contiguous()

    def forward() -> np.ndarray:
        with torch.inference_mode():
            return F.normalize(model(batch), dim=1).numpy()

    threads = torch.get_num_threads()
    reference = forward()
    n = args.batch
    figures: dict[str, object] = {}
    full = best_rate(lambda: encoder.embed(images), n, args.repeats)
    bare = best_rate(forward, n, args.repeats)
    figures["full_embed_vps"] = round(full, 2)
    figures["full_embed_backend"] = encoder.backend  # the default (EmbeddingsSettings.backend) path
    figures["bare_forward_vps"] = round(bare, 2)
    figures["full_over_bare"] = round(full / bare, 3)
    backends: dict[str, dict[str, object]] = {
        "eager": {"vps": round(bare, 2), "ratio_vs_eager": 1.0, "cosine_min": 1.0}
    }
    for name in [b.strip() for b in args.backends.split(",") if b.strip() and b.strip() != "eager"]:
        try:
            if name.startswith("threads"):
                count = int(name.removeprefix("threads"))
                torch.set_num_threads(count)
                try:
                    rate = best_rate(forward, n, args.repeats)
                    out = forward()
                finally:
                    torch.set_num_threads(threads)
            elif name == "compile":
                compiled = torch.compile(model)

                def run_compiled(compiled: Callable[..., torch.Tensor] = compiled) -> np.ndarray:
                    with torch.inference_mode():
                        return F.normalize(compiled(batch), dim=1).numpy()

                t = time.perf_counter()
                out = run_compiled()
                backends_compile_s = time.perf_counter() - t
                rate = best_rate(run_compiled, n, args.repeats)
                figures["compile_first_call_s"] = round(backends_compile_s, 1)
            elif name == "onnxruntime":
                import onnxruntime as ort

                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    torch.onnx.export(
                        model, (batch[:1],), str(path), input_names=["x"], output_names=["y"],
                        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False,
                    )  # fmt: skip
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = threads
                    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                x = batch.numpy()

                def run_ort(session: ort.InferenceSession = session, x: np.ndarray = x) -> np.ndarray:
                    y = session.run(["y"], {"x": x})[0]
                    return np.asarray(y / np.linalg.norm(y, axis=1, keepdims=True))

                out = run_ort()
                rate = best_rate(run_ort, n, args.repeats)
            else:
                raise ValueError(f"unknown backend {name}")
            backends[name] = {
                "vps": round(rate, 2),
                "ratio_vs_eager": round(rate / bare, 3),
                "cosine_min": round(cosine(out, reference), 6),
            }
        except Exception as exc:  # one backend failing must not hide the others' figures
            backends[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"{name:>12}: {json.dumps(backends[name])}", flush=True)
    many = [rng.random((args.image_side, args.image_side, 3), dtype=np.float32) for _ in range(args.images)]
    names = [b.strip() for b in args.encoder_backends.split(",") if b.strip()]
    encoder_backends = compare_encoder_backends(encoder, many, names, args.repeats) if names else {}
    valid = {k: v for k, v in backends.items() if "vps" in v and float(v["cosine_min"]) >= 0.999}  # type: ignore[arg-type]
    figures["fastest_valid_backend"] = max(valid, key=lambda k: float(valid[k]["vps"]))  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "bench": "encoder",
                "encoder": encoder.name,
                "device": "cpu",
                "batch": n,
                "image_side": args.image_side,
                "input_size": list(encoder.input_size),
                "torch": torch.__version__,
                "torch_threads": threads,
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "machine": platform.machine(),
                **figures,
                "backends": backends,
                "encoder_images": args.images,
                "encoder_backends": encoder_backends,
            }
        )
    )


if __name__ == "__main__":
    main()
