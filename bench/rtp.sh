#!/bin/bash
# RTP through a media node: `switchyard media` alone on CPU 0, `switchyard bench rtp` on
# CPU 1 placing CALLS G.711 calls (20 ms packets both ways); then rtpengine (Debian's
# rtpengine-daemon, userspace forwarding, no kernel table) alone on CPU 0 with the same
# calls; then the same phones sending to each other without a relay (the baseline), in
# one run. Prints the reports, each relay's CPU over its run and relayed packets per
# second per core of CPU it used.
#
# Usage: bench/rtp.sh [BIN]   (CALLS=1000 DURATION=10 RUNS=1; MEDIA_BIN=another build's
# binary runs the media node, to compare two relays with one generator; RT=1 runs both
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
$PRIO taskset -c 0 "$MEDIA_BIN" media --control 127.0.0.1:0 --media-ports 30000-39999 \
  --cluster-secret "$SECRET" --metrics 127.0.0.1:0 > "$OUT/media.out" 2> "$OUT/media.log" &
MEDIA=$!
trap 'kill $MEDIA 2>/dev/null' EXIT
for _ in $(seq 50); do grep -q '^ready' "$OUT/media.out" 2>/dev/null && break; sleep 0.1; done
CONTROL=$(awk '/^listening media-control/ {print $3}' "$OUT/media.out")
METRICS=$(awk '/^listening metrics/ {print $3}' "$OUT/media.out")
# The node's own relay-delay histogram (a build without one prints nothing).
histogram() { curl -s "$METRICS/metrics" | grep '^switchyard_media_relay_delay_seconds_bucket' || true; }
ticks() { awk '{print $14 + $15}' /proc/$MEDIA/stat; }
HZ=$(getconf CLK_TCK)
for run in $(seq ${RUNS:-1}); do
  histogram > "$OUT/before.txt"
  T0=$(ticks); W0=$(date +%s.%N)
  $GEN taskset -c 1 "$BIN" bench rtp --media "$CONTROL" --cluster-secret "$SECRET" \
    --calls $CALLS --seconds $DURATION --probe-cpus 0,1 --json > "$OUT/relayed.json"
  T1=$(ticks); W1=$(date +%s.%N)
  histogram > "$OUT/after.txt"
  if command -v rtpengine > /dev/null; then
    $PRIO taskset -c 0 rtpengine --foreground --log-stderr --log-level=3 --interface=127.0.0.1 \
      --listen-ng=127.0.0.1:22299 --port-min=40000 --port-max=49999 --table=-1 2> "$OUT/rtpengine.log" &
    RTPE=$!; sleep 1
    ticks_of() { awk '{print $14 + $15}' /proc/$1/stat; }
    R0=$(ticks_of $RTPE); V0=$(date +%s.%N)
    $GEN taskset -c 1 "$BIN" bench rtp --rtpengine 127.0.0.1:22299 --calls $CALLS --seconds $DURATION \
      --probe-cpus 0,1 --json > "$OUT/rtpengine.json"
    R1=$(ticks_of $RTPE); V1=$(date +%s.%N)
    kill $RTPE; wait $RTPE 2>/dev/null
  else
    echo '{}' > "$OUT/rtpengine.json"; R0=0; R1=0; V0=0; V1=1
  fi
  $GEN taskset -c 1 "$BIN" bench rtp --direct --calls $CALLS --seconds $DURATION --probe-cpus 0,1 \
    --json > "$OUT/direct.json"
  python3 - "$OUT" "$T0" "$T1" "$W0" "$W1" "$HZ" "$R0" "$R1" "$V0" "$V1" <<'PY'
import json, sys
out, t0, t1, w0, w1, hz, r0, r1, v0, v1 = sys.argv[1], *map(float, sys.argv[2:])
relayed = json.load(open(f"{out}/relayed.json"))
rtpe = json.load(open(f"{out}/rtpengine.json"))
direct = json.load(open(f"{out}/direct.json"))
for r in (relayed, rtpe, direct):
    if not r:
        print("rtpengine: not installed (apt-get install rtpengine-daemon)")
        continue
    print(f"{r['mode']:9} calls {r['calls']} sent {r['sent']} received {r['received']} lost {r['lost']} "
          f"{r['packets_per_second']:.0f} pkt/s  p50 {r['delay_p50_us']} µs  p99 {r['delay_p99_us']} µs  "
          f"p99.9 {r['delay_p999_us']} µs  max {r['delay_max_us']} µs (read); "
          f"to the socket p50 {r['kernel_delay_p50_us']} µs  p99 {r['kernel_delay_p99_us']} µs  "
          f"p99.9 {r['kernel_delay_p999_us']} µs  max {r['kernel_delay_max_us']} µs; "
          f"sender lag p99 {r['sender_lag_p99_us']} µs max {r['sender_lag_max_us']} µs")
    for c in r.get("cpus", []):
        print(f"          CPU {c['cpu']}: {c['stalls']} stalls over 200 µs, {c['stalled_ms']:.1f} ms in all, "
              f"longest {c['longest_stall_us']} µs" + ("" if c["probe_realtime"] else " (probe not real-time)"))
def buckets(path):
    out = {}
    for line in open(path):
        le = line.split('le="')[1].split('"')[0]
        out[le] = float(line.split()[-1])
    return out
before, after = buckets(f"{out}/before.txt"), buckets(f"{out}/after.txt")
if after:
    counts = [(le, after[le] - before.get(le, 0)) for le in after]
    total = counts[-1][1]
    def upto(q):
        return next(le for le, n in counts if n >= q * total)
    print(f"switchyard, in the node (its own histogram, kernel receive stamp to send): "
          f"{total:.0f} packets, p50 <= {upto(0.5)} s, p99 <= {upto(0.99)} s, p99.9 <= {upto(0.999)} s")
for name, r, cpu in (("switchyard", relayed, (t1 - t0) / hz / (w1 - w0)),
                     ("rtpengine", rtpe, (r1 - r0) / hz / (v1 - v0))):
    if not r:
        continue
    print(f"{name}: added p50 {r['delay_p50_us'] - direct['delay_p50_us']} µs, "
          f"p99 {r['delay_p99_us'] - direct['delay_p99_us']} µs (read); to the socket added p50 "
          f"{r['kernel_delay_p50_us'] - direct['kernel_delay_p50_us']} µs, "
          f"p99 {r['kernel_delay_p99_us'] - direct['kernel_delay_p99_us']} µs; CPU {cpu * 100:.1f} % of one core, "
          f"{r['packets_per_second'] / max(cpu, 1e-9):.0f} relayed pkt/s per core")
PY
done
