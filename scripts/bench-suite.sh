#!/usr/bin/env bash
# The headline benchmarks in one run, each against a fresh standalone broker
# (release build, fsync durability), with the disk's O_DSYNC write rate
# measured in the same run:
#   produce (2 producers) · consume · queue per-message send+receive+ack
#   (2 producers, 2 consumers) · topic and queue at a fixed 5,000 msgs/s ·
#   group consume vs produce (2 producers, 2 group members). All 1 KiB.
#
#   cargo build --release --bins
#   scripts/bench-suite.sh [DURATION]
#
# Prints one line per benchmark and writes the JSON reports to $OUT
# (default: a temporary folder, removed at the end).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-suite.XXXXXX")
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
BROKER_PID=""
cleanup() {
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK/data" "$WORK/dd"
  [ "$OUT" = "$WORK/out" ] && rm -rf "$WORK"
  return 0
}
trap cleanup EXIT

start_broker() {
  rm -rf "$WORK/data"
  local h
  PORT=$(free_port); h=$(free_port)
  "$BIN/strata-broker" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  BROKER_PID=$!
  wait_ready "127.0.0.1:$h"
}
stop_broker() { kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""; }
strata() { "$BIN/strata" --server "http://127.0.0.1:$PORT" "$@"; }
show() { # name json-file: one line with the figures the report has
  python3 - "$1" "$2" <<'PY'
import json, sys
name, r = sys.argv[1], json.load(open(sys.argv[2]))
def fmt(k, v):
    if isinstance(v, float): return f"{k}={v:.2f}"
    return f"{k}={v}"
flat = {}
def walk(p, v):
    if isinstance(v, dict):
        for k, x in v.items(): walk(f"{p}{k}." if p or True else k, x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        flat[p.rstrip('.')] = v
walk("", r)
keep = [k for k in flat if any(s in k for s in ("msgs_per_sec", "p50", "p99", "mib_per_sec", "drain", "messages"))]
print(f"{name:<28} " + " ".join(fmt(k, flat[k]) for k in keep))
PY
}

dsync_rate "$WORK"

start_broker
strata bench produce --size 1024 --producers 2 --duration "$DURATION" --json >"$OUT/produce.json"
show "produce (2 producers)" "$OUT/produce.json"
strata bench consume --size 1024 --count 1000000 --json >"$OUT/consume.json"
show "consume" "$OUT/consume.json"
stop_broker

start_broker
strata bench queue --size 1024 --producers 2 --consumers 2 --per-message --duration "$DURATION" --json >"$OUT/queue.json"
show "queue per-message" "$OUT/queue.json"
stop_broker

start_broker
strata bench produce --size 1024 --rate 5000 --duration "$DURATION" --json >"$OUT/produce-rate.json"
show "produce at 5000/s" "$OUT/produce-rate.json"
strata bench queue --size 1024 --per-message --rate 5000 --duration "$DURATION" --json >"$OUT/queue-rate.json"
show "queue at 5000/s" "$OUT/queue-rate.json"
stop_broker

start_broker
strata bench group --size 1024 --producers 2 --members 2 --duration "$DURATION" --json >"$OUT/group.json"
show "group (2 producers, 2 members)" "$OUT/group.json"
stop_broker
