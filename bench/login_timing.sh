#!/usr/bin/env bash
# Does a sign-in with an unknown email take as long as one with a wrong password? Medians of
# TRIES attempts each (interleaved), against the embedded default (release build, default
# argon2 parameters, rate limits off so that every attempt reaches the password check).
# Then again after a change of parameters (argon2 memory doubled, the service restarted on the
# same data): the known account keeps its old hash until it signs in, so the unknown-email
# check must keep costing what the old hash costs.
#
#   bench/login_timing.sh [tries]      # default 200
set -euo pipefail
cd "$(dirname "$0")/.."
TRIES="${1:-200}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q --bin dt-users
BIN="$CARGO_TARGET_DIR/release/dt-users"
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
serve() { # serve [extra environment...]: starts the service on the data in $DIR
  (cd "$DIR" && exec env DT_USERS_RATE_LIMIT_ENABLED=false RUST_LOG=warn "$@" "$BIN" serve --port "$PORT") &
  SERVER=$!
  for _ in $(seq 100); do curl -sf "localhost:$PORT/health/ready" >/dev/null && break; sleep 0.1; done
}
SERVER=
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
measure() { # measure LABEL
python3 - "$PORT" "$TRIES" "$1" <<'PY'
import json, statistics, sys, time, urllib.request, urllib.error
port, tries, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}/api/v1/auth"
def call(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    return (time.perf_counter() - start) * 1000, status, payload
call("/register", {"email": "known@example.com", "username": "known", "password": "correct horse battery staple"})
unknown, wrong, bodies = [], [], set()
for i in range(tries):
    t, s, p = call("/login", {"email": f"unknown{i}@example.com", "password": "not the password"})
    unknown.append(t); bodies.add((s, p))
    t, s, p = call("/login", {"email": "known@example.com", "password": "not the password"})
    wrong.append(t); bodies.add((s, p))
print(f"[{label}]")
print(f"unknown email:  median {statistics.median(unknown):.2f} ms (p10 {sorted(unknown)[tries//10]:.2f}, p90 {sorted(unknown)[tries*9//10]:.2f})")
print(f"wrong password: median {statistics.median(wrong):.2f} ms (p10 {sorted(wrong)[tries//10]:.2f}, p90 {sorted(wrong)[tries*9//10]:.2f})")
print(f"distinct (status, body) pairs: {len(bodies)}")
PY
}
serve
measure "default parameters"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
serve DT_USERS_ARGON2_MEMORY_KIB=38912
measure "after doubling argon2 memory (the known account keeps its old hash)"
