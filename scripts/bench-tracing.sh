#!/usr/bin/env bash
# Cost of tracing on the produce path, in one run: `strata bench produce`
# against a broker with tracing off and against one exporting to a local
# OTLP sink, in alternating order, ROUNDS times each. Every run gets a fresh
# broker and data directory, so the two sides differ only in tracing.
# Prints each pair, the medians and ratios, and the disk's O_DSYNC write rate
# measured in the same run.
#
#   cargo build --release --bins --example otlp_sink
#   scripts/bench-tracing.sh [ROUNDS] [DURATION] [SAMPLER_ARG]
#
# Tracing "on" means OTLP export to the sink with
# OTEL_TRACES_SAMPLER=parentbased_traceidratio and the given ratio (default
# 0.01), in both the broker and the producing CLI.
#   CONTROL=1        the "on" side untraced too (an A/A run: the noise floor)
#   BROKER_TRACED=0  only the producing CLI traces (the client's share)
set -euo pipefail
ROUNDS=${1:-5}
DURATION=${2:-5s}
RATIO=${3:-0.01}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-tracing.XXXXXX")
SINK_PID=""
BROKER_PID=""
cleanup() {
  for p in $BROKER_PID $SINK_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 1 400); do curl -sf "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "broker at $1 not ready" >&2; exit 1
}

SINK=$(free_port)
"$BIN/examples/otlp_sink" "127.0.0.1:$SINK" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
OTEL=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$RATIO")
[ "${CONTROL:-0}" = 1 ] && OTEL=(OTEL_SDK_DISABLED=true)
BROKER_OTEL=("${OTEL[@]}")
[ "${BROKER_TRACED:-1}" = 0 ] && BROKER_OTEL=(OTEL_SDK_DISABLED=true)

dd if=/dev/zero of="$WORK/dd" bs=1M count=256 oflag=dsync 2>&1 | tail -1 | sed 's/^/dd 1 MiB O_DSYNC: /'
rm -f "$WORK/dd"

run() { # traced(0/1) -> msgs/s; a fresh broker each time
  local g h dir out
  g=$(free_port); h=$(free_port); dir="$WORK/data-$RANDOM$RANDOM"
  if [ "$1" = 1 ]; then
    env "${BROKER_OTEL[@]}" "$BIN/strata-broker" --data-dir "$dir" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  else
    "$BIN/strata-broker" --data-dir "$dir" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  fi
  BROKER_PID=$!
  wait_ready "127.0.0.1:$h"
  if [ "$1" = 1 ]; then
    out=$(env "${OTEL[@]}" "$BIN/strata" --server "http://127.0.0.1:$g" bench produce --size 1024 --duration "$DURATION" --json)
  else
    out=$("$BIN/strata" --server "http://127.0.0.1:$g" bench produce --size 1024 --duration "$DURATION" --json)
  fi
  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""
  rm -rf "$dir"
  python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["msgs_per_sec"]))' "$out"
}

offs=(); ons=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(run 0); b=$(run 1); else b=$(run 1); a=$(run 0); fi
  offs+=("$a"); ons+=("$b")
  echo "round $r: off $a msgs/s, on $b msgs/s, ratio $(python3 -c "print(f'{$b/$a:.3f}')")"
done
python3 - "${offs[*]}" "${ons[*]}" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]; on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"median off {mo:.0f} msgs/s, on {mn:.0f} msgs/s: ratio of medians {mn/mo:.3f}, "
      f"ratio of means {statistics.mean(on)/statistics.mean(off):.3f}, "
      f"median of pair ratios {statistics.median(b/a for a, b in zip(off, on)):.3f}")
PY
sleep 1
echo "sink: $(tail -1 "$WORK/sink.log")"
