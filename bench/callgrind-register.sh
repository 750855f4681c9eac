#!/usr/bin/env bash
# Instructions per new registration in `switchyard serve`, counted by callgrind (repeatable
# where wall-clock CPU figures move 40 % between runs): serve runs under valgrind, the
# counters are zeroed once it answers, N phones register at a paced rate (full digest
# handshake), the counters are dumped and the top functions printed.
#
# Usage: bench/callgrind-register.sh [binary] [phones] [rate]
# CALLGRIND_KEEP=FILE keeps the dump (for callgrind_annotate or kcachegrind).
# Everything runs on 127.0.0.1. Needs valgrind (callgrind_control, callgrind_annotate).
set -euo pipefail
bin=$(realpath "${1:-target/release/switchyard}")
phones=${2:-1000}
rate=${3:-100}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
mkdir -p "$work/data"
printf '[edge]\nallow = ["127.0.0.1"]\n' > "$work/sy.toml"
"$bin" bench register-storm --no-storm --quiet --phones "$phones" --tenants 50 \
    --provision-store "sqlite://$work/data/switchyard.db" > /dev/null
SWITCHYARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$bin" serve --data-dir "$work/data" --config "$work/sy.toml" --udp "127.0.0.1:$port" \
    --tcp off --tls off --ws off --wss off --api-listen 127.0.0.1:0 \
    > "$work/serve.log" 2>&1 &
serve=$!
for _ in $(seq 1 120); do
    if "$bin" bench register-storm --quiet --phones 1 --tenants 1 --target "127.0.0.1:$port" \
        --deadline-secs 1 --json > /dev/null 2>&1; then break; fi
    sleep 1
done
callgrind_control -z "$serve" > /dev/null
"$bin" bench register-storm --json --quiet --phones "$phones" --tenants 50 --rate "$rate" \
    --target "127.0.0.1:$port" --deadline-secs 60 > "$work/report.json"
callgrind_control -d "$serve" > /dev/null
sleep 1
dump=$(ls "$work"/cg.out.* | tail -1)
if [ -n "${CALLGRIND_KEEP:-}" ]; then cp "$dump" "$CALLGRIND_KEEP"; fi
total=$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
python3 - "$work/report.json" "$total" "$phones" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
total, phones = int(sys.argv[2]), int(sys.argv[3])
print(f"registered {report['registered']} of {phones}, failed {report['failed']}")
print(f"instructions: {total:,} in all, {total // phones:,} per registration")
EOF
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/file:function/,$p' | head -60
