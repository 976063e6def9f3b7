#!/usr/bin/env bash
# The README's first command from a fresh clone: seconds until /v2/health/ready answers 200, and the size of
# the virtual environment it made. Usage: bench/fresh_install.sh [PORT]  (clones this checkout's HEAD into a
# temporary folder; pip's cache is a new empty folder, so every wheel is fetched from the configured index).
set -uo pipefail
port=${1:-8765}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/clone"
cd "$work/clone"
# The line under <!-- readme-test: setup-serve --> (the fence's first line), served on $port without gRPC.
line=$(awk '/readme-test: setup-serve/ {getline; getline; print; exit}' README.md)
echo "command: $line"
export PIP_CACHE_DIR="$work/pip-cache" ECA_SERVE_PORT="$port" ECA_SERVE_GRPC_PORT=0
start=$(date +%s.%N)
bash -c "$line" > "$work/serve.log" 2>&1 &
shell=$!
until curl -sf "localhost:$port/v2/health/ready" > /dev/null; do
    sleep 0.5
    kill -0 "$shell" 2> /dev/null || { echo "the command exited:"; tail -20 "$work/serve.log"; exit 1; }
done
end=$(date +%s.%N)
echo "ready after $(python3 -c "print(round($end - $start, 1))") s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "virtual environment: $(du -sm .venv | cut -f1) MB, $(.venv/bin/pip list 2> /dev/null | tail -n +3 | wc -l) packages," \
     "torch installed: $(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("torch") is not None)')"
pkill -TERM -P "$shell"; kill -TERM "$shell" 2> /dev/null
wait "$shell"
rm -rf "$work"
