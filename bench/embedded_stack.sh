# Sourced by bench/run_*.sh: an embedded stack (durable storage, as `make up` runs it; set
# STREAMBILL_BROKER_STORAGE=memory for the A/B) on free ports in a temporary data
# dir, started, awaited, and stopped on exit (also on failure or Ctrl-C).
#
# The caller sets ROOT, PY, WORKERS, TAG (log prefix) and DATA_PREFIX, then calls
# start_embedded_stack; afterwards DATA, API_PORT, BROKER_PORT, WORKER_PORT and ML_PORT are set.
# KEEP=1 keeps the data dir. READY_TIMEOUT_S and STOP_TIMEOUT_S bound the waits.

READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}
UP_PID=""

stop_stack() {
  [[ -n "$UP_PID" ]] || return 0
  if kill -0 "$UP_PID" 2>/dev/null; then
    echo "[$TAG] stopping the stack (pid $UP_PID)" >&2
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 "$STOP_TIMEOUT_S"); do
      kill -0 "$UP_PID" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$UP_PID" 2>/dev/null; then
      echo "[$TAG] stack did not stop in ${STOP_TIMEOUT_S}s; killing its group" >&2
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
    echo "[$TAG] data dir and stack log kept in $DATA" >&2
  fi
  exit $rc
}

start_embedded_stack() {
  DATA=$(mktemp -d -t "$DATA_PREFIX-XXXXXX")
  # Free ports: broker, api, and WORKERS consecutive ones for the workers (port + i).
  read -r BROKER_PORT API_PORT WORKER_PORT ML_PORT < <("$PY" "$ROOT/bench/free_ports.py" "$WORKERS")
  export STREAMBILL_DATA_DIR="$DATA"
  export STREAMBILL_BROKER_STORAGE=${STREAMBILL_BROKER_STORAGE:-durable}
  export STREAMBILL_DEMO=0
  export STREAMBILL_BROKER_PORT="$BROKER_PORT"
  export STREAMBILL_API_PORT="$API_PORT"
  export STREAMBILL_WORKER_PORT="$WORKER_PORT"
  export STREAMBILL_ML_PORT="$ML_PORT"
  unset STREAMBILL_KAFKA_BOOTSTRAP STREAMBILL_ADMIN_API_KEY
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  echo "[$TAG] up: $WORKERS worker(s), broker :$BROKER_PORT, api :$API_PORT," \
    "workers :$WORKER_PORT+, data $DATA" >&2
  # setsid: the stack gets its own process group, so a last-resort kill reaches its children.
  setsid "$PY" -m streambill.cli up --workers "$WORKERS" >"$DATA/up.log" 2>&1 &
  UP_PID=$!

  if ! "$PY" "$ROOT/bench/wait_ready.py" --pid "$UP_PID" --timeout "$READY_TIMEOUT_S" \
      "http://127.0.0.1:$API_PORT/readyz" \
      $(for i in $(seq 0 $((WORKERS - 1))); do echo "http://127.0.0.1:$((WORKER_PORT + i))/readyz"; done); then
    echo "[$TAG] the stack did not get ready; last lines of its log:" >&2
    tail -n 40 "$DATA/up.log" >&2 || true
    exit 1
  fi
}
