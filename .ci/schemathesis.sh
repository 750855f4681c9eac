#!/usr/bin/env bash
# Runs schemathesis (PyPI) against the OpenAPI document served by `switchyard serve --demo`:
# no 5xx for any generated request; every response matches the documented schema, status
# codes, content types and headers; requests that violate the schema are refused.
# (positive_data_acceptance is not run: some rules, such as a tenant's domain being a DNS
# name or an extension's target existing, are not expressible in the schema.)
set -euo pipefail
bin=${1:?usage: schemathesis.sh PATH_TO_SWITCHYARD}
data=$(mktemp -d)
out="$data/serve.out"
"$bin" serve --demo --data-dir "$data" --udp 127.0.0.1:0 --tcp off --tls off --ws off --wss off \
  --api-listen 127.0.0.1:0 >"$out" 2>"$data/serve.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do grep -q '^ready$' "$out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready$' "$out" || { echo "serve did not start"; cat "$data/serve.err"; exit 1; }
api=$(sed -n 's/^listening API //p' "$out")
key=$(sed -n 's/^demo operator API key: //p' "$out")
# Revoking keys is left to the API tests: a generated DELETE /v1/api-keys/{key_id} can
# revoke the very key this run sends, and every later request would only test the 401.
extra=(--exclude-operation-id revoke_api_key "${@:2}")
schemathesis run "$api/openapi.json" -H "Authorization: Bearer $key" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance,negative_data_rejection --max-examples 50 --seed 1 "${extra[@]}"
