//! A loop over the `sip_parse` workload for profilers (`perf record`, `valgrind
//! --tool=callgrind`): `cargo run --release -p switchyard-bench --example profile_parse -- 1000000`.

use std::hint::black_box;

use bytes::Bytes;
use switchyard_sip::Message;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut total = 0usize;
    for _ in 0..n {
        let m = Message::parse_datagram(Bytes::from_static(switchyard_bench::REGISTER.as_bytes()))
            .expect("valid");
        black_box(m.routing_keys().expect("keys"));
        total += m.row_count();
    }
    println!("{total}");
}
