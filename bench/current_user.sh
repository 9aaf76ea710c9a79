#!/usr/bin/env bash
# Throughput of an authenticated `GET /api/v1/users/current` (JWT verify + Redis session check +
# MariaDB read) on a release build, with wrk at 64 connections.
#
#   bench/current_user.sh [seconds]
#
# Needs: MariaDB at 127.0.0.1:3306 (root, no password), Redis at 127.0.0.1:6379, wrk
# (`apt-get install wrk`). Creates the database `dtu_bench` and drops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20}"
PORT="${PORT:-18080}"
DB=dtu_bench
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/dt-users"

mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
KEYFILE=$(mktemp)
openssl genpkey -algorithm ed25519 -out "$KEYFILE" 2>/dev/null
export DT_USERS_DATABASE_URL="mysql://root@127.0.0.1:3306/$DB"
export DT_USERS_REDIS_URL="redis://127.0.0.1:6379"
export DT_USERS_REDIS_KEY_PREFIX="dtu-bench"
export DT_USERS_SIGNING_KEYS_FILE="$KEYFILE"
export DT_USERS_MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
export RUST_LOG=warn
"$BIN" migrate
"$BIN" serve --port "$PORT" &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB"
  redis-cli --scan --pattern 'dtu-bench:*' | xargs -r redis-cli del >/dev/null
  rm -f "$KEYFILE"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -sf "localhost:$PORT/health/ready" >/dev/null && break; sleep 0.2; done

BASE="http://127.0.0.1:$PORT"
curl -sf "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","username":"bench","password":"benchmark passphrase"}' >/dev/null
TOKEN=$(curl -sf "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"benchmark passphrase"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

echo "wrk: GET /api/v1/users/current, 64 connections, 2 threads, ${DURATION}s"
wrk -t2 -c64 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/users/current"
echo "resident memory of the server after the run: $(ps -o rss= -p "$SERVER") KiB"
