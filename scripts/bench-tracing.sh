#!/usr/bin/env bash
# Cost of tracing on the produce path, in one run: `strata bench produce`
# against a broker with tracing off and against one exporting to a local
# OTLP sink, ROUNDS times. Every round gets fresh brokers and data
# directories, so the two sides differ only in tracing. Prints each pair, the
# medians and ratios, and the disk's O_DSYNC write rate measured in the same
# run.
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
. "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
DURATION=${2:-5s}
RATIO=${3:-0.01}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-tracing.XXXXXX")
SINK_PID=""
BROKER_PID=""
cleanup() {
  for p in $BROKER_PID $SINK_PID; do kill "$p" 2>/dev/null || true; done  # unquoted: a list
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


SINK=$(free_port)
"$BIN/examples/otlp_sink" "127.0.0.1:$SINK" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
OTEL=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$RATIO")
[ "${CONTROL:-0}" = 1 ] && OTEL=(OTEL_SDK_DISABLED=true)
BROKER_OTEL=("${OTEL[@]}")
[ "${BROKER_TRACED:-1}" = 0 ] && BROKER_OTEL=(OTEL_SDK_DISABLED=true)

dsync_rate "$WORK"

start_broker() { # traced(0/1) dir -> "pid grpc-port"
  local g h
  g=$(free_port); h=$(free_port)
  if [ "$1" = 1 ]; then
    env "${BROKER_OTEL[@]}" "$BIN/strata-broker" --data-dir "$2" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  else
    "$BIN/strata-broker" --data-dir "$2" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  fi
  local pid=$!
  wait_ready "127.0.0.1:$h"
  echo "$pid $g"
}

bench() { # traced(0/1) port out-file
  if [ "$1" = 1 ]; then
    env "${OTEL[@]}" "$BIN/strata" --server "http://127.0.0.1:$2" bench produce --size 1024 --duration "$DURATION" --json >"$3"
  else
    "$BIN/strata" --server "http://127.0.0.1:$2" bench produce --size 1024 --duration "$DURATION" --json >"$3"
  fi
}


# MODE=concurrent (default): each round runs an untraced and a traced pair
# (broker + bench) at the same time, so both see the same machine: the
# ratio is the traced pair's share of the throughput. MODE=alternate runs
# them one after the other instead (absolute figures; noisier ratio on a
# shared machine).
MODE=${MODE:-concurrent}
offs=(); ons=()
for r in $(seq 1 "$ROUNDS"); do
  read -r pa ga < <(start_broker 0 "$WORK/off-$r")
  read -r pb gb < <(start_broker 1 "$WORK/on-$r")
  BROKER_PID="$pa $pb"
  if [ "$MODE" = concurrent ]; then
    bench 0 "$ga" "$WORK/off.json" & b1=$!
    bench 1 "$gb" "$WORK/on.json" & b2=$!
    wait $b1 $b2
  elif [ $((r % 2)) = 1 ]; then
    bench 0 "$ga" "$WORK/off.json"; bench 1 "$gb" "$WORK/on.json"
  else
    bench 1 "$gb" "$WORK/on.json"; bench 0 "$ga" "$WORK/off.json"
  fi
  kill $pa $pb; wait $pa $pb 2>/dev/null || true; BROKER_PID=""
  rm -rf "$WORK/off-$r" "$WORK/on-$r"
  a=$(rate "$WORK/off.json"); b=$(rate "$WORK/on.json")
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
