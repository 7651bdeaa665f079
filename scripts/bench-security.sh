#!/usr/bin/env bash
# Produce throughput with TLS + bearer-token authentication against
# plaintext anonymous access, on fresh standalone brokers in alternating
# rounds (release build, fsync durability, 1 KiB messages, 2 producers),
# with the disk's O_DSYNC write rate measured in the same run. The TLS
# certificate is a throwaway CA-signed one made with openssl.
#
#   cargo build --release --bins
#   scripts/bench-security.sh [DURATION] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
ROUNDS=${2:-3}
bench_workdir security


# A CA and a server certificate for 127.0.0.1.
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
    -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout tls.key -out tls.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >ext.cnf
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out tls.crt 2>/dev/null
)
# An admin token in the broker's format (strata_ + 43 base64url characters).
python3 -c 'import base64,os; print("strata_"+base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))' >"$WORK/admin.token"

start() { # mode -> SERVER, CLIENT_ARGS
  local g h
  g=$(free_port); h=$(free_port)
  rm -rf "$WORK/data"
  if [ "$1" = secure ]; then
    "$BIN/strata-broker" --data-dir "$WORK/data" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn \
      --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" --auth required --admin-token-file "$WORK/admin.token" \
      >>"$WORK/broker.log" 2>&1 &
    PIDS=($!)
    SERVER="https://127.0.0.1:$g"
    CLIENT_ARGS=(--tls-ca "$WORK/ca.crt" --token "$(cat "$WORK/admin.token")")
    for _ in $(seq 1 400); do curl -sfk "https://127.0.0.1:$h/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  else
    "$BIN/strata-broker" --data-dir "$WORK/data" --listen "127.0.0.1:$g" --http-listen "127.0.0.1:$h" --log-level warn \
      >>"$WORK/broker.log" 2>&1 &
    PIDS=($!)
    SERVER="http://127.0.0.1:$g"
    CLIENT_ARGS=()
    for _ in $(seq 1 400); do curl -sf "http://127.0.0.1:$h/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done
  fi
  echo "broker ($1) not ready; see $WORK/broker.log" >&2
  exit 1
}
bench() { # mode
  start "$1"
  "$BIN/strata" --server "$SERVER" "${CLIENT_ARGS[@]}" bench produce --size 1024 --producers 2 --duration "$DURATION" --json \
    >"$WORK/$1-$r.json"
  stop_all
}

dsync_rate "$WORK"
printf '%-6s %16s %8s %16s %8s %7s\n' round plain_anonymous p99_ms tls_and_token p99_ms ratio
for r in $(seq 1 "$ROUNDS"); do
  bench plain
  bench secure
  p=$(rate "$WORK/plain-$r.json"); s=$(rate "$WORK/secure-$r.json")
  printf '%-6s %16s %8s %16s %8s %7s\n' "$r" "$p" "$(p99 "$WORK/plain-$r.json")" "$s" "$(p99 "$WORK/secure-$r.json")" \
    "$(python3 -c "print(f'{$s/$p:.3f}')")"
done
