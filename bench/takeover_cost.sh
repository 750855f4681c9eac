#!/bin/bash
# What takeover costs: serve on Redis (CPU 0) with `core.takeover` on, then off, each
# carrying `switchyard bench calls` (CPU 1, RATE calls/s, CALLS calls, held HOLD_MS,
# answered and hung up by the caller). Prints per run: the generator's setup times
# (p50/p99 ms), serve's CPU per call, and Redis commands per call (`INFO commandstats`
# deltas of SET and DEL, the record writes and deletes among them).
#
# Usage: bench/takeover_cost.sh [BIN]   (RATE=500 CALLS=5000 HOLD_MS=1000 RUNS=1)
# Everything runs on 127.0.0.1 (Redis at 127.0.0.1:6379).
BIN=${1:-target/release/switchyard}
RATE=${RATE:-500}; CALLS=${CALLS:-5000}; HOLD_MS=${HOLD_MS:-1000}
HZ=$(getconf CLK_TCK)
redis_count() { redis-cli info commandstats | awk -F'[:=,]' -v c="cmdstat_$1" '$1==c {print $3}'; }
for run in $(seq ${RUNS:-1}); do
for mode in true false; do
  OUT=$(mktemp -d); mkdir -p "$OUT/sy"
  printf '[edge]\nallow = ["127.0.0.1"]\n[state]\nredis_url = "redis://127.0.0.1:6379"\nprefix = "sybench%s:"\n[core]\ntakeover = %s\n' \
    "$RANDOM$RANDOM" "$mode" > "$OUT/sy.toml"
  taskset -c 0 "$BIN" serve --data-dir "$OUT/sy" --config "$OUT/sy.toml" --udp 127.0.0.1:25090 \
    --tcp off --tls off --ws off --wss off --api-listen 127.0.0.1:0 > /dev/null 2> "$OUT/serve.log" &
  SERVER=$!
  sleep 2
  # Provisioning and registration first (not measured), then the calls.
  SET0=$(redis_count set); DEL0=$(redis_count del); T0=$(awk '{print $14+$15}' /proc/$SERVER/stat)
  taskset -c 1 "$BIN" bench calls --target 127.0.0.1:25090 --calls $CALLS --rate $RATE \
    --hold-ms $HOLD_MS --endings caller-bye --provision-store "sqlite://$OUT/sy/switchyard.db" \
    --json > "$OUT/report.json" 2> "$OUT/bench.err"
  T1=$(awk '{print $14+$15}' /proc/$SERVER/stat); SET1=$(redis_count set); DEL1=$(redis_count del)
  kill -TERM $SERVER; wait $SERVER
  python3 - "$OUT/report.json" "$mode" "$CALLS" "$((T1 - T0))" "$HZ" "$((SET1 - SET0))" "$((DEL1 - DEL0))" <<'PY'
import json, sys
path, mode, calls, ticks, hz, sets, dels = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
r = json.load(open(path))
print(f"takeover={mode:5} failed {r.get('failed')} setup p50 {r['setup_p50_ms']:.2f} ms p99 {r['setup_p99_ms']:.2f} ms  "
      f"serve CPU {ticks / hz * 1e6 / calls:.0f} µs/call (incl. registration)  "
      f"Redis SET {sets / calls:.2f}/call DEL {dels / calls:.2f}/call")
PY
  rm -rf "$OUT"
done
done
