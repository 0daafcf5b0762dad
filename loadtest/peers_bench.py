#!/usr/bin/env python3
"""Tables for loadtest/peers.sh from its `pgtunnel bench` results.

Reads DIR/<round>-<peer>-<scenario>.json (scenario: handshake, echo, bulk), as
peers.sh writes them, and an optional TSV of pgbench medians ("workload route tps"),
and prints Markdown: one table per scenario with the median over rounds for every
peer, then the fast-path targets of issue 5 (pgtunnel against the best peer of the
same run). Standard library only.

    peers_bench.py --dir DIR --peers "pgtunnel stunnel haproxy nginx"
                   [--pgbench FILE] [--handshake-clients N]
"""

import argparse
import glob
import json
import os
import statistics
import sys

OURS = "pgtunnel"


def load(directory):
    """{(peer, scenario): [result, ...]} over rounds."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(directory, "*-*-*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        _round, peer, scenario = name.split("-", 2)
        with open(path, encoding="utf-8") as f:
            runs.setdefault((peer, scenario), []).append(json.load(f))
    return runs


def scenario(result, name, variant):
    for s in result["scenarios"]:
        if s["name"] == name and s["variant"] == variant:
            return s
    return None


def route(s, name):
    if s is None:
        return None
    for r in s["routes"]:
        if r["name"] == name:
            return r
    return None


def latency(r, metric, key):
    if r is None:
        return None
    for m in r["latency"]:
        if m["name"] == metric:
            return m["summary"][key]
    return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Figures:
    """Medians over rounds of what one peer's bench runs measured."""

    def __init__(self, runs, peer):
        self.peer = peer
        self.hs = runs.get((peer, "handshake"), [])
        self.echo = runs.get((peer, "echo"), [])
        self.bulk = runs.get((peer, "bulk"), [])
        self.warnings = set()
        for result in self.hs + self.echo + self.bulk:
            for s in result["scenarios"]:
                for w in s.get("warnings", []):
                    if "BOTTLENECK" in w or "NOT IDLE" in w:
                        self.warnings.add(f"{s['name']} {s['variant']}: {w}")

    def hs_value(self, variant, route_name, get):
        return median(get(route(scenario(r, "handshake", variant), route_name)) for r in self.hs)

    def echo_value(self, route_name, get):
        return median(get(route(scenario(r, "echo", "64 B"), route_name)) for r in self.echo)

    def bulk_value(self, variant, route_name, get):
        return median(get(route(scenario(r, "bulk", variant), route_name)) for r in self.bulk)


def cpu(key):
    return lambda r: None if r is None else r["cpu"][key]


def both_cpu(r):
    if r is None:
        return None
    return r["cpu"]["gateway_per_op_us"] + r["cpu"]["agent_per_op_us"]


def rate(r):
    return None if r is None else r["rate"]


def mbps(r):
    return None if r is None else r["mb_per_s_up"] + r["mb_per_s_down"]


def lat(metric, key):
    return lambda r: latency(r, metric, key)


def fmt(value, unit="", digits=0):
    if value is None:
        return "—"
    if unit == "µs" and value >= 10_000:
        return f"{value / 1000:.1f} ms"
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def best_peer(values, higher_is_better):
    """(value, peer) of the best peer other than ours in {peer: value}, or (None, None)."""
    candidates = [(v, p) for p, v in values.items() if p != OURS and v is not None]
    if not candidates:
        return None, None
    return (max if higher_is_better else min)(candidates)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--pgbench")
    ap.add_argument("--handshake-clients", default="32")
    args = ap.parse_args()

    runs = load(args.dir)
    peers = args.peers.split()
    figures = [Figures(runs, p) for p in peers]
    rounds = max((len(f.hs) for f in figures), default=0)
    if rounds == 0:
        print("(no bench results)")
        return 0

    print(f"### mTLS handshakes, {args.handshake_clients} concurrent clients, "
          "bench → terminator → echo upstream")
    print()
    print(f"Medians over {rounds} rounds. One operation: TCP connect, full mTLS handshake "
          "(ECDSA P-256 certificates both ways), one byte echoed through the upstream, close. "
          "Latency is TCP connect → handshake complete on the client. Server CPU is the "
          "terminator process's, per handshake. \"direct\" is the bench's in-process rustls "
          "terminator of the same run (no upstream), shown for pgtunnel's run.")
    print()
    rows = []
    for f in figures:
        rows.append([
            f.peer,
            fmt(f.hs_value("full", "gateway", rate), "/s"),
            fmt(f.hs_value("full", "gateway", lat("handshake", "p50")), "µs"),
            fmt(f.hs_value("full", "gateway", lat("handshake", "p99")), "µs"),
            fmt(f.hs_value("full", "gateway", cpu("gateway_per_op_us")), "µs"),
            fmt(f.hs_value("resumed", "gateway (resumed)", cpu("gateway_per_op_us")), "µs"),
            fmt(f.hs_value("resumed", "gateway (resumed)", lat("handshake", "p99")), "µs"),
        ])
    ours = next((f for f in figures if f.peer == OURS), None)
    if ours:
        rows.append([
            "direct (in-process rustls)",
            fmt(ours.hs_value("full", "direct", rate), "/s"),
            fmt(ours.hs_value("full", "direct", lat("handshake", "p50")), "µs"),
            fmt(ours.hs_value("full", "direct", lat("handshake", "p99")), "µs"),
            "—", "—", "—",
        ])
    table(["terminator", "handshakes/s", "p50", "p99", "server CPU per handshake",
           "resumed: server CPU", "resumed: p99"], rows)

    print("### 64-byte round trips through client agent + terminator, one connection")
    print()
    print("bench → agent → terminator → echo upstream and back, on a long-lived session. "
          "CPU per round trip of the terminator (server) and the agent (client).")
    print()
    rows = []
    for f in figures:
        rows.append([
            f.peer,
            fmt(f.echo_value("agent+gateway", lat("round trip", "p50")), "µs"),
            fmt(f.echo_value("agent+gateway", lat("round trip", "p99")), "µs"),
            fmt(f.echo_value("agent+gateway", cpu("gateway_per_op_us")), "µs", 1),
            fmt(f.echo_value("agent+gateway", cpu("agent_per_op_us")), "µs", 1),
            fmt(f.echo_value("agent+gateway", both_cpu), "µs", 1),
            fmt(f.echo_value("gateway", lat("round trip", "p50")), "µs"),
        ])
    if ours:
        rows.append(["direct (plain TCP to the upstream)",
                     fmt(ours.echo_value("direct", lat("round trip", "p50")), "µs"),
                     fmt(ours.echo_value("direct", lat("round trip", "p99")), "µs"),
                     "—", "—", "—", "—"])
    table(["route", "p50", "p99", "CPU server", "CPU client", "CPU both",
           "p50 bench → terminator only"], rows)

    print("### Bulk through the terminator, 4 connections")
    print()
    print("bench → terminator → upstream sink (upload) or from the upstream source "
          "(download), MB/s with 1 MB = 10⁶ bytes; server CPU per MB.")
    print()
    rows = []
    for f in figures:
        row = [f.peer]
        for variant in ("upload", "download", "both ways"):
            row.append(fmt(f.bulk_value(variant, "gateway", mbps)))
        for variant in ("upload", "download"):
            row.append(fmt(f.bulk_value(variant, "gateway", cpu("gateway_per_op_us")), "µs"))
        row.append(fmt(f.bulk_value("both ways", "agent+gateway", mbps)))
        rows.append(row)
    if ours:
        rows.append(["direct (plain TCP)"] + [
            fmt(ours.bulk_value(v, "direct", mbps)) for v in ("upload", "download", "both ways")
        ] + ["—", "—", "—"])
    table(["terminator", "up MB/s", "down MB/s", "both ways MB/s", "CPU/MB up",
           "CPU/MB down", "both ways via agent MB/s"], rows)

    pgbench = {}
    if args.pgbench and os.path.exists(args.pgbench):
        with open(args.pgbench, encoding="utf-8") as f:
            for line in f:
                w, r, tps = line.split()
                pgbench[(w, r)] = float(tps)

    if ours:
        print("### Fast-path targets: pgtunnel against the best peer of this run")
        print()
        targets = [
            ("gateway CPU per full mTLS handshake", "≤ 0.3×", 0.3, False,
             lambda f: f.hs_value("full", "gateway", cpu("gateway_per_op_us")), "µs"),
            (f"p99 handshake latency, {args.handshake_clients} clients", "≤ 1.0×", 1.0, False,
             lambda f: f.hs_value("full", "gateway", lat("handshake", "p99")), "µs"),
            ("64 B round trip, agent + gateway CPU", "≤ 0.5×", 0.5, False,
             lambda f: f.echo_value("agent+gateway", both_cpu), "µs"),
            ("64 B round trip, agent + gateway p50", "≤ 0.7×", 0.7, False,
             lambda f: f.echo_value("agent+gateway", lat("round trip", "p50")), "µs"),
            ("bulk through the gateway, both ways", "≥ 2×", 2.0, True,
             lambda f: f.bulk_value("both ways", "gateway", mbps), "MB/s"),
            ("bulk through the gateway, upload", "≥ 2×", 2.0, True,
             lambda f: f.bulk_value("upload", "gateway", mbps), "MB/s"),
            ("bulk through the gateway, download", "≥ 2×", 2.0, True,
             lambda f: f.bulk_value("download", "gateway", mbps), "MB/s"),
        ]
        rows = []
        for name, want, limit, higher, get, unit in targets:
            values = {f.peer: get(f) for f in figures}
            best, who = best_peer(values, higher)
            rows.append(target_row(name, want, limit, higher, values.get(OURS), best, who, unit))
        if pgbench:
            values = {p: pgbench.get(("select-only", p)) for p in peers}
            best, who = best_peer(values, True)
            rows.append(target_row("pgbench -S TPS through agent + gateway", "≥ 1.3×", 1.3,
                                   True, values.get(OURS), best, who, "tps"))
        table(["target", "pgtunnel", "best peer", "ratio", "wanted", "met"], rows)

    warned = [w for f in figures for w in sorted(f.warnings)]
    if warned:
        print("Bench warnings in these runs:")
        print()
        for f in figures:
            for w in sorted(f.warnings):
                print(f"- {f.peer}, {w}")
        print()
    return 0


def target_row(name, want, limit, higher, mine, best, who, unit):
    if mine is None or best is None or best == 0:
        return [name, fmt(mine, unit), "—", "—", want, "not measured"]
    ratio = mine / best
    met = ratio >= limit if higher else ratio <= limit
    return [name, fmt(mine, unit), f"{fmt(best, unit)} ({who})", f"{ratio:.2f}×", want,
            "yes" if met else "**no**"]


if __name__ == "__main__":
    sys.exit(main())
