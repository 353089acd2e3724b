//! Speed of the cost model's hot path: `CostModel::group` on a 512-document batch (the planner
//! prices many group shapes per batch), and `doc_time`, the per-document linear model.
//! Run: `cargo bench --bench cost`.

use criterion::{criterion_group, criterion_main, Criterion};
use hsap::cluster::Cluster;
use hsap::cost::{CostModel, TrainConfig};
use hsap::model::ModelShape;
use hsap::scheme::{GroupShape, RingVariant, Scheme};
use hsap::trace::Trace;
use std::hint::black_box;

/// The first 512 documents of FlexSP's Wikipedia trace, capped at 192K tokens as FlexSP trains.
fn batch() -> Vec<u32> {
    let trace = Trace::embedded("flexsp_wikipedia_1m.csv").expect("embedded trace");
    trace.lengths.iter().take(512).map(|&l| l.min(192 * 1024)).collect()
}

fn cost_model() -> CostModel {
    let model = ModelShape::resolve("gpt-7b").expect("preset");
    let cluster = Cluster::resolve("a100-40g-ib400").expect("preset");
    CostModel::new(model, cluster, TrainConfig::default()).expect("cost model")
}

fn bench_group(c: &mut Criterion) {
    let cm = cost_model();
    let docs = batch();
    let shapes = [
        GroupShape { scheme: Scheme::Ulysses, ulysses: 8, ring: 1, variant: RingVariant::Zigzag },
        GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 8, variant: RingVariant::Zigzag },
        GroupShape { scheme: Scheme::Usp, ulysses: 8, ring: 8, variant: RingVariant::Zigzag },
        GroupShape { scheme: Scheme::Hsap, ulysses: 8, ring: 8, variant: RingVariant::Zigzag },
        GroupShape { scheme: Scheme::DoubleRing, ulysses: 2, ring: 32, variant: RingVariant::Zigzag },
    ];
    for shape in shapes {
        c.bench_function(&format!("group 512 docs {shape}"), |b| b.iter(|| black_box(cm.group(black_box(&shape), black_box(&docs)))));
    }
    let hsap = shapes[3];
    c.bench_function("doc_time hsap u8xr8 len 4096", |b| b.iter(|| black_box(cm.doc_time(black_box(&hsap), black_box(4096)))));
}

criterion_group!(benches, bench_group);
criterion_main!(benches);
