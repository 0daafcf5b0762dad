#!/usr/bin/env python3
"""Memory per idle session: opens N mutually authenticated TLS sessions to a running
pgtunnel gateway, keeps them idle, and reports the gateway's resident memory growth
per session (VmRSS from /proc, before and after, measured in the same run).

Usage: loadtest/idle_sessions.py --gateway 127.0.0.1:6543 --pid PID --cert C --key K
       --ca CA [--service main] [--sessions 10000] [--concurrency 200] [--hold 5]

The gateway's upstream must accept that many connections (see loadtest/idle.sh, which
starts a holding upstream, the gateway and this script together). Bounded: it opens
exactly N sessions, holds them for --hold seconds, then closes them all.
"""
import argparse
import asyncio
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_one(host, port, ctx, service, sem, writers, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=service), 30)
            writers.append(writer)
        except Exception as exc:  # counted and reported, never silently dropped
            errors.append(repr(exc))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--service", default="main")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--hold", type=float, default=5.0)
    a = p.parse_args()
    host, port = a.gateway.rsplit(":", 1)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["pgtunnel"])
    # The gateway certificate names the host, the SNI names the service.
    ctx.check_hostname = False

    before = rss_kib(a.pid)
    writers, errors = [], []
    sem = asyncio.Semaphore(a.concurrency)
    started = time.monotonic()
    await asyncio.gather(*(open_one(host, int(port), ctx, a.service, sem, writers, errors)
                           for _ in range(a.sessions)))
    opened = time.monotonic() - started
    await asyncio.sleep(a.hold)
    after = rss_kib(a.pid)
    for w in writers:
        w.close()
    print(f"sessions opened: {len(writers)} of {a.sessions} in {opened:.1f} s, errors: {len(errors)}")
    if errors:
        print(f"first error: {errors[0]}")
    print(f"gateway VmRSS: before {before} KiB, after {after} KiB")
    if writers:
        print(f"per idle session: {(after - before) / len(writers):.1f} KiB")
    return 0 if len(writers) == a.sessions else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
