#!/usr/bin/env python3
"""Calls per second for scale: Kamailio 5 as a stateless proxy (calls.cfg here) beside
`switchyard serve`, one after the other, each pinned to CPU 0, the same generator
(`switchyard bench calls`: INVITE with SDP, 407, authenticated INVITE, answer or
failure, ACK, hold, BYE; every way a call ends) on CPU 1.

Kamailio relays one leg's signalling without media; Switchyard ends both legs and
anchors their RTP. The figures are reported side by side, not adjusted.

Usage: bench/kamailio/calls.py [--bin target/release/switchyard]
         [--rates 1000,2000,3000] [--calls 6000] [--hold-ms 1000]
Everything runs on 127.0.0.1. Needs kamailio (Debian package) and taskset.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import Kamailio, Switchyard, cpu_seconds, write_ha1_table  # noqa: E402

TENANTS, PER_TENANT = 10, 20


def generate(args, target, calls, rate, hold_ms, extra=()):
    return subprocess.run(
        ["taskset", "-c", "1", args.bin, "bench", "calls", "--target", target,
         "--tenants", str(TENANTS), "--per-tenant", str(PER_TENANT),
         "--calls", str(calls), "--rate", str(rate), "--hold-ms", str(hold_ms), "--json",
         *extra],
        capture_output=True, timeout=600)


def run_one(args, server, rate):
    server.start()
    try:
        # Switchyard enforces the tenants' call caps: the warm-up lifts them in its store.
        extra = ()
        if isinstance(server, Switchyard):
            extra = ("--provision-store", f"sqlite://{server.work}/sy-run/switchyard.db")
        warm = generate(args, server.target, 20, 20, 0, extra)
        if warm.returncode != 0:
            print(f"warm-up failed on {server.name}: {warm.stdout[-300:]!r}"
                  f" {warm.stderr[-300:]!r}", file=sys.stderr)
        before = cpu_seconds(server.pids())
        out = generate(args, server.target, args.calls, rate, args.hold_ms)
        used = cpu_seconds(server.pids()) - before
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            report = {"completed": 0, "failed": args.calls, "setup_p50_ms": 0,
                      "setup_p99_ms": 0, "error": out.stderr.decode(errors="replace")[-300:]}
    finally:
        server.stop()
    return {
        "server": server.name, "rate": rate, "calls": args.calls, "hold_ms": args.hold_ms,
        "completed": report.get("completed"), "failed": report.get("failed"),
        "by_status": report.get("by_status"), "setup_p50_ms": report.get("setup_p50_ms"),
        "setup_p99_ms": report.get("setup_p99_ms"),
        "retransmissions": report.get("retransmissions"),
        "server_cpu_s": round(used, 2),
        "cpu_per_call_us": round(used / args.calls * 1e6, 1),
        "error": report.get("error"),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/switchyard")
    p.add_argument("--rates", default="1000,2000,3000")
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--hold-ms", type=int, default=1000)
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="sy-kamailio-calls-")
    os.makedirs(os.path.join(work, "sy"))
    os.makedirs(os.path.join(work, "db"))
    # The generator's phones: provisioned in Switchyard's store, their HA1s for Kamailio.
    htable = os.path.join(work, "htable.txt")
    subprocess.run([args.bin, "bench", "register-storm", "--phones", str(TENANTS * PER_TENANT),
                    "--tenants", str(TENANTS), "--no-storm", "--quiet",
                    "--provision-store", f"sqlite://{work}/sy/switchyard.db",
                    "--kamailio-htable", htable], check=True)
    write_ha1_table(work, htable)
    servers = (Kamailio(work, 25160, cfg="calls.cfg"), Switchyard(work, 25170, args.bin))
    rows = []
    for rate in [int(r) for r in args.rates.split(",")]:
        for server in servers:
            row = run_one(args, server, rate)
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(1)
    print(f"\n{'server':>10} {'rate':>6} {'done':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU/call':>9}")
    for r in rows:
        print(f"{r['server']:>10} {r['rate']:>6} {r['completed']!s:>6} {r['failed']!s:>6} "
              f"{r['setup_p50_ms'] or 0:>8.2f} {r['setup_p99_ms'] or 0:>8.2f} "
              f"{r['cpu_per_call_us']:>7.0f}us")


if __name__ == "__main__":
    main()
