#!/usr/bin/env python3
"""Registration storm, side by side: Kamailio 5 (Debian package, kamailio.cfg here) and
`switchyard serve`, one after the other, on the same phones, each server pinned to CPU 0
and the load generator (`switchyard bench register-storm`) to CPU 1.

For each server (CPU runs alternate between the two):
  - the storm: every phone at once; completion time, retransmissions, OPTIONS answered,
    and the refresh spread its granted expiries imply;
  - CPU per new registration at a paced rate (full digest handshake, fresh server);
  - the highest paced rate with no retransmission and no failure, from a list of rates.

Usage: bench/kamailio/run.py [--bin target/release/switchyard] [--phones 10000]
       [--tenants 500] [--rate 2000] [--repeat 3] [--rates 2000,4000,...] [--json OUT]
Everything runs on 127.0.0.1. Needs kamailio (Debian package) and taskset.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except FileNotFoundError:
            pass
    return total / CLK_TCK


def tree(pid):
    pids = [pid]
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for child in out.split():
        pids.extend(tree(int(child)))
    return pids


class Kamailio:
    name = "kamailio"

    def __init__(self, work, port, cfg="kamailio.cfg"):
        self.work, self.port, self.cfg, self.proc = work, port, cfg, None
        self.target = f"127.0.0.1:{port}"

    def start(self):
        cfg = open(os.path.join(HERE, self.cfg)).read()
        cfg = cfg.replace("@DB@", os.path.join(self.work, "db")).replace("@LISTEN@", self.target)
        path = os.path.join(self.work, "kamailio.cfg")
        open(path, "w").write(cfg)
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", "kamailio", "-DD", "-E", "-f", path, "-P",
             os.path.join(self.work, "kamailio.pid"), "-m", "512", "-M", "64"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, "kamailio.log"), "a"),
            start_new_session=True)
        wait_for_options(self.target)

    def pids(self):
        return tree(self.proc.pid)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        t0 = time.time()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return time.time() - t0


class Switchyard:
    name = "switchyard"

    def __init__(self, work, port, binary):
        self.work, self.port, self.bin, self.proc = work, port, binary, None
        self.target = f"127.0.0.1:{port}"

    def start(self):
        data = os.path.join(self.work, "sy-run")
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(os.path.join(self.work, "sy"), data)
        # The generator is one address sending for 10,000 phones: allow-listed, as a large
        # NAT would be (Kamailio's configuration has no per-source limit either).
        config = os.path.join(self.work, "switchyard.toml")
        with open(config, "w") as f:
            f.write('[edge]\nallow = ["127.0.0.1"]\n')
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", self.bin, "serve", "--data-dir", data, "--config", config,
             "--udp", self.target, "--tcp", "off", "--tls", "off", "--ws", "off", "--wss", "off",
             "--api-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, "switchyard.log"), "a"),
            env=dict(os.environ, SWITCHYARD_LOG="warn"))
        wait_for_options(self.target)

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        t0 = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        return time.time() - t0


def write_ha1_table(work, htable):
    """Kamailio's db_text table of HA1s (work/db) from the generator's `KEY=>HA1` lines."""
    with open(os.path.join(work, "db", "version"), "w") as f:
        f.write("table_name(str) table_version(int)\nha1:2\n")
    with open(os.path.join(work, "db", "ha1"), "w") as f:
        f.write("key_name(str) key_type(int) value_type(int) key_value(str) expires(int)\n")
        for line in open(htable):
            key, ha1 = line.strip().split("=>")
            f.write(f"{key}:0:0:{ha1}:0\n")


def wait_for_options(target):
    import socket
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    local = s.getsockname()
    for i in range(100):
        msg = (f"OPTIONS sip:ping@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bKw{i}\r\n"
               f"Max-Forwards: 70\r\nTo: <sip:ping@{target}>\r\nFrom: <sip:w@{target}>;tag=w\r\n"
               f"Call-ID: wait-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        s.sendto(msg.encode(), (host, int(port)))
        try:
            if s.recv(4096).startswith(b"SIP/2.0 200"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"no answer to OPTIONS at {target}")


def storm(args, server, rate=None):
    cmd = ["taskset", "-c", "1", args.bin, "bench", "register-storm", "--json", "--quiet",
           "--target", server.target, "--phones", str(args.phones), "--tenants", str(args.tenants),
           "--deadline-secs", "60"]
    if rate:
        cmd += ["--rate", str(rate)]
    before = cpu_seconds(server.pids())
    out = subprocess.run(cmd, capture_output=True, text=True)
    after = cpu_seconds(server.pids())
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"no report from the generator: {out.stdout}\n{out.stderr}")
    report["server_cpu_secs"] = after - before
    return report


def measure(args, server):
    result = {}
    server.start()
    result["storm"] = storm(args, server)
    # SIGTERM right after a second storm starts: under load.
    gen = subprocess.Popen(["taskset", "-c", "1", args.bin, "bench", "register-storm", "--quiet",
                            "--target", server.target, "--phones", str(args.phones),
                            "--tenants", str(args.tenants), "--deadline-secs", "10"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    result["sigterm_under_load_secs"] = server.stop()
    gen.kill()
    gen.wait()

    best = None
    for rate in args.rates:
        server.start()
        r = storm(args, server, rate)
        server.stop()
        clean = r["failed"] == 0 and r["retransmissions"] == 0
        result.setdefault("rates", []).append(
            {"rate": rate, "retransmissions": r["retransmissions"], "failed": r["failed"],
             "completion_secs": r["completion_secs"]})
        if not clean:
            break
        best = rate
    result["highest_zero_loss_rate"] = best
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/switchyard")
    p.add_argument("--phones", type=int, default=10000)
    p.add_argument("--tenants", type=int, default=500)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--rates", default="2000,4000,8000,12000,16000,24000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    args.bin = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="sy-kamailio-")
    os.makedirs(os.path.join(work, "sy"))
    os.makedirs(os.path.join(work, "db"))
    htable = os.path.join(work, "htable.txt")
    subprocess.run([args.bin, "bench", "register-storm", "--phones", str(args.phones),
                    "--tenants", str(args.tenants), "--no-storm", "--quiet",
                    "--provision-store", f"sqlite://{work}/sy/switchyard.db",
                    "--kamailio-htable", htable], check=True)
    write_ha1_table(work, htable)

    results = {}
    servers = (Kamailio(work, 25060), Switchyard(work, 25070, args.bin))
    for server in servers:
        print(f"== {server.name}", file=sys.stderr)
        results[server.name] = measure(args, server)
    # CPU per registration: paced runs on a fresh server each, the two servers taking
    # turns (this machine's figures drift from run to run); the median of each is kept
    # with every run.
    runs = {server.name: [] for server in servers}
    for _ in range(args.repeat):
        for server in servers:
            server.start()
            r = storm(args, server, args.rate)
            server.stop()
            r["cpu_us_per_registration"] = r["server_cpu_secs"] * 1e6 / max(r["registered"], 1)
            runs[server.name].append(r)
    for server in servers:
        rs = sorted(runs[server.name], key=lambda r: r["cpu_us_per_registration"])
        paced = dict(rs[len(rs) // 2])
        paced["cpu_us_per_registration_runs"] = [r["cpu_us_per_registration"] for r in runs[server.name]]
        results[server.name]["paced"] = paced
    for server in servers:
        s, paced = results[server.name]["storm"], results[server.name]["paced"]
        print(f"{server.name}: storm {s['registered']}/{s['phones']} in {s['completion_secs']:.3f} s, "
              f"{s['retransmissions']} retransmissions, probes {s['probes_answered']}/{s['probes_sent']}, "
              f"refresh max/mean {s['refresh']['max_over_mean']:.2f} over {s['refresh']['window_secs']} s; "
              f"SIGTERM under load {results[server.name]['sigterm_under_load_secs']}; "
              f"paced {args.rate}/s: {paced['cpu_us_per_registration']:.1f} us CPU per registration "
              f"(median of {paced['cpu_us_per_registration_runs']}); "
              f"highest zero-loss rate {results[server.name]['highest_zero_loss_rate']}", file=sys.stderr)
    k, s = results["kamailio"], results["switchyard"]
    results["ratio_cpu_switchyard_over_kamailio"] = (
        s["paced"]["cpu_us_per_registration"] / k["paced"]["cpu_us_per_registration"])
    print(f"CPU per registration, switchyard / kamailio: {results['ratio_cpu_switchyard_over_kamailio']:.2f}",
          file=sys.stderr)
    text = json.dumps(results, indent=2)
    if args.json:
        open(args.json, "w").write(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
