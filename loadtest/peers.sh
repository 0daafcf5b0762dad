#!/usr/bin/env bash
# loadtest/peers.sh: pgtunnel against its peers — stunnel, HAProxy and nginx (stream) —
# each a mutually authenticated TLS terminator in front of the same throwaway PostgreSQL,
# with a client-side agent of the same product, all with the same certificates.
#
#   loadtest/peers.sh [--rounds N] [--time SECONDS] [--clients C] [--jobs J]
#                     [--scale S] [--out FILE.md] [--peers "pgtunnel stunnel haproxy nginx"]
#                     [--parts "pgbench bench"] [--bench-time SECONDS]
#                     [--handshake-clients N]
#
# First a functional check: each terminator must accept the login certificate and refuse
# a missing, a foreign-CA and an expired client certificate (a peer that fails it is not
# measured). Then one run of interleaved rounds, the order of the peers rotating each
# round: pgbench select-only and TPC-B-like through every peer's agent and directly; and
# `pgtunnel bench` against every peer's terminator and agent in front of the bench's echo
# upstream (full and resumed mTLS handshakes at --handshake-clients concurrent clients,
# 64-byte round trips on one connection, bulk up, down and both ways), each bench run
# with its own direct baseline. Markdown tables of medians over rounds with ratios to
# direct and to the best peer, CPU of each product's server and client side, versions and
# machine. Installs missing peers from Debian's packages (stunnel4, haproxy, nginx-light,
# libnginx-mod-stream) when run as root.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=3
TIME=5
CLIENTS=8
JOBS=2
SCALE=10
OUT=""
PEERS="pgtunnel stunnel haproxy nginx"
PARTS="pgbench bench"
BENCH_TIME=2
HS_CLIENTS=32
LT_COMMAND="$0 $*"
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    --bench-time) BENCH_TIME=$2; shift 2 ;;
    --handshake-clients) HS_CLIENTS=$2; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "peers.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
for n in "$ROUNDS" "$TIME" "$CLIENTS" "$JOBS" "$SCALE" "$BENCH_TIME" "$HS_CLIENTS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "peers.sh: $n: expected a positive integer" >&2; exit 64; }
done
((ROUNDS <= 100 && TIME <= 600 && BENCH_TIME <= 600)) ||
    { echo "peers.sh: at most 100 rounds of 600 s" >&2; exit 64; }
((HS_CLIENTS <= 256)) || { echo "peers.sh: --handshake-clients: at most 256" >&2; exit 64; }
for part in $PARTS; do
    [[ $part =~ ^(pgbench|bench)$ ]] ||
        { echo "peers.sh: --parts: unknown part $part (pgbench, bench)" >&2; exit 64; }
done
for p in $PEERS; do
    [[ $p =~ ^(pgtunnel|stunnel|haproxy|nginx)$ ]] ||
        { echo "peers.sh: --peers: unknown peer $p" >&2; exit 64; }
done
export TIME SCALE

install_peers() {
    local missing=()
    [[ $PEERS == *stunnel* ]] && ! command -v stunnel4 >/dev/null && missing+=(stunnel4)
    [[ $PEERS == *haproxy* ]] && ! command -v haproxy >/dev/null && missing+=(haproxy)
    if [[ $PEERS == *nginx* ]] && [[ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]]; then
        missing+=(nginx-light libnginx-mod-stream)
    fi
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || lt_die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        >"$LT_WORK/apt.log" 2>&1 || lt_die "apt-get install failed: $(tail -3 "$LT_WORK/apt.log")"
}

# An expired login certificate from our CA (openssl: pgtunnel ca only issues valid ones).
expired_cert() {
    local d=$LT_WORK/expired
    mkdir -p "$d"
    touch "$d/index.txt"
    echo 1000 >"$d/serial"
    cat >"$d/ca.cnf" <<EOF
[ca]
default_ca = own
[own]
database = $d/index.txt
new_certs_dir = $d
serial = $d/serial
default_md = sha256
policy = any
[any]
commonName = supplied
[login]
extendedKeyUsage = clientAuth
basicConstraints = critical, CA:FALSE
EOF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench \
        -keyout "$LT_WORK/expired.key" -out "$d/req.csr" 2>/dev/null
    openssl ca -batch -config "$d/ca.cnf" -cert "$LT_CA" -keyfile "$LT_WORK/ca/ca.key" \
        -in "$d/req.csr" -out "$LT_WORK/expired.crt" -startdate 20200101000000Z \
        -enddate 20200101120000Z -extensions login -notext >"$d/ca.log" 2>&1 ||
        lt_die "openssl ca failed: $(tail -3 "$d/ca.log")"
}

# tls_probe PORT SNI ALPN CERT KEY: "accepted" when a TLS client with that certificate
# gets PostgreSQL's 'S' answer to an SSLRequest through the terminator, else "refused: ...".
tls_probe() {
    python3 - "$LT_CA" "$@" <<'EOF'
import socket, ssl, sys
ca, port, sni, alpn, cert, key = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.check_hostname = False
if cert != "-":
    ctx.load_cert_chain(cert, key)
if alpn != "-":
    ctx.set_alpn_protocols([alpn])
try:
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=sni)
    s.sendall(bytes([0, 0, 0, 8, 4, 210, 22, 47]))
    answer = s.recv(1)
    print("accepted" if answer == b"S" else "refused: answer %r" % answer)
except Exception as e:
    print("refused: %s" % (str(e).splitlines()[0] if str(e) else type(e).__name__))
EOF
}

# Per peer: server-side terminator port, client-side agent port, PIDs of each side.
# ECHO_*: the same, in front of the bench's echo upstream (the bench scenarios). The
# peers serve both from one process each; pgtunnel's gateway too (service "echo"), with
# a second agent (ECHO_CLIENT_PID; a peer's one client process serves both), as an
# agent serves one service.
declare -A TERM_PORT AGENT_PORT SERVER_PIDS CLIENT_PIDS SNI ALPN VERSION
declare -A ECHO_TERM ECHO_AGENT ECHO_CLIENT_PID

start_pgtunnel() {
    lt_pgtunnel
    TERM_PORT[pgtunnel]=$LT_GW_PORT AGENT_PORT[pgtunnel]=$LT_AGENT_PORT
    ECHO_TERM[pgtunnel]=$LT_GW_PORT ECHO_AGENT[pgtunnel]=$LT_ECHO_AGENT_PORT
    SERVER_PIDS[pgtunnel]=$LT_PID_gateway CLIENT_PIDS[pgtunnel]=$LT_PID_agent
    ECHO_CLIENT_PID[pgtunnel]=$LT_PID_echo_agent
    SNI[pgtunnel]=pg ALPN[pgtunnel]=pgtunnel
    VERSION[pgtunnel]=$("$PGTUNNEL" --version)
}

start_stunnel() {
    local t a te ae d=$LT_WORK/stunnel
    t=$(lt_free_port) a=$(lt_free_port) te=$(lt_free_port) ae=$(lt_free_port)
    mkdir -p "$d"
    # Options before the first section are every section's defaults (stunnel(8)).
    cat >"$d/server.conf" <<EOF
foreground = yes
pid =
cert = $LT_WORK/server.crt
key = $LT_WORK/server.key
CAfile = $LT_CA
requireCert = yes
verifyChain = yes
sslVersionMin = TLSv1.3
[pg]
accept = 127.0.0.1:$t
connect = 127.0.0.1:$LT_PG_PORT
[echo]
accept = 127.0.0.1:$te
connect = 127.0.0.1:$LT_ECHO_PORT
EOF
    cat >"$d/client.conf" <<EOF
foreground = yes
pid =
client = yes
cert = $LT_WORK/bench.crt
key = $LT_WORK/bench.key
CAfile = $LT_CA
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
[pg]
accept = 127.0.0.1:$a
connect = 127.0.0.1:$t
[echo]
accept = 127.0.0.1:$ae
connect = 127.0.0.1:$te
EOF
    lt_spawn stunnel_server "$d/server.log" stunnel4 "$d/server.conf"
    lt_spawn stunnel_client "$d/client.log" stunnel4 "$d/client.conf"
    lt_wait_listen "$t" "stunnel (server)"
    lt_wait_listen "$a" "stunnel (client)"
    TERM_PORT[stunnel]=$t AGENT_PORT[stunnel]=$a ECHO_TERM[stunnel]=$te ECHO_AGENT[stunnel]=$ae
    SERVER_PIDS[stunnel]=$LT_PID_stunnel_server CLIENT_PIDS[stunnel]=$LT_PID_stunnel_client
    SNI[stunnel]=localhost ALPN[stunnel]=-
    VERSION[stunnel]=$(stunnel4 -version 2>&1 | awk '/^stunnel/ { print $1, $2; exit }')
}

start_haproxy() {
    local t a te ae d=$LT_WORK/haproxy
    t=$(lt_free_port) a=$(lt_free_port) te=$(lt_free_port) ae=$(lt_free_port)
    mkdir -p "$d"
    cat "$LT_WORK/server.crt" "$LT_WORK/server.key" >"$d/server.pem"
    cat "$LT_WORK/bench.crt" "$LT_WORK/bench.key" >"$d/client.pem"
    chmod 600 "$d"/*.pem
    local defaults="defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s"
    cat >"$d/server.cfg" <<EOF
global
    maxconn 2000
    nbthread 1
$defaults
frontend tls_in
    bind 127.0.0.1:$t ssl crt $d/server.pem ca-file $LT_CA verify required ssl-min-ver TLSv1.3
    default_backend pg
backend pg
    server pg 127.0.0.1:$LT_PG_PORT
frontend tls_echo
    bind 127.0.0.1:$te ssl crt $d/server.pem ca-file $LT_CA verify required ssl-min-ver TLSv1.3
    default_backend echo
backend echo
    server echo 127.0.0.1:$LT_ECHO_PORT
EOF
    cat >"$d/client.cfg" <<EOF
global
    maxconn 2000
    nbthread 1
$defaults
frontend plain_in
    bind 127.0.0.1:$a
    default_backend tunnel
backend tunnel
    server t 127.0.0.1:$t ssl crt $d/client.pem ca-file $LT_CA verify required verifyhost localhost sni str(localhost) ssl-min-ver TLSv1.3
frontend plain_echo
    bind 127.0.0.1:$ae
    default_backend tunnel_echo
backend tunnel_echo
    server te 127.0.0.1:$te ssl crt $d/client.pem ca-file $LT_CA verify required verifyhost localhost sni str(localhost) ssl-min-ver TLSv1.3
EOF
    lt_spawn haproxy_server "$d/server.log" haproxy -db -f "$d/server.cfg"
    lt_spawn haproxy_client "$d/client.log" haproxy -db -f "$d/client.cfg"
    lt_wait_listen "$t" "haproxy (server)"
    lt_wait_listen "$a" "haproxy (client)"
    TERM_PORT[haproxy]=$t AGENT_PORT[haproxy]=$a ECHO_TERM[haproxy]=$te ECHO_AGENT[haproxy]=$ae
    SERVER_PIDS[haproxy]=$LT_PID_haproxy_server CLIENT_PIDS[haproxy]=$LT_PID_haproxy_client
    SNI[haproxy]=localhost ALPN[haproxy]=-
    VERSION[haproxy]=$(haproxy -v | awk 'NR == 1 { print "HAProxy", $3 }')
}

start_nginx() {
    local t a te ae d=$LT_WORK/nginx
    t=$(lt_free_port) a=$(lt_free_port) te=$(lt_free_port) ae=$(lt_free_port)
    mkdir -p "$d"
    local head="load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
user root;
events { worker_connections 2048; }"
    # Directives at the stream level are every server's defaults. Half-close is passed
    # through: bulk upload ends with the client's FIN and then reads the sink's count.
    cat >"$d/server.conf" <<EOF
$head
pid $d/server.pid;
error_log $d/server-error.log warn;
stream {
    ssl_certificate $LT_WORK/server.crt;
    ssl_certificate_key $LT_WORK/server.key;
    ssl_client_certificate $LT_CA;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    proxy_half_close on;
    server {
        listen 127.0.0.1:$t ssl;
        proxy_pass 127.0.0.1:$LT_PG_PORT;
    }
    server {
        listen 127.0.0.1:$te ssl;
        proxy_pass 127.0.0.1:$LT_ECHO_PORT;
    }
}
EOF
    cat >"$d/client.conf" <<EOF
$head
pid $d/client.pid;
error_log $d/client-error.log warn;
stream {
    proxy_ssl on;
    proxy_ssl_certificate $LT_WORK/bench.crt;
    proxy_ssl_certificate_key $LT_WORK/bench.key;
    proxy_ssl_trusted_certificate $LT_CA;
    proxy_ssl_verify on;
    proxy_ssl_name localhost;
    proxy_ssl_server_name on;
    proxy_ssl_protocols TLSv1.3;
    proxy_half_close on;
    server {
        listen 127.0.0.1:$a;
        proxy_pass 127.0.0.1:$t;
    }
    server {
        listen 127.0.0.1:$ae;
        proxy_pass 127.0.0.1:$te;
    }
}
EOF
    lt_spawn nginx_server "$d/server.log" nginx -e stderr -p "$d" -c "$d/server.conf"
    lt_spawn nginx_client "$d/client.log" nginx -e stderr -p "$d" -c "$d/client.conf"
    lt_wait_listen "$t" "nginx (server)"
    lt_wait_listen "$a" "nginx (client)"
    TERM_PORT[nginx]=$t AGENT_PORT[nginx]=$a ECHO_TERM[nginx]=$te ECHO_AGENT[nginx]=$ae
    SERVER_PIDS[nginx]=$LT_PID_nginx_server CLIENT_PIDS[nginx]=$LT_PID_nginx_client
    SNI[nginx]=localhost ALPN[nginx]=-
    VERSION[nginx]=$(nginx -v 2>&1 | sed 's/^nginx version: //')
}

# CPU nanoseconds of a process: utime + stime from /proc/PID/stat, which (unlike the
# per-thread schedstat the bench reads) keeps the time of threads that have ended —
# stunnel runs a thread per connection. USER_HZ is 100: 10 ms resolution, fine for
# runs of seconds.
cpu_ns() {
    sed 's/.*) //' /proc/"$1"/stat 2>/dev/null | awk '{ print ($12 + $13) * 10000000 }'
}

lt_init
install_peers
echo "setting up: PKI, PostgreSQL (scale $SCALE) in $LT_WORK" >&2
lt_pki
expired_cert
lt_cluster
# The bench's upstream: echo for handshakes and round trips, sink and source for bulk.
LT_ECHO_PORT=$(lt_free_port)
lt_spawn upstream "$LT_WORK/upstream.log" "$PGTUNNEL" bench --serve-upstream "127.0.0.1:$LT_ECHO_PORT"
lt_wait_listen "$LT_ECHO_PORT" "bench upstream"

MEASURED=()
echo >&2
echo "functional check: each terminator accepts the login certificate and refuses the rest" >&2
CHECKS=""
for p in $PEERS; do
    "start_$p"
    port=${TERM_PORT[$p]}
    ok=1 line="| $p |"
    for c in "valid:$LT_WORK/bench.crt:$LT_WORK/bench.key" "none:-:-" \
        "foreign CA:$LT_WORK/foreign.crt:$LT_WORK/foreign.key" \
        "expired:$LT_WORK/expired.crt:$LT_WORK/expired.key"; do
        IFS=: read -r what cert key <<<"$c"
        got=$(tls_probe "$port" "${SNI[$p]}" "${ALPN[$p]}" "$cert" "$key")
        want=refused
        [[ $what == valid ]] && want=accepted
        if [[ $got == "$want"* ]]; then
            line+=" $want ✓ |"
        else
            line+=" **$got** ✗ |"
            ok=0
        fi
        printf '  %-9s %-10s %s\n' "$p" "$what" "$got" >&2
    done
    CHECKS+="$line"$'\n'
    if ((ok)); then
        MEASURED+=("$p")
    else
        echo "  $p failed the functional check and is not measured" >&2
    fi
done

# rotated K ITEMS...: the items, one a line, starting at the K-th (0-based, wrapping).
rotated() {
    local k=$(($1 % ($# - 1)))
    shift
    printf '%s\n' "${@:k+1}" "${@:1:k}"
}

# bench_round ROUND PEER: the bench scenarios against one peer, a JSON file each.
bench_round() {
    local r=$1 p=$2 sc out
    local target=(--gateway "127.0.0.1:${ECHO_TERM[$p]}" --server-name localhost --service echo
        --connect "127.0.0.1:${ECHO_AGENT[$p]}" --upstream "127.0.0.1:$LT_ECHO_PORT"
        --cert "$LT_WORK/bench.crt" --key "$LT_WORK/bench.key" --ca "$LT_CA"
        --gateway-pid "${SERVER_PIDS[$p]}" --agent-pid "${ECHO_CLIENT_PID[$p]:-${CLIENT_PIDS[$p]}}"
        --duration "${BENCH_TIME}s")
    for sc in handshake echo bulk; do
        local extra=()
        case $sc in
        handshake) extra=(--connections "$HS_CLIENTS") ;;
        # One connection: the latency of a round trip itself, not of a queue for the CPU.
        echo) extra=(--connections 1 --size 64) ;;
        bulk) extra=(--connections 4) ;;
        esac
        out=$LT_WORK/bench/$r-$p-$sc
        timeout $((BENCH_TIME * 20 + 120)) "$PGTUNNEL" bench "${target[@]}" --scenario "$sc" \
            "${extra[@]}" --json "$out.json" >"$out.txt" 2>&1 ||
            lt_die "bench $sc against $p failed: $(tail -5 "$out.txt")"
        printf 'round %d/%d  bench %-9s %-9s done\n' "$r" "$ROUNDS" "$sc" "$p" >&2
    done
}
mkdir -p "$LT_WORK/bench"

declare -A TPS LAT SCPU CCPU
ROUTES=(direct "${MEASURED[@]}")
WORKLOADS=(select-only tpcb-like)
[[ $PARTS == *pgbench* ]] || WORKLOADS=()
for ((r = 1; r <= ROUNDS; r++)); do
    if [[ $PARTS == *bench* ]]; then
        for p in $(rotated $((r - 1)) "${MEASURED[@]}"); do
            bench_round "$r" "$p"
        done
    fi
    # Rotate the order every round so no route always runs first or last.
    mapfile -t order < <(rotated $((r - 1)) "${ROUTES[@]}")
    for w in "${WORKLOADS[@]}"; do
        for route in "${order[@]}"; do
            if [[ $route == direct ]]; then
                port=$LT_PG_PORT
            else
                port=${AGENT_PORT[$route]}
                s0=$(cpu_ns "${SERVER_PIDS[$route]}") c0=$(cpu_ns "${CLIENT_PIDS[$route]}")
            fi
            flags=(-S)
            [[ $w == tpcb-like ]] && flags=(-b tpcb-like)
            read -r tps lat < <(lt_pgbench "$port" "${flags[@]}" -c "$CLIENTS" -j "$JOBS" -T "$TIME")
            TPS[$w,$route]+="$tps "
            LAT[$w,$route]+="$lat "
            if [[ $route != direct ]]; then
                tx=$(awk -v t="$tps" -v s="$TIME" 'BEGIN { print t * s }')
                SCPU[$w,$route]+="$(awk -v a="$(cpu_ns "${SERVER_PIDS[$route]}")" -v b="$s0" \
                    -v n="$tx" 'BEGIN { print (a - b) / 1000 / n }') "
                CCPU[$w,$route]+="$(awk -v a="$(cpu_ns "${CLIENT_PIDS[$route]}")" -v b="$c0" \
                    -v n="$tx" 'BEGIN { print (a - b) / 1000 / n }') "
            fi
            printf 'round %d/%d  %-11s %-9s %10.0f tps  %7.3f ms\n' "$r" "$ROUNDS" "$w" \
                "$route" "$tps" "$lat" >&2
        done
    done
done

pgbench_table() {
    local w route tps lat dt dl scpu ccpu
    echo "### pgbench through each, against direct"
    echo
    echo "pgbench -n, $CLIENTS clients, $JOBS threads, $TIME s per run, scale $SCALE; $ROUNDS" \
        "rounds, the route order rotating each round; medians over rounds. Every route" \
        "runs PostgreSQL's own TLS with the login certificate (sslmode=verify-full," \
        "pg_hba cert); through a peer that TLS runs inside the peer's mTLS tunnel, from its" \
        "client side (agent) to its server side (terminator). CPU is per transaction," \
        "server side / client side."
    echo
    echo "| workload | route | median tps | tps over rounds | median latency avg | tps vs direct | latency vs direct | CPU µs/tx server | CPU µs/tx client |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    : >"$LT_WORK/pgbench.tsv"
    for w in "${WORKLOADS[@]}"; do
        # shellcheck disable=SC2086 # space-separated numbers
        dt=$(lt_median ${TPS[$w,direct]})
        # shellcheck disable=SC2086
        dl=$(lt_median ${LAT[$w,direct]})
        for route in "${ROUTES[@]}"; do
            # shellcheck disable=SC2086
            tps=$(lt_median ${TPS[$w,$route]})
            # shellcheck disable=SC2086
            lat=$(lt_median ${LAT[$w,$route]})
            echo "$w $route $tps" >>"$LT_WORK/pgbench.tsv"
            scpu=— ccpu=—
            if [[ $route != direct ]]; then
                # shellcheck disable=SC2086
                scpu=$(printf '%.0f' "$(lt_median ${SCPU[$w,$route]})")
                # shellcheck disable=SC2086
                ccpu=$(printf '%.0f' "$(lt_median ${CCPU[$w,$route]})")
            fi
            # shellcheck disable=SC2086
            printf '| %s | %s | %.0f | %s | %.3f ms | %.2f× | %.2f× | %s | %s |\n' "$w" "$route" \
                "$tps" "$(lt_range ${TPS[$w,$route]})" "$lat" \
                "$(awk -v a="$tps" -v b="$dt" 'BEGIN { print a / b }')" \
                "$(awk -v a="$lat" -v b="$dl" 'BEGIN { print a / b }')" "$scpu" "$ccpu"
        done
    done
    echo
}

report() {
    echo "## pgtunnel and its peers: stunnel, HAProxy and nginx as mTLS terminators"
    echo
    echo "Functional check (client certificate presented to each terminator):"
    echo
    echo "| terminator | valid login cert | none | foreign CA | expired |"
    echo "|---|---|---|---|---|"
    printf '%s' "$CHECKS"
    echo
    ((${#WORKLOADS[@]})) && pgbench_table
    if [[ $PARTS == *bench* ]]; then
        python3 "$LT_ROOT/loadtest/peers_bench.py" --dir "$LT_WORK/bench" \
            --peers "${MEASURED[*]}" --pgbench "$LT_WORK/pgbench.tsv" \
            --handshake-clients "$HS_CLIENTS"
    fi
    echo "Versions: $(for p in "${MEASURED[@]}"; do printf '%s; ' "${VERSION[$p]}"; done)OpenSSL $(openssl version | awk '{ print $2 }') (stunnel, HAProxy, nginx), rustls (pgtunnel). Each peer runs one worker process or thread pool as configured above (nginx and HAProxy one worker, stunnel a thread per connection), pgtunnel's gateway ${GATEWAY_WORKERS:-1} worker."
    echo
    lt_machine
}

echo >&2
if [[ -n $OUT ]]; then
    report | tee "$OUT"
else
    report
fi
