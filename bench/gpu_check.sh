#!/usr/bin/env bash
# GPU host check: serve the model repository on CUDA with each backend, classify and detect the
# example images over HTTP, confirm ONNX Runtime really runs on the CUDA provider, then benchmark.
#
#   pip install -e ".[dev]" && pip uninstall -y onnxruntime && pip install onnxruntime-gpu
#   bench/gpu_check.sh
#
# Settings (environment): DEVICE (cuda), MODEL_REPOSITORY (models), CLASSIFIER (shapes_classifier),
# DETECTOR (shapes_detector; empty skips detection), PORT (8765), BENCH_SECONDS (5; 0 skips the benchmark).
# Exit status 1 when any check failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

DEVICE=${DEVICE:-cuda}
MODEL_REPOSITORY=${MODEL_REPOSITORY:-models}
CLASSIFIER=${CLASSIFIER:-shapes_classifier}
DETECTOR=${DETECTOR-shapes_detector}
PORT=${PORT:-8765}
BENCH_SECONDS=${BENCH_SECONDS:-5}
BASE="http://127.0.0.1:${PORT}"
LOGS=$(mktemp -d)
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

echo "== host"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "(no nvidia-smi)"
python - <<'PY'
import onnxruntime as ort
import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
print(f"onnxruntime {ort.__version__}, providers: {ort.get_available_providers()}")
PY

# Prints a model's backend and device, or one line per image of a classify/detect response.
read -r -d '' SUMMARY <<'PY'
import json, sys

body = json.loads(sys.argv[1])
if "backend" in body:
    print(f"  {body['name']}: backend {body['backend']} on {body['device']}")
for r in body.get("results", []):
    if "predictions" in r:
        top = r["predictions"][0]
        print(f"  {r['filename']}: {top['label']} {top['score']:.3f}")
    else:
        found = ", ".join(f"{d['category']} {d['score']:.2f}" for d in r["detections"])
        print(f"  {r['filename']}: {len(r['detections'])} detections: {found}")
if "timing" in body:
    print(f"  timing ms: {body['timing']}")
PY
summarize() { python -c "$SUMMARY" "$1"; }

# check NAME BACKEND FP16: start the server, wait until ready, query it, stop it with SIGTERM.
check() {
    local name=$1 backend=$2 fp16=$3 log="$LOGS/$1.log" out
    echo "== $name: backend=$backend fp16=$fp16 device=$DEVICE"
    ECA_SERVE_DEVICE=$DEVICE ECA_SERVE_BACKEND=$backend ECA_SERVE_FP16=$fp16 ECA_SERVE_PORT=$PORT \
        ECA_SERVE_MODEL_REPOSITORY=$MODEL_REPOSITORY eca-serve serve >"$log" 2>&1 &
    local pid=$! ready=0
    for _ in $(seq 600); do  # up to 5 minutes for loading and warm-up
        if curl -fsS -o /dev/null "$BASE/v2/health/ready" 2>/dev/null; then ready=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        curl -s "$BASE/healthz" 2>/dev/null | grep -q '"error":"' && break  # loading failed
        sleep 0.5
    done
    if [ "$ready" != 1 ]; then
        fail "$name: server not ready"; tail -n 30 "$log"; kill "$pid" 2>/dev/null; wait "$pid"; return
    fi

    out=$(curl -fsS "$BASE/v1/models/$CLASSIFIER") && summarize "$out"
    if out=$(curl -fsS -F file=@examples/star.png -F file=@examples/cross.png -F file=@examples/pentagon.png \
            "$BASE/v1/models/$CLASSIFIER/classify"); then
        summarize "$out"
    else
        fail "$name: classify"
    fi
    if [ -n "$DETECTOR" ]; then
        if out=$(curl -fsS -F file=@examples/scene.png "$BASE/v1/models/$DETECTOR/detect?score_threshold=0.5"); then
            summarize "$out"
        else
            fail "$name: detect"
        fi
    fi
    if [ "$backend" = onnxruntime ]; then
        # eca_serve.runtime.onnx_backend logs "onnxruntime session <file> runs on <provider>" per model.
        grep "onnxruntime session" "$log" | sed 's/^/  log: /'
        if [[ $DEVICE == cuda* ]] && ! grep -q "runs on CUDAExecutionProvider" "$log"; then
            fail "$name: no ONNX Runtime session on CUDAExecutionProvider (is onnxruntime-gpu installed?)"
        elif [[ $DEVICE == cuda* ]] && grep "onnxruntime session" "$log" | grep -qv CUDAExecutionProvider; then
            fail "$name: an ONNX Runtime session fell back to CPU"
        fi
    fi

    # Graceful drain: SIGTERM must end the server with status 0.
    kill -TERM "$pid"
    wait "$pid" || fail "$name: exit status $? after SIGTERM (expected 0)"
}

check onnxruntime onnxruntime false
check torchscript-fp16 torchscript true

if [ "$BENCH_SECONDS" != 0 ]; then
    echo "== benchmark: raw backend img/s at batch 1/8/32/64, then HTTP"
    python bench/serve_bench.py --device "$DEVICE" --seconds "$BENCH_SECONDS" || fail "serve_bench.py"
fi

echo "== server logs in $LOGS"
if [ "$failures" -gt 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "all checks passed"
