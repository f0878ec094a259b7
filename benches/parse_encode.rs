//! Criterion micro-benchmarks of the hot path: container line → record (CRI, docker) → JSON Lines.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use logferry::json;
use logferry::parsers::multiline::{Joiner, LineAssembler, LineMode};

fn cri_lines(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("2026-11-22T08:00:{:02}.{:09}Z stdout F GET /api/v1/items/{i} 200 {} \"Mozilla/5.0 (X11; Linux x86_64)\" request_id={i:016x} user=svc-{}", i % 60, i * 7 % 1_000_000_000, i * 13 % 9000, i % 97)))
        .collect()
}

fn docker_lines(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{{\"log\":\"GET /api/v1/items/{i} 200 {} request_id={i:016x} user=svc-{}\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T08:00:{:02}.{:09}Z\"}}", i * 13 % 9000, i % 97, i % 60, i * 7 % 1_000_000_000)))
        .collect()
}

fn bench(c: &mut Criterion) {
    for (name, lines) in [("cri", cri_lines(10_000)), ("docker", docker_lines(10_000))] {
        let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let mut group = c.benchmark_group(format!("{name}_parse_encode"));
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("multiline docker,cri → json_lines", |b| {
            let mut out = Vec::with_capacity(8 << 20);
            b.iter(|| {
                let mut asm =
                    LineAssembler::new(LineMode::Multiline(vec![Joiner::Docker, Joiner::Cri]));
                let mut events = Vec::with_capacity(lines.len());
                for (i, l) in lines.iter().enumerate() {
                    asm.push(l.clone(), i as u64, &mut events);
                }
                out.clear();
                for e in &events {
                    json::write_map(&mut out, &e.record, None, true);
                    out.push(b'\n');
                }
                out.len()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
