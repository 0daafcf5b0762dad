#!/usr/bin/env bash
# loadtest/pgbench.sh: pgbench through pgtunnel (agent + gateway) against PostgreSQL
# directly, on a throwaway cluster, in one run with interleaved rounds, reporting medians.
#
#   loadtest/pgbench.sh [--rounds N] [--time SECONDS] [--clients C] [--jobs J]
#                       [--scale S] [--out FILE.md]
#
# Workloads: pgbench's built-in select-only (-S) and TPC-B-like (-b tpcb-like). Each round
# runs every workload once through each route, alternating which route goes first, so a
# noisy neighbour or a frequency change hits both alike. Both routes use the same TLS:
# pgbench logs in with the login certificate (sslmode=verify-full, pg_hba "cert"); through
# the tunnel that TLS runs inside pgtunnel's. Prints a Markdown table (and writes it to
# --out): median tps, the spread over rounds, median average latency, ratio to direct.
# Needs PostgreSQL with pgbench (scripts/install-deps), python3 and a release build.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=5
TIME=5
CLIENTS=8
JOBS=2
SCALE=10
OUT=""
LT_COMMAND="$0 $*"
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "pgbench.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
for n in "$ROUNDS" "$TIME" "$CLIENTS" "$JOBS" "$SCALE"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "pgbench.sh: $n: expected a positive integer" >&2; exit 64; }
done
((ROUNDS <= 100 && TIME <= 600)) || { echo "pgbench.sh: at most 100 rounds of 600 s" >&2; exit 64; }
export TIME SCALE

lt_init
echo "setting up: PKI, PostgreSQL (scale $SCALE), gateway and agent in $LT_WORK" >&2
lt_pki
lt_cluster
lt_pgtunnel

declare -A TPS LAT
WORKLOADS=(select-only tpcb-like)
ROUTES=(direct pgtunnel)
port_of() { [[ $1 == direct ]] && echo "$LT_PG_PORT" || echo "$LT_AGENT_PORT"; }
flags_of() { [[ $1 == select-only ]] && echo "-S" || echo "-b tpcb-like"; }

for ((r = 1; r <= ROUNDS; r++)); do
    order=("${ROUTES[@]}")
    ((r % 2 == 0)) && order=(pgtunnel direct)
    for w in "${WORKLOADS[@]}"; do
        for route in "${order[@]}"; do
            # shellcheck disable=SC2046 # the flags are meant to split
            read -r tps lat < <(lt_pgbench "$(port_of "$route")" $(flags_of "$w") \
                -c "$CLIENTS" -j "$JOBS" -T "$TIME")
            TPS[$w,$route]+="$tps "
            LAT[$w,$route]+="$lat "
            printf 'round %d/%d  %-11s %-8s %10.0f tps  %7.3f ms\n' "$r" "$ROUNDS" "$w" "$route" \
                "$tps" "$lat" >&2
        done
    done
done

report() {
    echo "## pgbench through pgtunnel against direct"
    echo
    echo "pgbench -n, $CLIENTS clients, $JOBS threads, $TIME s per run, scale $SCALE;" \
        "$ROUNDS interleaved rounds; medians over rounds. Both routes log in with the" \
        "same login certificate (sslmode=verify-full, pg_hba cert)."
    echo
    echo "| workload | route | median tps | tps over rounds | median latency avg | tps vs direct | latency vs direct |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    local w route tps lat dt dl
    for w in "${WORKLOADS[@]}"; do
        # shellcheck disable=SC2086 # the values are space-separated numbers
        dt=$(lt_median ${TPS[$w,direct]})
        # shellcheck disable=SC2086
        dl=$(lt_median ${LAT[$w,direct]})
        for route in "${ROUTES[@]}"; do
            # shellcheck disable=SC2086
            tps=$(lt_median ${TPS[$w,$route]})
            # shellcheck disable=SC2086
            lat=$(lt_median ${LAT[$w,$route]})
            # shellcheck disable=SC2086
            printf '| %s | %s | %.0f | %s | %.3f ms | %.2f× | %.2f× |\n' "$w" "$route" "$tps" \
                "$(lt_range ${TPS[$w,$route]})" "$lat" \
                "$(awk -v a="$tps" -v b="$dt" 'BEGIN { print a / b }')" \
                "$(awk -v a="$lat" -v b="$dl" 'BEGIN { print a / b }')"
        done
    done
    echo
    lt_machine
}

echo >&2
if [[ -n $OUT ]]; then
    report | tee "$OUT"
else
    report
fi
