"""Peak memory of one decode per pixel (the figure behind imaging.settings.DECODE_BYTES_PER_PIXEL).

    python scripts/bench_decode_memory.py [--megapixels 16]

Each case runs in a fresh process; it prints the RSS growth of `imaging.load_image` and bytes per pixel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

CASE = textwrap.dedent(
    """
    import io, resource, sys
    import numpy as np
    from PIL import Image
    kind, megapixels = sys.argv[1], float(sys.argv[2])
    side = int((megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    if kind == "png-rgb8":
        array = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    else:
        array = rng.integers(0, 65535, (side, side), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    data = buffer.getvalue()
    del array, buffer
    import imaging
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    imaging.load_image(data, max_pixels=10**9)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(f"{kind:12s} {side}x{side}: +{grown / 2**20:.0f} MiB, {grown / (side * side):.1f} B/px")
    """
)


def main() -> None:
    """Run each case in its own process and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=16.0)
    args = parser.parse_args()
    for kind in ("png-rgb8", "png-grey16"):
        done = subprocess.run(
            [sys.executable, "-c", CASE, kind, str(args.megapixels)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(done.stdout.strip())


if __name__ == "__main__":
    main()
