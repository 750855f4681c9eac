//! Transcoding a 20 ms G.711 payload (160 bytes) between the laws: through the 256-byte
//! tables the relay uses, beside the arithmetic through linear PCM it replaced.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_rtp::g711;

fn payload() -> [u8; 160] {
    // A spread of codes, as speech gives.
    std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
}

fn transcode(c: &mut Criterion) {
    let mut group = c.benchmark_group("g711_160_bytes");
    group.bench_function("table (switchyard)", |b| {
        let mut p = payload();
        b.iter(|| {
            g711::transcode(black_box(&mut p), &g711::ULAW_TO_ALAW);
            black_box(&p);
        })
    });
    group.bench_function("through linear (previous)", |b| {
        let mut p = payload();
        b.iter(|| {
            for x in black_box(&mut p).iter_mut() {
                // Not const-evaluated: the byte is only known at run time.
                *x = g711::linear_to_alaw(g711::ulaw_to_linear(*x));
            }
            black_box(&p);
        })
    });
    group.finish();
}

criterion_group!(benches, transcode);
criterion_main!(benches);
