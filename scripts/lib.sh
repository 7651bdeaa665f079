# Shared helpers of the bench scripts: `. "$(dirname "$0")/lib.sh"`.

# The release binaries (`cargo build --release --bins`), unless BIN names
# another folder.
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release}

# A free loopback port (the kernel picks it).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until the broker whose HTTP port is at HOST:PORT answers /readyz 200
# (up to 30 s), else exits.
wait_ready() {
  for _ in $(seq 1 600); do curl -sf "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "broker at $1 not ready" >&2; exit 1
}

# Fields of a `strata bench ... --json` report: messages per second, p99 in ms.
rate() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["msgs_per_sec"]))' "$1"; }
p99() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("p99_ms","-"))' "$1"; }

# The disk's synchronous write rate (1 MiB O_DSYNC writes), the figure every
# bench reports beside its own: `dsync_rate DIR`.
dsync_rate() {
  dd if=/dev/zero of="$1/dd" bs=1M count=256 oflag=dsync 2>&1 | tail -1 | sed 's/^/dd 1 MiB O_DSYNC: /'
  rm -f "$1/dd"
}

# The bench's work directory ($WORK) and, on exit, the processes in PIDS
# killed and the directory removed: `bench_workdir NAME`.
PIDS=()
bench_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-$1.XXXXXX")
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
# Stops the processes in PIDS (SIGTERM, then waits for each).
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# One round's rows of a two-sided bench: `pair_rows ROUND A B` reads
# $WORK/A.json and $WORK/A-consume.json (and B's) and prints, for produce
# and consume, both rates and p99s and the ratio B/A.
pair_rows() {
  local kind f
  for kind in produce consume; do
    f=""; [ "$kind" = consume ] && f="-consume"
    row "$1" "$kind" "$WORK/$2$f.json" "$WORK/$3$f.json"
  done
}
# One row: `row ROUND KIND A.json B.json` — both rates and p99s, B/A.
row() {
  local a b
  a=$(rate "$3"); b=$(rate "$4")
  printf '%-6s %-8s %14s %10s %14s %10s %7s\n' "$1" "$2" "$a" "$(p99 "$3")" "$b" "$(p99 "$4")" \
    "$(python3 -c "print(f'{$b/$a:.3f}')")"
}

# Starts three brokers forming one cluster (data in $WORK/data0..2) and
# sets SERVERS to their gRPC URLs.
trio() {
  local g=() h=() peers="" i
  for i in 0 1 2; do g+=("$(free_port)"); h+=("$(free_port)"); done
  peers="127.0.0.1:${g[0]},127.0.0.1:${g[1]},127.0.0.1:${g[2]}"
  for i in 0 1 2; do
    "$BIN/strata-broker" --data-dir "$WORK/data$i" --listen "127.0.0.1:${g[$i]}" --http-listen "127.0.0.1:${h[$i]}" \
      --broker-id "$i" --advertised-address "127.0.0.1:${g[$i]}" --peers "$peers" --log-level warn >>"$WORK/broker.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 0 1 2; do wait_ready "127.0.0.1:${h[$i]}"; done
  SERVERS="http://127.0.0.1:${g[0]},http://127.0.0.1:${g[1]},http://127.0.0.1:${g[2]}"
}
