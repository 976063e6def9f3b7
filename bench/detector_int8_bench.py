"""INT8 settings for the shipped detector: COCO box/mask AP of each against FP32, and speed.

    # 1. quantize with every setting and score AP (no timing: run niced)
    nice -n 19 python bench/detector_int8_bench.py ap --calibration data/det_cal --eval data/det_val --out runs/det_int8
    # 2. time FP32 against each INT8 graph, one image per call, alternating 1 s windows (under the bench lock)
    flock /tmp/bench.lock python bench/detector_int8_bench.py speed --out runs/det_int8 --rounds 6

Data: ``eca-serve data shapes --kind detect --out data/det_cal --count 64 --seed 11`` (training
distribution) and ``--out data/det_val --count 300 --seed 12`` (the held-out split the shipped
detector was scored on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eca_serve.quantize.detector import (  # noqa: E402
    CocoSet, DetectorSetting, calibration_files, coco_ap, compare_detectors, load_scenes, quantize_detector_graph,
)
from eca_serve.quantize.graph import cpu_session  # noqa: E402
from eca_serve.repository import read_config  # noqa: E402

SETTINGS = [
    DetectorSetting("minmax", True, "backbone_fpn", 32),
    DetectorSetting("minmax", False, "backbone_fpn", 32),
    DetectorSetting("percentile", True, "backbone_fpn", 32),
    DetectorSetting("entropy", True, "backbone_fpn", 32),
    DetectorSetting("minmax", True, "backbone_fpn", 64),
    DetectorSetting("minmax", True, "backbone", 32),
    DetectorSetting("minmax", True, "fpn_adds_float", 32),
    DetectorSetting("minmax", True, "ends_float", 32),
    DetectorSetting("minmax", True, "with_rpn_head", 32),
    DetectorSetting("percentile", False, "backbone_fpn", 32),
    DetectorSetting("minmax", False, "backbone_fpn", 64),
]


def run_ap(args: argparse.Namespace) -> None:
    """Quantize with every setting into ``--out`` and score FP32 and each INT8 graph on the same scenes."""
    folder = args.model_repository / "shapes_detector" / "1"
    config = read_config(folder)
    attention = [a.output for a in config.attention]
    data = CocoSet(args.eval)
    ids, files = data.files(args.eval_images)
    scenes = load_scenes(files, config)
    calibration = [s for s, _ in load_scenes(calibration_files(args.calibration, 64), config)]
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = coco_ap(cpu_session(folder / "model.onnx"), data, scenes, ids, config.categories)
    rows = [{"setting": "fp32", "file": str(folder / "model.onnx"), **fp32}]
    print(json.dumps(rows[0]), flush=True)
    for i, setting in enumerate(SETTINGS):
        target, done = args.out / f"int8_{i}.onnx", args.out / f"int8_{i}.json"
        if done.exists() and target.exists():  # a rerun keeps the settings already scored
            rows.append(json.loads(done.read_text()))
            continue
        nodes = quantize_detector_graph(folder / "model.onnx", target, calibration[:setting.calibration_images],
                                        setting, attention)
        int8 = coco_ap(cpu_session(target), data, scenes, ids, config.categories)
        drops, ok = compare_detectors(fp32, int8, 1.0)
        rows.append({"setting": setting.label(), "file": str(target), "nodes": nodes, **int8,
                     "drop_points": drops, "within_1_point": ok})
        print(json.dumps(rows[-1]), flush=True)
        done.write_text(json.dumps(rows[-1]) + "\n")
    (args.out / "ap.json").write_text(json.dumps({"eval_images": len(ids), "rows": rows}, indent=2) + "\n")


def run_speed(args: argparse.Namespace) -> None:
    """Images/s of each graph, one 192 px scene per call, windows interleaved round by round."""
    import numpy as np

    rows = json.loads((args.out / "ap.json").read_text())["rows"]
    if args.only:  # row 0 (FP32) always, then the chosen settings
        rows = [rows[0]] + [rows[1 + int(i)] for i in args.only.split(",")]
    threads = args.threads
    sessions = [cpu_session(Path(r["file"]), threads) for r in rows]
    scene = np.random.default_rng(0).random((3, 192, 192), dtype=np.float32)
    feeds = [{s.get_inputs()[0].name: scene} for s in sessions]
    for s, f in zip(sessions, feeds):
        s.run(None, f)
    rates: list[list[float]] = [[] for _ in rows]
    for _ in range(args.rounds):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            rates[k].append(_window(s, f, args.window))
    base = rates[0]
    print("| setting | box AP | mask AP | img/s median (min-max) | INT8/FP32 per round: median (min-max) |")
    print("|---|---|---|---|---|")
    for row, rate in zip(rows, rates):
        ratios = [r / b for r, b in zip(rate, base)]
        print(f"| {row['setting']} | {row['box_AP']:.4f} | {row['mask_AP']:.4f} | {statistics.median(rate):.2f} "
              f"({min(rate):.2f}-{max(rate):.2f}) | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")


def _window(session, feed, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while done < 2 or time.perf_counter() - start < seconds:
        session.run(None, feed)
        done += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["ap", "speed"])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--calibration", type=Path, default=Path("data/det_cal"))
    parser.add_argument("--eval", type=Path, default=Path("data/det_val"))
    parser.add_argument("--eval-images", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/det_int8"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--only", help="speed: time only these settings (indices into SETTINGS, comma list)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = ORT default)")
    args = parser.parse_args()
    run_ap(args) if args.phase == "ap" else run_speed(args)


if __name__ == "__main__":
    main()
