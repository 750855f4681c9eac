#!/bin/bash
# RTP through a media node: `switchyard bench rtp` on CPU 1 places CALLS G.711 calls
# (20 ms packets both ways) through, in turn:
#   - `switchyard media` on CPU 0 forwarding latched streams in the kernel (its eBPF
#     program at loopback's tc ingress; the default, `--kernel-forwarding auto`);
#   - the same node relaying in userspace only (`--kernel-forwarding off`);
#   - rtpengine (Debian's rtpengine-daemon, userspace forwarding, no kernel table) on
#     CPU 0;
#   - no relay: the phones send to each other (the baseline).
# Prints each report, each relay process's CPU and the generator thread's. Kernel
# forwarding runs in the softirq of the CPU that sent the packet, in the sending
# thread's context (the generator's), not in the node's threads: this kernel charges
# that softirq time to the generator's thread (no IRQ_TIME_ACCOUNTING), so a relay's
# whole cost is its own process's CPU plus the generator's (and ksoftirqd's) beyond the
# baseline's. (Per-CPU busy time from /proc/stat is tick-sampled and misses short
# bursts on this machine.)
#
# Usage: bench/rtp.sh [BIN]   (CALLS=1000 DURATION=10 RUNS=1; MEDIA_BIN=another build's
# binary runs the media node, to compare two relays with one generator; RT=1 runs the
# relays at real-time priority, SCHED_FIFO 50, as deploy/switchyard-media@.service can;
# RT_GENERATOR=1 runs the generator at SCHED_FIFO 40, so that its own late ticks, which a
# relay receives as bursts, do not count against the relay)
# Each run also probes CPUs 0 and 1 for stalls (a real-time thread per CPU that wakes
# every millisecond: how late it woke is time the CPU ran nothing, the hypervisor's or
# the kernel's), printed beside the delays.
# Everything runs on 127.0.0.1.
set -e
BIN=${1:-target/release/switchyard}
MEDIA_BIN=${MEDIA_BIN:-$BIN}
PRIO=""
[ "${RT:-0}" = 1 ] && PRIO="chrt -f 50"
GEN=""
[ "${RT_GENERATOR:-0}" = 1 ] && GEN="chrt -f 40"
CALLS=${CALLS:-1000}
DURATION=${DURATION:-10}
SECRET=rtp-bench-secret
OUT=$(mktemp -d)
echo "work files in $OUT" >&2
HZ=$(getconf CLK_TCK)
ticks_of() { awk '{print $14 + $15}' /proc/$1/stat; }
# ksoftirqd's CPU on both CPUs (softirq work deferred to it is nobody else's).
softirqd() { local t=0; for p in $(pgrep -x 'ksoftirqd/[01]'); do t=$((t + $(ticks_of $p))); done; echo $t; }

# One run through `switchyard media` with `--kernel-forwarding $1`, reported as $2.
through_switchyard() {
  local mode=$1 name=$2
  $PRIO taskset -c 0 "$MEDIA_BIN" media --control 127.0.0.1:0 --media-ports 30000-39999 \
    --cluster-secret "$SECRET" --metrics 127.0.0.1:0 --kernel-forwarding "$mode" \
    > "$OUT/media.out" 2> "$OUT/media-$name.log" &
  local media=$!
  for _ in $(seq 50); do grep -q '^ready' "$OUT/media.out" 2>/dev/null && break; sleep 0.1; done
  local control metrics
  control=$(awk '/^listening media-control/ {print $3}' "$OUT/media.out")
  metrics=$(awk '/^listening metrics/ {print $3}' "$OUT/media.out")
  local t0 t1 w0 w1 b0 b1
  t0=$(ticks_of $media); w0=$(date +%s.%N); b0=$(softirqd)
  $GEN taskset -c 1 "$BIN" bench rtp --media "$control" --cluster-secret "$SECRET" \
    --calls $CALLS --seconds $DURATION --probe-cpus 0,1 --json > "$OUT/$name.json"
  t1=$(ticks_of $media); w1=$(date +%s.%N); b1=$(softirqd)
  curl -s "$metrics/metrics" | grep -E '^switchyard_media_(relay_delay_seconds_bucket|kernel)' \
    > "$OUT/$name.metrics" || true
  kill $media; wait $media 2>/dev/null || true
  echo "$name $t0 $t1 $w0 $w1 $b0 $b1" >> "$OUT/cpu.txt"
}

for run in $(seq ${RUNS:-1}); do
  : > "$OUT/cpu.txt"
  through_switchyard auto kernel
  through_switchyard off userspace
  if command -v rtpengine > /dev/null; then
    $PRIO taskset -c 0 rtpengine --foreground --log-stderr --log-level=3 --interface=127.0.0.1 \
      --listen-ng=127.0.0.1:22299 --port-min=40000 --port-max=49999 --table=-1 2> "$OUT/rtpengine.log" &
    RTPE=$!; sleep 1
    R0=$(ticks_of $RTPE); V0=$(date +%s.%N); B0=$(softirqd)
    $GEN taskset -c 1 "$BIN" bench rtp --rtpengine 127.0.0.1:22299 --calls $CALLS --seconds $DURATION \
      --probe-cpus 0,1 --json > "$OUT/rtpengine.json"
    R1=$(ticks_of $RTPE); V1=$(date +%s.%N); B1=$(softirqd)
    kill $RTPE; wait $RTPE 2>/dev/null || true
    echo "rtpengine $R0 $R1 $V0 $V1 $B0 $B1" >> "$OUT/cpu.txt"
  else
    echo '{}' > "$OUT/rtpengine.json"
  fi
  B0=$(softirqd); V0=$(date +%s.%N)
  $GEN taskset -c 1 "$BIN" bench rtp --direct --calls $CALLS --seconds $DURATION --probe-cpus 0,1 \
    --json > "$OUT/direct.json"
  B1=$(softirqd); V1=$(date +%s.%N)
  echo "direct 0 0 $V0 $V1 $B0 $B1" >> "$OUT/cpu.txt"
  python3 - "$OUT" "$HZ" <<'PY'
import json, sys
out, hz = sys.argv[1], float(sys.argv[2])
runs = {}
for line in open(f"{out}/cpu.txt"):
    name, t0, t1, w0, w1, s0, s1 = line.split()
    wall = float(w1) - float(w0)
    runs[name] = {
        "process": (float(t1) - float(t0)) / hz / wall,
        "softirqd": (float(s1) - float(s0)) / hz / wall,
    }
def load(name):
    try:
        return json.load(open(f"{out}/{name}.json"))
    except FileNotFoundError:
        return {}
reports = {name: load(name) for name in ("kernel", "userspace", "rtpengine", "direct")}
direct = reports["direct"]
for name, r in reports.items():
    if not r:
        print(f"{name}: not run (rtpengine: apt-get install rtpengine-daemon)")
        continue
    print(f"{name:9} calls {r['calls']} sent {r['sent']} received {r['received']} lost {r['lost']} "
          f"{r['packets_per_second']:.0f} pkt/s  p50 {r['delay_p50_us']} µs  p99 {r['delay_p99_us']} µs  "
          f"p99.9 {r['delay_p999_us']} µs  max {r['delay_max_us']} µs (read); "
          f"to the socket p50 {r['kernel_delay_p50_us']} µs  p99 {r['kernel_delay_p99_us']} µs  "
          f"p99.9 {r['kernel_delay_p999_us']} µs  max {r['kernel_delay_max_us']} µs; "
          f"sender lag p99 {r['sender_lag_p99_us']} µs max {r['sender_lag_max_us']} µs")
    for c in r.get("cpus", []):
        print(f"          CPU {c['cpu']}: {c['stalls']} stalls over 200 µs, {c['stalled_ms']:.1f} ms in all, "
              f"longest {c['longest_stall_us']} µs" + ("" if c["probe_realtime"] else " (probe not real-time)"))
    cpu = runs.get(name)
    if cpu:
        print(f"          CPU: relay process {cpu['process'] * 100:.1f} %, generator thread "
              f"{r['generator_cpu'] * 100:.1f} %, ksoftirqd {cpu['softirqd'] * 100:.1f} % of one core")
def histogram(name):
    counts, streams = {}, None
    try:
        lines = open(f"{out}/{name}.metrics").read().splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        if line.startswith("switchyard_media_kernel_streams"):
            streams = line.split()[-1]
        elif "le=" in line:
            counts[line.split('le="')[1].split('"')[0]] = float(line.split()[-1])
    if not counts:
        return
    items = list(counts.items())
    total = items[-1][1]
    upto = lambda q: next(le for le, n in items if n >= q * total) if total else "-"
    print(f"{name}: in the node (its own histogram, userspace-relayed packets only): {total:.0f} packets, "
          f"p50 <= {upto(0.5)} s, p99 <= {upto(0.99)} s; streams in the kernel at the end: {streams}")
histogram("kernel")
histogram("userspace")
base = runs.get("direct")
for name in ("kernel", "userspace", "rtpengine"):
    r, cpu = reports[name], runs.get(name)
    if not r or not cpu:
        continue
    line = (f"{name}: added p50 {r['delay_p50_us'] - direct['delay_p50_us']} µs, "
            f"p99 {r['delay_p99_us'] - direct['delay_p99_us']} µs (read); to the socket added p50 "
            f"{r['kernel_delay_p50_us'] - direct['kernel_delay_p50_us']} µs, "
            f"p99 {r['kernel_delay_p99_us'] - direct['kernel_delay_p99_us']} µs; "
            f"relay process {cpu['process'] * 100:.1f} % of one core")
    if base:
        # Everything the relay cost, wherever it ran: its process, plus the generator's
        # thread and ksoftirqd beyond the baseline's (kernel forwarding runs in the
        # sender's softirq).
        extra = (cpu["process"] + r["generator_cpu"] - direct["generator_cpu"]
                 + cpu["softirqd"] - base["softirqd"])
        line += (f"; in all {extra * 100:.1f} % of one core, "
                 f"{r['packets_per_second'] / max(extra, 1e-9):.0f} relayed pkt/s per core")
    print(line)
PY
done
