//! Request parser and reply scanner micro-benchmarks: ns per request for a 16-deep
//! pipeline of GETs and of SETs with 100-byte values, parsed from one buffer.
//!
//! Run: `cargo bench --bench resp`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cutover::resp::{Parsed, ReplyScanner, RequestLimits, RequestParser};

/// 16 pipelined requests made by `one(i)`.
fn pipeline(one: impl Fn(usize) -> Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..16 {
        let args = one(i);
        out.extend(format!("*{}\r\n", args.len()).into_bytes());
        for a in args {
            out.extend(format!("${}\r\n", a.len()).into_bytes());
            out.extend(a);
            out.extend(b"\r\n");
        }
    }
    out
}

fn parse_all(input: &[u8]) -> usize {
    let mut parser = RequestParser::new(RequestLimits::default());
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Ok(Some(Parsed::Request(r))) = parser.next(&mut buf) {
        n += r.argc();
    }
    n
}

fn requests(c: &mut Criterion) {
    let gets = pipeline(|i| vec![b"GET".to_vec(), format!("key:{i:08}").into_bytes()]);
    let sets = pipeline(|i| {
        vec![
            b"SET".to_vec(),
            format!("key:{i:08}").into_bytes(),
            vec![b'v'; 100],
        ]
    });
    let mut group = c.benchmark_group("request_parser_pipeline16");
    group.throughput(Throughput::Elements(16));
    group.bench_function("get", |b| b.iter(|| parse_all(black_box(&gets))));
    group.bench_function("set_100b", |b| b.iter(|| parse_all(black_box(&sets))));
    group.finish();
}

fn replies(c: &mut Criterion) {
    let mut bulk = Vec::new();
    for _ in 0..16 {
        bulk.extend(b"$100\r\n");
        bulk.extend(vec![b'v'; 100]);
        bulk.extend(b"\r\n");
    }
    let oks = b"+OK\r\n".repeat(16);
    let scan_all = |input: &[u8]| {
        let mut scanner = ReplyScanner::default();
        let mut at = 0;
        while let Ok(Some(n)) = scanner.scan(&input[at..]) {
            at += n;
        }
        at
    };
    let mut group = c.benchmark_group("reply_scanner_pipeline16");
    group.throughput(Throughput::Elements(16));
    group.bench_function("ok", |b| b.iter(|| scan_all(black_box(&oks))));
    group.bench_function("bulk_100b", |b| b.iter(|| scan_all(black_box(&bulk))));
    group.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);
