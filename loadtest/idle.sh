#!/usr/bin/env bash
# Memory per idle session through the gateway: starts a throwaway PKI, an upstream
# that accepts and holds connections, and a release-build gateway on loopback, then
# runs loadtest/idle_sessions.py. Usage: loadtest/idle.sh [SESSIONS] (default 10000).
# Everything it starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-10000}
work=$(mktemp -d /tmp/pgtunnel-idle-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -q
bin=target/release/pgtunnel
$bin ca init --dir "$work/ca" >/dev/null
$bin ca server --dir "$work/ca" --dns localhost --ip 127.0.0.1 --out "$work/server" >/dev/null
$bin ca issue --dir "$work/ca" --user alice --group dba --ttl 1h --out "$work/alice" >/dev/null

# Each session holds a client and an upstream descriptor in the gateway. Raising the
# hard limit needs CAP_SYS_RESOURCE, which even root may lack in a container (these
# machines: hard limit 20,000, so at most 9,968 sessions); without it the hard limit
# caps the session count.
nofile=$((sessions * 2 + 64))
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $nofile -gt $hard ]] && ! ulimit -Hn "$nofile" 2>/dev/null; then
    echo "descriptor hard limit $hard allows $(( (hard - 64) / 2 )) sessions, not $sessions" >&2
    exit 1
fi
upstream_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
gateway_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prlimit --nofile="$nofile" python3 - "$upstream_port" <<'PY' &
import asyncio, sys
held = []
async def hold(reader, writer):
    held.append(writer)
    await reader.read()  # returns at end of stream
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await asyncio.sleep(600)
asyncio.run(main())
PY
pids+=($!)

cat > "$work/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:$gateway_port"
cert = "server.crt"
key = "server.key"
client_ca = "ca/ca.crt"
audit_log = "audit.jsonl"
max_sessions = $((sessions + 100))
max_handshakes = 4096
audit_fsync = "never"

[[service]]
name = "main"
upstream = "127.0.0.1:$upstream_port"
allow_users = ["alice"]
TOML
prlimit --nofile="$nofile" $bin gateway --config "$work/gateway.toml" 2>"$work/gateway.log" &
gateway_pid=$!
pids+=("$gateway_pid")
for _ in $(seq 100); do
    grep -q "gateway listening" "$work/gateway.log" && break
    sleep 0.1
done

echo "kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
prlimit --nofile="$nofile" python3 loadtest/idle_sessions.py --gateway "127.0.0.1:$gateway_port" \
    --pid "$gateway_pid" --cert "$work/alice.crt" --key "$work/alice.key" --ca "$work/ca/ca.crt" \
    --sessions "$sessions"
