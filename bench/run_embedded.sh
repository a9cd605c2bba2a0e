#!/usr/bin/env bash
# Start an embedded stack (durable storage, as `make up`; STREAMBILL_BROKER_STORAGE=memory
# for the A/B) on free ports in a temporary data dir, wait until it is ready, run `streambill bench` against it, and stop the stack (also on failure or Ctrl-C).
#
#   bench/run_embedded.sh [--workers N] [--events N] [--rate R] [--customers N]
#                         [--topups N] [--out FILE]
#
# --topups N adds the auto top-up phase (N customers cross their threshold at once). Without
# STREAMBILL_STRIPE_API_KEY in the environment it starts localstripe (the test extra) as the
# Stripe the stack talks to.
# The bench's result object is the last line on stdout (and in FILE with --out).
# PYTHON picks the interpreter (default: .venv/bin/python); KEEP=1 keeps the data dir.
set -euo pipefail

WORKERS=1
EVENTS=200000
RATE=2000
CUSTOMERS=""
TOPUPS=0
OUT=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --events) EVENTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --customers) CUSTOMERS=$2; shift 2 ;;
    --topups) TOPUPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TAG=run_embedded
DATA_PREFIX=streambill-bench
# shellcheck source=bench/embedded_stack.sh
source "$ROOT/bench/embedded_stack.sh"

LOCALSTRIPE_PID=""
if [[ "$TOPUPS" -gt 0 && -z "${STREAMBILL_STRIPE_API_KEY:-}" ]]; then
  read -r STRIPE_PORT _ < <("$PY" "$ROOT/bench/free_ports.py" 1)
  "$PY" "$ROOT/tests/localstripe_server.py" --port "$STRIPE_PORT" >/dev/null 2>&1 &
  LOCALSTRIPE_PID=$!
  export STREAMBILL_STRIPE_API_KEY=sk_test_bench
  export STREAMBILL_STRIPE_API_BASE="http://127.0.0.1:$STRIPE_PORT"
  "$PY" "$ROOT/bench/wait_ready.py" --pid "$LOCALSTRIPE_PID" --timeout 30 \
    "http://127.0.0.1:$STRIPE_PORT/js.stripe.com/v3/"
  echo "[$TAG] localstripe on :$STRIPE_PORT" >&2
fi
stop_localstripe() {
  [[ -n "$LOCALSTRIPE_PID" ]] && kill "$LOCALSTRIPE_PID" 2>/dev/null || true
}

start_embedded_stack
trap 'rc=$?; stop_localstripe; cleanup; exit $rc' EXIT

BENCH_ARGS=(--events "$EVENTS" --rate "$RATE")
[[ -n "$CUSTOMERS" ]] && BENCH_ARGS+=(--customers "$CUSTOMERS")
[[ "$TOPUPS" -gt 0 ]] && BENCH_ARGS+=(--topups "$TOPUPS")
RESULT_FILE="$DATA/bench.out"
"$PY" -m streambill.cli bench "${BENCH_ARGS[@]}" | tee "$RESULT_FILE"
LAST=$(tail -n 1 "$RESULT_FILE")
if [[ -n "$OUT" ]]; then
  printf '%s\n' "$LAST" >"$OUT"
fi
