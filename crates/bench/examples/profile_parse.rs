//! A loop over the `sip_parse` workload for profilers (`perf record`, `valgrind
//! --tool=callgrind`): `cargo run --release -p switchyard-bench --example profile_parse -- 1000000`.

use std::hint::black_box;

use bytes::Bytes;
use switchyard_sip::Message;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let mut total = 0usize;
    for _ in 0..n {
        let m = Message::parse_datagram(Bytes::from_static(switchyard_bench::REGISTER.as_bytes())).expect("valid");
        let via = m.top_via().expect("Via");
        let from = m.from_header().expect("From");
        let uri = m.request_uri().expect("request").expect("uri");
        black_box((via.branch(), via.host, m.call_id(), m.cseq().map(|c| c.seq), from.tag(), uri.host(), m.max_forwards()));
        total += m.row_count();
    }
    println!("{total}");
}
