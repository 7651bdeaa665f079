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
  local kind f a b
  for kind in produce consume; do
    f=""; [ "$kind" = consume ] && f="-consume"
    a=$(rate "$WORK/$2$f.json"); b=$(rate "$WORK/$3$f.json")
    printf '%-6s %-8s %14s %10s %14s %10s %7s\n' "$1" "$kind" "$a" "$(p99 "$WORK/$2$f.json")" "$b" "$(p99 "$WORK/$3$f.json")" \
      "$(python3 -c "print(f'{$b/$a:.3f}')")"
  done
}
