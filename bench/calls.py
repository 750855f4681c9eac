#!/usr/bin/env python3
"""Calls per second through edge, core and media on one core, engines side by side.

For each rate, each server binary in turn: `serve` pinned to CPU 0 on a fresh SQLite data
directory (127.0.0.1 allow-listed, as a load generator needs), `switchyard bench calls` on
CPU 1 placing `--calls` calls at that rate (INVITE with SDP, 407, authenticated INVITE,
answer or failure, ACK, hold, BYE; every way a call ends), and the server's CPU time read
from /proc before and after. A rate counts as clean when every call completed as its ending
asked. Prints one JSON line per run and a table; everything stays on 127.0.0.1.

Usage: bench/calls.py --server new=target/release/switchyard --server old=/tmp/sy-old \
         [--rates 500,1000,1500] [--calls 6000] [--hold-ms 0] [--repeat 1]
The generator is the first server binary unless --bench names another. `--plain NAME`
starts that server without the allow-list (builds from before per-source limits, such as
9657c92, refuse the key and need none).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the comm field they are 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_one(name, binary, bench, rate, calls, hold_ms, port, plain=False):
    work = tempfile.mkdtemp(prefix=f"calls-{name}-")
    data = os.path.join(work, "sy")
    os.makedirs(data)
    config = os.path.join(work, "sy.toml")
    with open(config, "w") as f:
        # Builds from before per-source limits know no allow-list (and need none).
        f.write("" if plain else '[edge]\nallow = ["127.0.0.1"]\n')
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen(
        ["taskset", "-c", "0", binary, "serve", "--data-dir", data, "--config", config,
         "--udp", f"127.0.0.1:{port}", "--tcp", "off", "--tls", "off", "--ws", "off",
         "--wss", "off", "--api-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "SWITCHYARD_LOG": "warn"})
    try:
        time.sleep(2)
        # Provision first (a short run), so the measured run starts on a warm server.
        subprocess.run(
            ["taskset", "-c", "1", bench, "bench", "calls", "--target", f"127.0.0.1:{port}",
             "--calls", "20", "--rate", "20", "--hold-ms", "0",
             "--provision-store", f"sqlite://{data}/switchyard.db", "--json"],
            check=True, capture_output=True, timeout=120)
        before = cpu_seconds(server.pid)
        started = time.time()
        out = subprocess.run(
            ["taskset", "-c", "1", bench, "bench", "calls", "--target", f"127.0.0.1:{port}",
             "--calls", str(calls), "--rate", str(rate), "--hold-ms", str(hold_ms), "--json"],
            capture_output=True, timeout=600)
        wall = time.time() - started
        used = cpu_seconds(server.pid) - before
        # The generator exits non-zero when calls failed; its report is still on stdout.
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            report = {"completed": 0, "failed": calls, "by_status": {}, "setup_p50_ms": 0,
                      "setup_p99_ms": 0, "setup_max_ms": 0, "retransmissions": 0,
                      "error": out.stderr.decode(errors="replace")[-500:]}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "server": name,
        "rate": rate,
        "calls": calls,
        "hold_ms": hold_ms,
        "completed": report["completed"],
        "failed": report["failed"],
        "by_status": report["by_status"],
        "setup_p50_ms": report["setup_p50_ms"],
        "setup_p99_ms": report["setup_p99_ms"],
        "setup_max_ms": report["setup_max_ms"],
        "retransmissions": report["retransmissions"],
        "server_cpu_s": round(used, 3),
        "cpu_per_call_us": round(used / calls * 1e6, 1),
        "server_cpu_share": round(used / wall, 3),
        **({"error": report["error"]} if "error" in report else {}),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", action="append", required=True, help="name=binary")
    p.add_argument("--bench", help="the generator's binary")
    p.add_argument("--rates", default="500,1000,1500,2000")
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--hold-ms", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--port", type=int, default=25090)
    p.add_argument("--plain", action="append", default=[],
                   help="a server name whose build predates [edge] allow")
    a = p.parse_args()
    servers = [s.split("=", 1) for s in a.server]
    bench = a.bench or servers[0][1]
    results = []
    for _ in range(a.repeat):
        for rate in [int(r) for r in a.rates.split(",")]:
            for name, binary in servers:
                r = run_one(name, binary, bench, rate, a.calls, a.hold_ms, a.port,
                            plain=name in a.plain)
                print(json.dumps(r), flush=True)
                results.append(r)
    print(f"\n{'server':>8} {'rate':>6} {'done':>6} {'failed':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'CPU/call':>9} {'CPU':>6}", file=sys.stderr)
    for r in results:
        print(f"{r['server']:>8} {r['rate']:>6} {r['completed']:>6} {r['failed']:>6} "
              f"{r['setup_p50_ms']:>8.2f} {r['setup_p99_ms']:>8.2f} "
              f"{r['cpu_per_call_us']:>7.0f}us {r['server_cpu_share']:>6.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
