#!/usr/bin/env bash
# Standalone broker, build A against build B on the same machine, in
# alternating rounds so both see the same machine (release builds, fsync
# durability, 1 KiB messages, 2 producers, 6 partitions; then a consume of
# the filled topic). Each build is benchmarked with its own `strata` CLI.
# The disk's O_DSYNC write rate is measured in the same run.
#
# Typical use: B is this checkout, A an older commit built elsewhere:
#   git worktree add /tmp/base <commit> && cp -a target/release /tmp/base-target/ (optional, saves time)
#   (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release --bins)
#   cargo build --release --bins
#   A=/tmp/base-target/release scripts/bench-ab.sh [DURATION] [ROUNDS]
set -euo pipefail
DURATION=${1:-10s}
ROUNDS=${2:-3}
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
A=${A:?set A to the release directory of the build to compare against}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-ab.XXXXXX")
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rate() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["msgs_per_sec"]))' "$1"; }
p99() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("p99_ms","-"))' "$1"; }

run() { # bin-dir name -> json files
  local bin=$1 name=$2 g h
  g=$(free_port); h=$(free_port)
  "$bin/strata-broker" --data-dir "$WORK/data" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn >>"$WORK/broker.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$h/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
  "$bin/strata" --server "http://127.0.0.1:$g" bench produce --size 1024 --producers 2 --partitions 6 --duration "$DURATION" --json >"$WORK/$name.json"
  "$bin/strata" --server "http://127.0.0.1:$g" bench consume --size 1024 --partitions 6 --count 300000 --json >"$WORK/$name-consume.json"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  rm -rf "$WORK/data"
}

echo "A: $A"
echo "B: $B"
dd if=/dev/zero of="$WORK/dd" bs=1M count=256 oflag=dsync 2>&1 | tail -1 | sed 's/^/dd 1 MiB O_DSYNC: /'
rm -f "$WORK/dd"
printf '%-6s %-8s %12s %8s %12s %8s %7s\n' round bench A p99_ms B p99_ms B/A
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which build goes first, so neither always runs on a warmer machine.
  if [ $((r % 2)) -eq 1 ]; then run "$A" "a$r"; run "$B" "b$r"; else run "$B" "b$r"; run "$A" "a$r"; fi
  for kind in produce consume; do
    f=""; [ "$kind" = consume ] && f="-consume"
    a=$(rate "$WORK/a$r$f.json"); b=$(rate "$WORK/b$r$f.json")
    printf '%-6s %-8s %12s %8s %12s %8s %7s\n' "$r" "$kind" "$a" "$(p99 "$WORK/a$r$f.json")" "$b" "$(p99 "$WORK/b$r$f.json")" \
      "$(python3 -c "print(f'{$b/$a:.3f}')")"
  done
done
