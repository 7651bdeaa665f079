#!/usr/bin/env bash
# A three-broker cluster against a standalone broker on the same machine
# (release build, fsync durability, 1 KiB messages, 2 producers, 6
# partitions), in alternating rounds so both see the same machine; the
# disk's O_DSYNC write rate is measured in the same run. The cluster's
# producers bootstrap from all three brokers and send each partition's
# batches to its owner (the topic is unreplicated: one copy each, on its
# owner; scripts/bench-replication.sh compares replication factors).
#
#   cargo build --release --bins
#   scripts/bench-cluster.sh [DURATION] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
ROUNDS=${2:-3}
bench_workdir cluster

stop_brokers() {
  stop_all
  rm -rf "$WORK"/data*
}

standalone() { # -> servers
  local g h
  g=$(free_port); h=$(free_port)
  "$BIN/strata-broker" --data-dir "$WORK/data" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  PIDS+=($!)
  wait_ready "127.0.0.1:$h"
  SERVERS="http://127.0.0.1:$g"
}
bench() { # name -> json files (produce, then consume of a filled topic)
  "$BIN/strata" --server "$SERVERS" bench produce --size 1024 --producers 2 --partitions 6 --duration "$DURATION" --json >"$WORK/$1.json"
  "$BIN/strata" --server "$SERVERS" bench consume --size 1024 --partitions 6 --count 300000 --json >"$WORK/$1-consume.json"
}

dsync_rate "$WORK"
printf '%-6s %-8s %14s %10s %14s %10s %7s\n' round bench standalone p99_ms cluster_of_3 p99_ms ratio
for r in $(seq 1 "$ROUNDS"); do
  standalone; bench "s$r"; stop_brokers
  trio; bench "c$r"; stop_brokers
  pair_rows "$r" "s$r" "c$r"
done
