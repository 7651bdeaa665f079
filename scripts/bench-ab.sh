#!/usr/bin/env bash
# Standalone broker, build A against build B on the same machine, in
# alternating rounds so both see the same machine (release builds, fsync
# durability, 1 KiB messages, 2 producers, 6 partitions; then a consume of
# the filled topic; then `bench queue`: 1 KiB messages sent and received
# with acks). Each build is benchmarked with its own `strata` CLI, or
# both with the CLI in the directory $CLI (to compare brokers alone).
# The disk's O_DSYNC write rate is measured in the same run.
#
# Typical use: B is this checkout, A an older commit built elsewhere:
#   git worktree add /tmp/base <commit> && cp -a target/release /tmp/base-target/ (optional, saves time)
#   (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release --bins)
#   cargo build --release --bins
#   A=/tmp/base-target/release scripts/bench-ab.sh [DURATION] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
ROUNDS=${2:-3}
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
A=${A:?set A to the release directory of the build to compare against}
bench_workdir ab


run() { # bin-dir name -> json files
  local bin=$1 name=$2 g h
  g=$(free_port); h=$(free_port)
  "$bin/strata-broker" --data-dir "$WORK/data" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  PIDS=($!)
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$h/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
  "${CLI:-$bin}/strata" --server "http://127.0.0.1:$g" bench produce --size 1024 --producers 2 --partitions 6 --duration "$DURATION" --json >"$WORK/$name.json"
  "${CLI:-$bin}/strata" --server "http://127.0.0.1:$g" bench consume --size 1024 --partitions 6 --count 300000 --json >"$WORK/$name-consume.json"
  "${CLI:-$bin}/strata" --server "http://127.0.0.1:$g" bench queue --size 1024 --duration "$DURATION" --json >"$WORK/$name-queue.json"
  stop_all
  rm -rf "$WORK/data"
}

echo "A: $A"
echo "B: $B"
echo "CLI: ${CLI:-the one of each build}"
dsync_rate "$WORK"
printf '%-6s %-8s %14s %10s %14s %10s %7s\n' round bench A p99_ms B p99_ms B/A
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which build goes first, so neither always runs on a warmer machine.
  if [ $((r % 2)) -eq 1 ]; then run "$A" "a$r"; run "$B" "b$r"; else run "$B" "b$r"; run "$A" "a$r"; fi
  pair_rows "$r" "a$r" "b$r"
  row "$r" queue "$WORK/a$r-queue.json" "$WORK/b$r-queue.json"
done
