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
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}

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
DATA=$(mktemp -d -t streambill-ingest-XXXXXX)
UP_PID=""

# Free ports: broker, api, and WORKERS consecutive ones for the workers (port + i).
read -r BROKER_PORT API_PORT WORKER_PORT < <("$PY" "$ROOT/bench/free_ports.py" "$WORKERS")

export STREAMBILL_DATA_DIR="$DATA"
export STREAMBILL_BROKER_STORAGE=memory
export STREAMBILL_DEMO=0
export STREAMBILL_BROKER_PORT="$BROKER_PORT"
export STREAMBILL_API_PORT="$API_PORT"
export STREAMBILL_WORKER_PORT="$WORKER_PORT"
unset STREAMBILL_KAFKA_BOOTSTRAP STREAMBILL_ADMIN_API_KEY

stop_stack() {
  [[ -n "$UP_PID" ]] || return 0
  if kill -0 "$UP_PID" 2>/dev/null; then
    echo "[run_ingest] stopping the stack (pid $UP_PID)" >&2
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 "$STOP_TIMEOUT_S"); do
      kill -0 "$UP_PID" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$UP_PID" 2>/dev/null; then
      echo "[run_ingest] stack did not stop in ${STOP_TIMEOUT_S}s; killing its group" >&2
      kill -KILL -- "-$UP_PID" 2>/dev/null || true
    fi
  fi
  wait "$UP_PID" 2>/dev/null || true
  UP_PID=""
}

cleanup() {
  local rc=$?
  stop_stack
  if [[ $rc -eq 0 && "${KEEP:-0}" != 1 ]]; then
    rm -rf "$DATA"
  else
    echo "[run_ingest] data dir and stack log kept in $DATA" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "[run_ingest] up: $WORKERS worker(s), broker :$BROKER_PORT, api :$API_PORT," \
  "workers :$WORKER_PORT+, data $DATA" >&2
# setsid: the stack gets its own process group, so a last-resort kill reaches its children.
setsid "$PY" -m streambill.cli up --workers "$WORKERS" >"$DATA/up.log" 2>&1 &
UP_PID=$!

if ! "$PY" "$ROOT/bench/wait_ready.py" --pid "$UP_PID" --timeout "$READY_TIMEOUT_S" \
    "http://127.0.0.1:$API_PORT/readyz" \
    $(for i in $(seq 0 $((WORKERS - 1))); do echo "http://127.0.0.1:$((WORKER_PORT + i))/readyz"; done); then
  echo "[run_ingest] the stack did not get ready; last lines of its log:" >&2
  tail -n 40 "$DATA/up.log" >&2 || true
  exit 1
fi

# `up` wrote the admin key into the data dir before starting the api; the bench reads it there.
RESULT_FILE="$DATA/ingest.out"
"$PY" "$ROOT/bench/ingest.py" --url "http://127.0.0.1:$API_PORT" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
  | tee "$RESULT_FILE"
LAST=$(tail -n 1 "$RESULT_FILE")
if [[ -n "$OUT" ]]; then
  printf '%s\n' "$LAST" >"$OUT"
fi
