"""Ingest benchmark: files/s end to end (read, decode, embed, write rows, add vectors, save) vs the encoder-only rate.

The corpus is the bundled demo archive (real DICOM from pydicom/pydicom-data, PNG/JPEG from scikit-image)
replicated to N distinct files (each copy has one pixel nudged and, for DICOM, a new SOP Instance UID, so
none is a duplicate). The encoder-only rate embeds the same decoded images in the same process.
Ends by printing one JSON line. `--engine ray` runs the same ingest on a local Ray (Ray Data decode
tasks and an embedding actor pool; needs the `ray` extra); Ray's start-up is timed apart.

    python scripts/bench_ingest.py --files 5000
    python scripts/bench_ingest.py --files 300 --engine ray --actors 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage


def replicate(sources: list[Path], target: Path, count: int) -> list[Path]:
    """Write `count` distinct files cycling over the sources."""
    import pydicom
    from pydicom.uid import generate_uid

    target.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        source = sources[i % len(sources)]
        out = target / f"{i:06d}_{source.name}"
        data = source.read_bytes()
        try:
            PILImage.open(io.BytesIO(data))
            is_raster = True
        except Exception:
            is_raster = False
        if not is_raster:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            ds.SOPInstanceUID = generate_uid()
            syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
            if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
                pixels = bytearray(ds.PixelData)
                pixels[len(pixels) // 2] ^= 1
                ds.PixelData = bytes(pixels)
            ds.save_as(out, enforce_file_format=False)
        else:
            image = PILImage.open(io.BytesIO(data))
            image.load()
            array = np.array(image)
            flat = array.reshape(-1)
            flat[(i * 7919) % flat.size] ^= 1
            fmt = "JPEG" if source.suffix.lower() in (".jpg", ".jpeg") else "PNG"
            PILImage.fromarray(array).save(out, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        written.append(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the pipeline's)")
    parser.add_argument("--encoder-sample", type=int, default=256, help="images for the encoder-only rate")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument(
        "--actors", type=int, default=None, help="Ray embedding actors (default: the engine's)"
    )
    args = parser.parse_args()

    from embeddings import create_encoder
    from imaging import load_image
    from indexer.archive import Archive
    from indexer.cli.demo import build_demo_archive
    from indexer.ingest.local import ingest_path
    from indexer.settings import IndexerSettings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = build_demo_archive(root / "demo")
        corpus = replicate(sorted(sources), root / "corpus", args.files)
        kinds: dict[str, int] = {}
        for path in corpus:
            kind = (
                "dicom" if path.suffix.lower() not in (".png", ".jpg", ".jpeg") else path.suffix.lower()[1:]
            )
            kinds[kind] = kinds.get(kind, 0) + 1
        encoder = create_encoder("efficientnet_lite0", device="cpu", batch_size=args.batch)

        # encoder-only: the same decoded images, embedded in batches, no decode, no writes
        decoded = [load_image(p.read_bytes()).pixels for p in corpus[: args.encoder_sample]]
        encoder.embed(decoded[: args.batch])  # warm-up
        t = time.perf_counter()
        encoder.embed(decoded)
        encoder_rate = len(decoded) / (time.perf_counter() - t)
        del decoded

        settings = IndexerSettings(data_dir=root / "data", batch_size=args.batch)
        archive = Archive.open(settings, encoder=encoder)
        ray_init_s = None
        if args.engine == "ray":
            from functools import partial

            import ray

            from indexer.ingest.ray import RayOptions, ingest_path_ray

            t = time.perf_counter()
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            ray_init_s = round(time.perf_counter() - t, 1)
            factory = partial(create_encoder, "efficientnet_lite0", device="cpu", batch_size=args.batch)
            t = time.perf_counter()
            report = ingest_path_ray(
                archive,
                root / "corpus",
                options=RayOptions(actors=args.actors, batch_size=args.batch),
                progress=False,
                factory=factory,
            )
            elapsed = time.perf_counter() - t
            ray.shutdown()
        else:
            t = time.perf_counter()
            report = ingest_path(archive, root / "corpus", progress=False, workers=args.workers)
            elapsed = time.perf_counter() - t
        archive.close()
        ingest_rate = report.indexed / elapsed
        print(
            json.dumps(
                {
                    "bench": "ingest",
                    "engine": args.engine,
                    "ray_init_s": ray_init_s,
                    "files": len(corpus),
                    "distinct_sources": len(sources),
                    "by_format": kinds,
                    "indexed": report.indexed,
                    "failed": report.failed,
                    "already_indexed": report.already_indexed,
                    "elapsed_s": round(elapsed, 1),
                    "ingest_files_per_s": round(ingest_rate, 2),
                    "encoder_only_images_per_s": round(encoder_rate, 2),
                    "ingest_over_encoder": round(ingest_rate / encoder_rate, 3),
                    "encoder": encoder.name,
                    "backend": encoder.backend,  # the one that ran (EmbeddingsSettings.backend, auto by default)
                    "batch": args.batch,
                    "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "machine": platform.machine(),
                }
            )
        )


if __name__ == "__main__":
    main()
