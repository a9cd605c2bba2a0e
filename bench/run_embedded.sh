#!/usr/bin/env bash
# Start a memory-mode embedded stack on free ports in a temporary data dir, wait until it is
# ready, run `streambill bench` against it, and stop the stack (also on failure or Ctrl-C).
#
#   bench/run_embedded.sh [--workers N] [--events N] [--rate R] [--customers N] [--out FILE]
#
# The bench's result object is the last line on stdout (and in FILE with --out).
# PYTHON picks the interpreter (default: .venv/bin/python); KEEP=1 keeps the data dir.
set -euo pipefail

WORKERS=1
EVENTS=200000
RATE=2000
CUSTOMERS=""
OUT=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --events) EVENTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --customers) CUSTOMERS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TAG=run_embedded
DATA_PREFIX=streambill-bench
# shellcheck source=bench/embedded_stack.sh
source "$ROOT/bench/embedded_stack.sh"
start_embedded_stack

BENCH_ARGS=(--events "$EVENTS" --rate "$RATE")
[[ -n "$CUSTOMERS" ]] && BENCH_ARGS+=(--customers "$CUSTOMERS")
RESULT_FILE="$DATA/bench.out"
"$PY" -m streambill.cli bench "${BENCH_ARGS[@]}" | tee "$RESULT_FILE"
LAST=$(tail -n 1 "$RESULT_FILE")
if [[ -n "$OUT" ]]; then
  printf '%s\n' "$LAST" >"$OUT"
fi
