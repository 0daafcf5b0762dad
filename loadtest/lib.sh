# Shared by loadtest/pgbench.sh and loadtest/peers.sh (sourced, not run).
#
# Builds a throwaway world on loopback: a PKI made with `pgtunnel ca`, a PostgreSQL
# cluster configured with exactly what `pgtunnel pg-config` prints (login certificate
# required, method "cert"), pgbench tables, and pgtunnel's gateway and agent. Every
# process started here is recorded by PID and stopped on exit; every wait is bounded.
# Linux only (reads /proc/net/tcp); PostgreSQL refuses to run as root, so as root the
# cluster runs as the "postgres" user.

set -euo pipefail

LT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT_PIDS=()
LT_WORK=""
LT_PG_STARTED=""

lt_die() {
    echo "loadtest: $*" >&2
    exit 1
}

lt_cleanup() {
    local pid
    for pid in "${LT_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${LT_PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n $LT_PG_STARTED ]]; then
        lt_as_pg "$LT_PGBIN/pg_ctl" -D "$LT_WORK/pgdata" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if [[ -n $LT_WORK && -z ${KEEP_WORK:-} ]]; then
        rm -rf "$LT_WORK"
    fi
}

# lt_init: temp folder, binaries, cleanup trap.
lt_init() {
    LT_WORK=$(mktemp -d /tmp/pgtunnel-loadtest-XXXXXX)
    chmod 755 "$LT_WORK"
    trap lt_cleanup EXIT
    trap 'exit 130' INT TERM
    LT_PGBIN=${PGTUNNEL_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
    [[ -x $LT_PGBIN/postgres && -x $LT_PGBIN/pgbench ]] ||
        lt_die "PostgreSQL with pgbench not found (apt-get install postgresql postgresql-contrib)"
    PGTUNNEL=${PGTUNNEL:-$LT_ROOT/target/release/pgtunnel}
    if [[ ! -x $PGTUNNEL ]]; then
        echo "loadtest: building pgtunnel (release)" >&2
        (cd "$LT_ROOT" && cargo build --release --quiet)
    fi
}

# Runs a command as the PostgreSQL OS user when we are root.
lt_as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A free TCP port on 127.0.0.1 (bound and released; collisions are retried by callers
# failing loudly rather than silently).
lt_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# lt_wait_listen PORT WHAT: until something listens on 127.0.0.1:PORT (20 s at most).
lt_wait_listen() {
    local hex
    hex=$(printf ':%04X' "$1")
    for _ in $(seq 200); do
        if awk -v p="$hex" 'NR > 1 && $2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' \
            /proc/net/tcp; then
            return 0
        fi
        sleep 0.1
    done
    lt_die "$2 did not listen on port $1 within 20 s"
}

# lt_spawn NAME LOG CMD...: start in the background, remember the PID.
lt_spawn() {
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    LT_PIDS+=("$!")
    eval "LT_PID_${name}=$!"
}

# lt_pki: CA, server certificate (localhost, 127.0.0.1), login certificate "bench",
# a login certificate from a foreign CA and an expired one (for refusal checks).
lt_pki() {
    local d=$LT_WORK
    "$PGTUNNEL" ca init --dir "$d/ca" >/dev/null
    "$PGTUNNEL" ca server --dir "$d/ca" --dns localhost --ip 127.0.0.1 --out "$d/server" >/dev/null
    "$PGTUNNEL" ca issue --dir "$d/ca" --user bench --ttl 8h --out "$d/bench" >/dev/null
    "$PGTUNNEL" ca init --dir "$d/foreign-ca" >/dev/null
    "$PGTUNNEL" ca issue --dir "$d/foreign-ca" --user bench --ttl 8h --out "$d/foreign" >/dev/null
    LT_CA=$d/ca/ca.crt
}

# lt_cluster: initdb, the settings pg-config prints, start, role bench, pgbench tables.
lt_cluster() {
    local d=$LT_WORK/pgdata conf
    mkdir -p "$LT_WORK/pgsock" "$LT_WORK/pglog"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres "$LT_WORK/pgsock" "$LT_WORK/pglog"
        install -d -o postgres -m 700 "$d"
    else
        install -d -m 700 "$d"
    fi
    lt_as_pg "$LT_PGBIN/initdb" -D "$d" --username postgres --auth=trust --no-sync \
        --encoding UTF8 --locale C >"$LT_WORK/initdb.log" 2>&1 ||
        lt_die "initdb failed: $(tail -5 "$LT_WORK/initdb.log")"
    for f in server.crt server.key; do
        cp "$LT_WORK/$f" "$d/$f"
    done
    cp "$LT_CA" "$d/root.crt"
    [[ $(id -u) -eq 0 ]] && chown postgres "$d/server.crt" "$d/server.key" "$d/root.crt"
    chmod 600 "$d/server.key"
    conf=$("$PGTUNNEL" pg-config --ca "$d/root.crt" --cert "$d/server.crt" --key "$d/server.key")
    # postgresql.conf lines and the "cert" pg_hba lines, exactly as pg-config prints them.
    awk '/^# ---- postgresql.conf/{s=1; next} /^# ----/{s=0} s && /^[a-z]/' <<<"$conf" \
        >>"$d/postgresql.conf"
    {
        echo "local all postgres trust"
        awk '/^# ---- pg_hba.conf: login certificate only/{s=1; next} /^# ----/{s=0}
             s && /^host/' <<<"$conf"
    } >"$d/pg_hba.conf"
    LT_PG_PORT=$(lt_free_port)
    lt_as_pg "$LT_PGBIN/pg_ctl" -D "$d" -l "$LT_WORK/pglog/postgresql.log" -w -t 30 \
        -o "-p $LT_PG_PORT -k $LT_WORK/pgsock -c listen_addresses=127.0.0.1 -c max_connections=200" \
        start >/dev/null || lt_die "PostgreSQL did not start: $(tail -5 "$LT_WORK/pglog/postgresql.log")"
    LT_PG_STARTED=1
    lt_psql_admin -c "CREATE ROLE bench LOGIN" >/dev/null
    lt_as_pg "$LT_PGBIN/pgbench" -h "$LT_WORK/pgsock" -p "$LT_PG_PORT" -U postgres -i -q \
        -s "${SCALE:-10}" postgres >"$LT_WORK/pgbench-init.log" 2>&1 ||
        lt_die "pgbench -i failed: $(tail -5 "$LT_WORK/pgbench-init.log")"
    lt_psql_admin -c "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO bench" >/dev/null
}

lt_psql_admin() {
    lt_as_pg "$LT_PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$LT_WORK/pgsock" -p "$LT_PG_PORT" \
        -U postgres -d postgres "$@"
}

# lt_pgtunnel: gateway (service "pg" -> the cluster) and agent. With LT_ECHO_PORT set
# (an echo upstream, `pgtunnel bench --serve-upstream`), also service "echo" on the same
# gateway and a second agent for it on LT_ECHO_AGENT_PORT (PID in LT_PID_echo_agent).
lt_pgtunnel() {
    LT_GW_PORT=$(lt_free_port)
    local echo_service=""
    if [[ -n ${LT_ECHO_PORT:-} ]]; then
        echo_service="
[[service]]
name = \"echo\"
upstream = \"127.0.0.1:$LT_ECHO_PORT\"
allow_users = [\"bench\"]"
    fi
    cat >"$LT_WORK/gateway.toml" <<EOF
[gateway]
listen = "127.0.0.1:$LT_GW_PORT"
cert = "server.crt"
key = "server.key"
client_ca = "ca/ca.crt"
audit_log = "audit.jsonl"
workers = ${GATEWAY_WORKERS:-1}
drain_timeout = "2s"

[[service]]
name = "pg"
upstream = "127.0.0.1:$LT_PG_PORT"
allow_users = ["bench"]
$echo_service
EOF
    lt_spawn gateway "$LT_WORK/gateway.log" "$PGTUNNEL" gateway --config "$LT_WORK/gateway.toml"
    lt_wait_listen "$LT_GW_PORT" "pgtunnel gateway"
    LT_AGENT_PORT=$(lt_free_port)
    lt_spawn agent "$LT_WORK/agent.log" "$PGTUNNEL" connect --gateway "127.0.0.1:$LT_GW_PORT" \
        --service pg --listen "127.0.0.1:$LT_AGENT_PORT" --cert "$LT_WORK/bench.crt" \
        --key "$LT_WORK/bench.key" --ca "$LT_CA"
    lt_wait_listen "$LT_AGENT_PORT" "pgtunnel connect"
    if [[ -n ${LT_ECHO_PORT:-} ]]; then
        LT_ECHO_AGENT_PORT=$(lt_free_port)
        lt_spawn echo_agent "$LT_WORK/echo-agent.log" "$PGTUNNEL" connect \
            --gateway "127.0.0.1:$LT_GW_PORT" --service echo \
            --listen "127.0.0.1:$LT_ECHO_AGENT_PORT" --cert "$LT_WORK/bench.crt" \
            --key "$LT_WORK/bench.key" --ca "$LT_CA"
        lt_wait_listen "$LT_ECHO_AGENT_PORT" "pgtunnel connect (echo)"
    fi
}

# lt_pgbench PORT ARGS...: pgbench as "bench" with the login certificate through
# 127.0.0.1:PORT; prints "tps latency_ms" or fails with pgbench's output.
lt_pgbench() {
    local port=$1 out
    shift
    out=$(env -u PGPASSWORD -u PGSERVICE PGHOST=127.0.0.1 PGPORT="$port" PGUSER=bench \
        PGDATABASE=postgres PGSSLMODE=verify-full PGSSLROOTCERT="$LT_CA" \
        PGSSLCERT="$LT_WORK/bench.crt" PGSSLKEY="$LT_WORK/bench.key" PGGSSENCMODE=disable \
        PGCONNECT_TIMEOUT=10 timeout $((${TIME:-5} + 60)) "$LT_PGBIN/pgbench" -n "$@" 2>&1) ||
        lt_die "pgbench $* via port $port failed:
$out"
    awk '/^tps = / { tps = $3 } /^latency average = / { lat = $4 }
         END { if (tps == "") exit 1; print tps, lat }' <<<"$out" ||
        lt_die "pgbench printed no tps:
$out"
}

# lt_median VALUES...: the median (mean of the middle two for an even count).
lt_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

lt_range() {
    printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

# lt_machine: Markdown lines naming machine, kernel, versions and date.
lt_machine() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- machine: ${cpu:-unknown CPU}, $(nproc) cores, $(awk '/MemTotal/ { printf "%d MiB", $2 / 1024 }' /proc/meminfo)"
    echo "- kernel: $(uname -srvm)"
    echo "- PostgreSQL: $("$LT_PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) //')"
    echo "- pgtunnel: $("$PGTUNNEL" --version) ($PGTUNNEL)"
    echo "- command: $LT_COMMAND"
}
