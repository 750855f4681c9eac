#!/usr/bin/env bash
# Seeds fuzz/corpus/<target> from the repository's test data (RFC 4475 messages, their URIs and
# digest headers, the RFC 7616 example). Run from anywhere; idempotent.
set -euo pipefail
cd "$(dirname "$0")"
data=${SWITCHYARD_TESTDATA:-../testdata}/rfc4475
mkdir -p corpus/datagram corpus/stream corpus/uri corpus/digest
cp "$data"/*.dat corpus/datagram/
for f in "$data"/*.dat; do
  # stream target: first byte is the chunk size
  { printf '\x40'; cat "$f"; } > "corpus/stream/$(basename "$f")"
done
grep -aho 'sips\?:[^ >"]*' "$data"/*.dat | sort -u | awk '{ print > ("corpus/uri/u" NR) }'
grep -ah 'Authorization\|WWW-Authenticate' "$data"/*.dat | sed 's/^[^:]*: *//' | awk '{ print > ("corpus/digest/d" NR) }'
printf '%s' 'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"' > corpus/digest/rfc7616
echo "seeded: $(ls corpus/datagram | wc -l) datagram, $(ls corpus/stream | wc -l) stream, $(ls corpus/uri | wc -l) uri, $(ls corpus/digest | wc -l) digest"
