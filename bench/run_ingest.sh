#!/usr/bin/env bash
# Start a memory-mode embedded stack on free ports in a temporary data dir, wait until it is
# ready, run bench/ingest.py (POST /v2/usage over HTTP) against it, and stop the stack (also
# on failure or Ctrl-C).
#
#   bench/run_ingest.sh [--workers N] [--out FILE] [-- ARGS FOR bench/ingest.py]
#
# e.g. bench/run_ingest.sh --out /tmp/ingest.json -- --clients 4 --batch-duration-s 30
# The bench's result object is the last line on stdout (and in FILE with --out).
# PYTHON picks the interpreter (default: .venv/bin/python); KEEP=1 keeps the data dir.
set -euo pipefail

WORKERS=1
OUT=""
BENCH_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (bench arguments go after --)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TAG=run_ingest
DATA_PREFIX=streambill-ingest
# shellcheck source=bench/embedded_stack.sh
source "$ROOT/bench/embedded_stack.sh"
start_embedded_stack

# `up` wrote the admin key into the data dir before starting the api; the bench reads it there.
RESULT_FILE="$DATA/ingest.out"
"$PY" "$ROOT/bench/ingest.py" --url "http://127.0.0.1:$API_PORT" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
  | tee "$RESULT_FILE"
LAST=$(tail -n 1 "$RESULT_FILE")
if [[ -n "$OUT" ]]; then
  printf '%s\n' "$LAST" >"$OUT"
fi
