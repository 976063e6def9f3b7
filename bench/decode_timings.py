"""Decode + classifier preprocessing per JPEG size, full decode vs Pillow's draft (DCT-scaled) decode.

    python bench/decode_timings.py [--runs 12]

Prints the median and minimum milliseconds of decode + resize + crop + normalise for a 640x480 and
a 1920x1080 photo-like JPEG (quality 85), each decoded in full and at the draft target the
classifier's input spec allows. Name the CPU (``lscpu``) next to the numbers you quote.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eca_serve.pipelines.preprocess import decode_target, preprocess_classification  # noqa: E402
from tests.image_samples import classifier_spec, decode, encode, photo_like  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    spec = classifier_spec()
    print("decode + classifier preprocess:")
    for size in ((640, 480), (1920, 1080)):
        data = encode(photo_like(*size, seed=11), "JPEG", quality=85)
        for label, target in (("full decode", None), ("draft", decode_target(spec))):
            runs = []
            for _ in range(args.runs):
                start = time.perf_counter()
                preprocess_classification(decode(data, target=target), spec)
                runs.append(1000 * (time.perf_counter() - start))
            print(f"  {size[0]}x{size[1]} JPEG ({len(data) // 1024} KiB) {label:<12}: "
                  f"median {statistics.median(runs):5.1f} ms, min {min(runs):5.1f} ms")


if __name__ == "__main__":
    main()
