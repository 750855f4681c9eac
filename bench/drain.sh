#!/bin/bash
# SIGTERM with calls up: serve (CPU 0, SQLite) carries 300 answered calls from
# `switchyard bench calls` (CPU 1, 100/s, held 10 s); 4 s in it gets SIGTERM. Prints how
# long it took to exit, the BYEs it could not send, its CDRs, and the generator's report
# (`hung_up_by_far_end`: calls whose phones got the server's BYE).
#
# Usage: bench/drain.sh [SERVER_BIN] [WORK_DIR]   (BENCH=... picks another generator binary;
# CALLS=, RATE=, HOLD_MS= and TERM_AFTER= change the load and when SIGTERM comes)
# Everything runs on 127.0.0.1.
BIN=${1:-target/release/switchyard}
OUT=${2:-$(mktemp -d)}
BENCH=${BENCH:-$BIN}
PORT=${PORT:-25080}
rm -rf "$OUT"; mkdir -p "$OUT/sy"
printf '[edge]\nallow = ["127.0.0.1"]\n' > "$OUT/sy.toml"
SWITCHYARD_LOG=info taskset -c 0 "$BIN" serve --data-dir "$OUT/sy" --config "$OUT/sy.toml" \
  --udp 127.0.0.1:$PORT --tcp off --tls off --ws off --wss off --api-listen 127.0.0.1:0 \
  > /dev/null 2> "$OUT/serve.log" &
SERVER=$!
sleep 2
taskset -c 1 "$BENCH" bench calls --target 127.0.0.1:$PORT --calls ${CALLS:-300} --rate ${RATE:-100} \
  --hold-ms ${HOLD_MS:-10000} --endings caller-bye --provision-store "sqlite://$OUT/sy/switchyard.db" \
  --json > "$OUT/report.json" 2> "$OUT/bench.err" &
GENERATOR=$!
sleep ${TERM_AFTER:-4}
T0=$(date +%s.%N)
kill -TERM $SERVER; wait $SERVER; RC=$?
T1=$(date +%s.%N)
echo "server exit rc=$RC after $(python3 -c "print(round($T1 - $T0, 3))") s"
echo "BYEs not sent: $(grep -ac 'request not sent' "$OUT/serve.log")"
python3 - "$OUT" <<'PY'
import json, sqlite3, sys
out = sys.argv[1]
db = sqlite3.connect(f"{out}/sy/switchyard.db")
print("CDRs:", db.execute("select disposition, hangup_side, count(*) from cdrs group by 1, 2").fetchall())
PY
# The generator gives up on calls it cannot end within about 32 s.
timeout 60 tail --pid=$GENERATOR -f /dev/null
python3 -c "import json,sys; r=json.load(open('$OUT/report.json')); print('generator:', {k: r.get(k) for k in ('attempted','by_status','hung_up_by_far_end')})" 2>/dev/null || echo "generator: no report"
