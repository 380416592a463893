//! Placement micro-benchmarks: ns per key for the hash functions alone, and for a full
//! key-to-server lookup (hash + ketama continuum) over 3 and 100 servers.
//!
//! Run: `cargo bench --bench placement`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cutover::hash::{Distribution, HashKind, Placement, PlacementServer};

/// Typical keys of 8 to 40 bytes.
fn keys() -> Vec<Vec<u8>> {
    (0..1024)
        .map(|i| format!("user:{i}:session:{}", i * 7919 % 100_003).into_bytes())
        .collect()
}

/// A pool of `n` equal-weight unnamed servers.
fn pool(n: usize, hash: HashKind) -> Placement {
    let servers = (0..n)
        .map(|i| PlacementServer {
            name: format!("10.0.{}.{}:6379", i / 250, i % 250).into_bytes(),
            weight: 1,
        })
        .collect();
    Placement::new(hash, None, Distribution::Ketama, servers)
}

fn hashes(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Elements(keys.len() as u64));
    for kind in [HashKind::Fnv1a64, HashKind::Md5, HashKind::Murmur] {
        group.bench_function(BenchmarkId::from_parameter(kind.name()), |b| {
            b.iter(|| {
                keys.iter()
                    .fold(0u32, |acc, k| acc ^ kind.hash(black_box(k)))
            })
        });
    }
    group.finish();
}

fn ketama_lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ketama_server_for");
    group.throughput(Throughput::Elements(keys.len() as u64));
    for servers in [3usize, 100] {
        for kind in [HashKind::Fnv1a64, HashKind::Md5, HashKind::Murmur] {
            let placement = pool(servers, kind);
            group.bench_function(BenchmarkId::new(kind.name(), servers), |b| {
                b.iter(|| {
                    keys.iter().fold(0usize, |acc, k| {
                        acc ^ placement.server_for(black_box(k)).unwrap_or(0)
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, hashes, ketama_lookup);
criterion_main!(benches);
