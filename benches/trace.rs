//! Reading traces: the 1,000,000-document Wikipedia trace must read in well under a second.

use criterion::{criterion_group, criterion_main, Criterion};
use hsap::trace::{make_batches, BatchBy, BatchSpec, OverLong, Trace};
use std::path::Path;

fn read_wikipedia(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/flexsp_wikipedia_1m.csv");
    let mut group = c.benchmark_group("trace");
    group.sample_size(20);
    group.bench_function("read flexsp_wikipedia_1m.csv", |b| {
        b.iter(|| Trace::read(&path).expect("the shipped trace reads"))
    });
    let trace = Trace::read(&path).expect("the shipped trace reads");
    group.bench_function("stats flexsp_wikipedia_1m.csv", |b| b.iter(|| trace.stats(Some(196_608))));
    let spec = BatchSpec {
        by: BatchBy::Count(512),
        max_seq: Some(196_608),
        over_long: OverLong::Drop,
        shuffle_seed: Some(1),
    };
    group.bench_function("batch flexsp_wikipedia_1m.csv by 512, shuffled", |b| {
        b.iter(|| make_batches(&trace.lengths, &spec).expect("valid spec"))
    });
    group.finish();
}

criterion_group!(benches, read_wikipedia);
criterion_main!(benches);
