//! `sip_parse`: parse plus extraction of the routing keys an edge reads from every message
//! (top Via branch and sent-by, Call-ID, CSeq, From tag, Request-URI host, Max-Forwards),
//! for ours and, in the same run, rsip 0.4 and rsipstack's parser as baselines; then
//! serialising an edited message (Via inserted, Max-Forwards decremented).
//!
//! Run: `cargo bench -p switchyard-bench --bench sip_parse`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use switchyard_bench::{INVITE, REGISTER};
use switchyard_sip::Message;
use switchyard_sip::build::Editor;

/// Ours: lazy parse, then only the rows the keys live in are read.
fn ours(data: &'static [u8]) -> usize {
    let m = Message::parse_datagram(Bytes::from_static(data)).expect("valid input");
    black_box(m.routing_keys().expect("keys"));
    m.row_count()
}

/// Ours with the full typed decoders (From and the Request-URI validated completely), for
/// comparison: what the keys cost when everything they sit in is checked too.
fn ours_full(data: &'static [u8]) -> usize {
    let m = Message::parse_datagram(Bytes::from_static(data)).expect("valid input");
    let via = m.top_via().expect("Via");
    let call_id = m.call_id().expect("Call-ID");
    let cseq = m.cseq().expect("CSeq").seq;
    let from = m.from_header().expect("From");
    let uri = m.request_uri().expect("request").expect("Request-URI");
    let mf = m.max_forwards().expect("Max-Forwards");
    black_box((
        via.branch(),
        via.host,
        via.port,
        call_id,
        cseq,
        from.tag(),
        uri.host(),
        mf,
    ));
    m.row_count()
}

fn rsip_keys(data: &'static [u8]) -> usize {
    use rsip::prelude::*;
    let req = rsip::Request::try_from(data).expect("rsip parses");
    let via = req.via_header().expect("Via").typed().expect("typed Via");
    let call_id = req.call_id_header().expect("Call-ID").value().to_owned();
    let cseq = req
        .cseq_header()
        .expect("CSeq")
        .typed()
        .expect("typed CSeq")
        .seq;
    let from_tag = req.from_header().expect("From").tag().expect("tag");
    let host = req.uri.host_with_port.host.clone();
    let mf = req
        .max_forwards_header()
        .expect("Max-Forwards")
        .num()
        .expect("number");
    black_box((
        via.branch().cloned(),
        via.uri.host_with_port,
        call_id,
        cseq,
        from_tag,
        host,
        mf,
    ));
    req.headers.iter().count()
}

fn rsipstack_keys(data: &'static [u8]) -> usize {
    use rsipstack::sip::headers::untyped::ToTypedHeader;
    use rsipstack::sip::message::{HeadersExt, SipMessage};
    let SipMessage::Request(req) =
        rsipstack::sip::parser::parse_message(data).expect("rsipstack parses")
    else {
        unreachable!("inputs are requests")
    };
    let via = req
        .top_via_header()
        .expect("Via")
        .typed()
        .expect("typed Via");
    let call_id = req.call_id_header().expect("Call-ID").value().to_owned();
    let cseq = req
        .cseq_header()
        .expect("CSeq")
        .typed()
        .expect("typed CSeq")
        .seq;
    let from_tag = req.from_header().expect("From").tag().expect("tag");
    let host = req.uri.host_with_port.host.clone();
    let mf = req
        .max_forwards_header()
        .expect("Max-Forwards")
        .value()
        .trim()
        .parse::<u32>()
        .expect("number");
    black_box((
        via.branch().cloned(),
        via.uri.host_with_port,
        call_id,
        cseq,
        from_tag,
        host,
        mf,
    ));
    req.headers.iter().count()
}

fn parse_and_keys(c: &mut Criterion) {
    for (name, text) in [("register", REGISTER), ("invite_1k", INVITE)] {
        let data = text.as_bytes();
        // The three must agree on what they read before their speed means anything.
        assert_eq!(ours(data), rsip_keys(data));
        assert_eq!(ours(data), rsipstack_keys(data));
        assert_eq!(ours(data), ours_full(data));
        let mut g = c.benchmark_group(format!("sip_parse/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("switchyard", |b| b.iter(|| ours(black_box(data))));
        g.bench_function("switchyard_full_decode", |b| {
            b.iter(|| ours_full(black_box(data)))
        });
        g.bench_function("rsipstack", |b| b.iter(|| rsipstack_keys(black_box(data))));
        g.bench_function("rsip", |b| b.iter(|| rsip_keys(black_box(data))));
        g.finish();
    }
}

fn serialise_edited(c: &mut Criterion) {
    const VIA: &str = "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKedge7f3a9c";
    let mut g = c.benchmark_group("sip_serialise_edited/invite_1k");
    g.throughput(Throughput::Elements(1));
    let parsed = Message::parse_datagram(Bytes::from_static(INVITE.as_bytes())).expect("valid");
    g.bench_function("switchyard", |b| {
        b.iter(|| {
            Editor::new(black_box(&parsed))
                .push_via(VIA)
                .decrement_max_forwards()
                .expect("Max-Forwards above 0")
                .write()
        })
    });
    {
        use rsipstack::sip::headers::{Header, MaxForwards, Via};
        use rsipstack::sip::message::SipMessage;
        let SipMessage::Request(req) =
            rsipstack::sip::parser::parse_message(INVITE.as_bytes()).expect("parses")
        else {
            unreachable!()
        };
        g.bench_function("rsipstack", |b| {
            b.iter(|| {
                let mut r = black_box(&req).clone();
                r.headers.push_front(Header::Via(Via::new(VIA)));
                for h in r.headers.iter_mut() {
                    if let Header::MaxForwards(mf) = h {
                        let n: u32 = mf.value().trim().parse().expect("number");
                        *mf = MaxForwards::new((n - 1).to_string());
                    }
                }
                r.to_bytes()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse_and_keys, serialise_edited);
criterion_main!(benches);
