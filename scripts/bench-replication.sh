#!/usr/bin/env bash
# Replicated produce: on one three-broker cluster, topics of replication
# factor 3 (acknowledged once a majority of the replicas has each batch
# durable) against replication factor 1, in alternating rounds so both see
# the same machine (release build, fsync durability, 1 KiB messages, 2
# producers, 6 partitions). All three brokers share this machine's cores
# and disk; the disk's O_DSYNC write rate is measured in the same run.
#
#   cargo build --release --bins
#   scripts/bench-replication.sh [DURATION] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
ROUNDS=${2:-3}
bench_workdir replication

bench() { # name replication-factor -> json
  "$BIN/strata" --server "$SERVERS" bench produce --size 1024 --producers 2 --partitions 6 --duration "$DURATION" \
    --replication-factor "$2" --json >"$WORK/$1.json"
}

dsync_rate "$WORK"
trio
printf '%-6s %-8s %14s %10s %14s %10s %7s\n' round bench rf1 p99_ms rf3 p99_ms ratio
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which goes first, so neither always runs on a fuller disk.
  if [ $((r % 2)) -eq 1 ]; then bench "one$r" 1; bench "three$r" 3; else bench "three$r" 3; bench "one$r" 1; fi
  row "$r" produce "$WORK/one$r.json" "$WORK/three$r.json"
done
