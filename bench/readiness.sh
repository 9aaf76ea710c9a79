#!/usr/bin/env bash
# What `/health/ready` costs the dependencies under load: requests/s with wrk at 64 connections
# (with the health token, so no per-address limit applies), and the MariaDB statements and Redis
# commands the server issued meanwhile.
#
#   bench/readiness.sh [seconds]
#
# Needs: MariaDB at 127.0.0.1:3306 (root, no password), Redis at 127.0.0.1:6379, wrk. Creates the
# database `dtu_bench_ready` and drops it afterwards. `BIN=path` measures another build (an older
# release, say) with the same load.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15}"
PORT="${PORT:-18081}"
DB=dtu_bench_ready
TOKEN="a readiness token for the benchmark"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"

if [ -z "${BIN:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
  BIN="$CARGO_TARGET_DIR/release/dt-users"
fi

mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
KEYFILE=$(mktemp)
openssl genpkey -algorithm ed25519 -out "$KEYFILE" 2>/dev/null
export DT_USERS_DATABASE_URL="mysql://root@127.0.0.1:3306/$DB"
export DT_USERS_REDIS_URL="redis://127.0.0.1:6379"
export DT_USERS_REDIS_KEY_PREFIX="dtu-bench-ready"
export DT_USERS_SIGNING_KEYS_FILE="$KEYFILE"
export DT_USERS_MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
export DT_USERS_HEALTH_TOKEN="$TOKEN"
export DT_USERS_RUN_BACKGROUND_IN_SERVE=false
export RUST_LOG=warn
"$BIN" migrate
"$BIN" serve --port "$PORT" &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB"
  redis-cli --scan --pattern 'dtu-bench-ready:*' | xargs -r redis-cli del >/dev/null
  rm -f "$KEYFILE"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -sf -H "Authorization: Bearer $TOKEN" "localhost:$PORT/health/ready" >/dev/null && break; sleep 0.2; done

questions() { mariadb -uroot -h127.0.0.1 -N -e "SHOW GLOBAL STATUS LIKE 'Questions'" | awk '{print $2}'; }
commands() { redis-cli info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }
q0=$(questions); c0=$(commands)
echo "wrk: GET /health/ready with the health token, 64 connections, 2 threads, ${DURATION}s"
OUT=$(wrk -t2 -c64 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/health/ready")
q1=$(questions); c1=$(commands)
echo "$OUT"
REQUESTS=$(echo "$OUT" | awk '/requests in/ {print $1}')
echo "MariaDB statements during the run (whole server): $((q1 - q0)); per request: $(python3 -c "print(round(($q1-$q0)/max($REQUESTS,1), 4))")"
echo "Redis commands during the run (whole server): $((c1 - c0)); per request: $(python3 -c "print(round(($c1-$c0)/max($REQUESTS,1), 4))")"
