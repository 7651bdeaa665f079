//! Criterion benchmarks of the partition log's hot paths: batch validation,
//! append (page cache only, and with an fsync per batch), and sequential
//! reads from the hot tier.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata_broker::log::{Durability, LogConfig, PartitionLog};
use strata_proto::batch::{BatchBuilder, Compression, Limits, validate};

const LIMITS: Limits = Limits::new(1 << 20);

fn batch(records: usize, size: usize) -> Vec<u8> {
    let value = vec![b'x'; size];
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..records {
        b.push(1_700_000_000_000, None, Some(&value), &[]);
    }
    b.finish().unwrap().to_vec()
}

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 20,
        segment_ms: i64::MAX / 2,
        retention_ms: -1,
        retention_bytes: -1,
        durability,
        replicated: false,
        index_interval_bytes: 4096,
        local_retention_ms: -1,
        local_retention_bytes: -1,
        tiered: false,
    }
}

fn bench_validate(c: &mut Criterion) {
    let b = batch(64, 1024);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("validate/64x1KiB", |bench| bench.iter(|| validate(black_box(&b), LIMITS).unwrap()));
    g.finish();
}

fn bench_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for (name, durability) in [("page-cache", Durability::None), ("fsync-each", Durability::Fsync)] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = PartitionLog::open(dir.path(), config(durability), 0).unwrap();
        let template = batch(64, 1024);
        let header = validate(&template, LIMITS).unwrap();
        let mut buf = template.clone();
        g.throughput(Throughput::Bytes(template.len() as u64));
        g.bench_function(BenchmarkId::new(name, "64x1KiB"), |bench| {
            bench.iter(|| {
                log.append(&mut buf, &header, 0).unwrap();
                if durability == Durability::Fsync {
                    // What the group-commit task does once per batch when a
                    // single producer waits for every acknowledgement.
                    log.flush().unwrap();
                }
            })
        });
    }
    g.finish();
}

fn bench_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(Durability::None), 0).unwrap();
    let template = batch(64, 1024);
    let header = validate(&template, LIMITS).unwrap();
    let batches = 2048; // 128 MiB
    for _ in 0..batches {
        let mut b = template.clone();
        log.append(&mut b, &header, 0).unwrap();
    }
    let end = log.high_watermark();
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut next = 0u64;
    g.bench_function("hot/1MiB-chunks", |bench| {
        bench.iter(|| {
            if next >= end {
                next = 0;
            }
            let r = log.read(next, 1 << 20).unwrap();
            next = r.next_offset;
            black_box(r.records.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_validate, bench_append, bench_read);
criterion_main!(benches);
