//! Planner speed on FlexSP's setting: 512-document batches of traces/flexsp_wikipedia_1m.csv,
//! gpt-7b on a100-40g-ib400 with 8 nodes (64 GPUs), max seq 192K.
//!
//! Criterion times single batches (hsap with its MILP stage, and greedy plus local search only),
//! the setup (the size ladder's surrogate tables) at 8, 32, 128 and 1,024 nodes (1,024 nodes
//! are planned as 8 pods of 128, so their setup is one pod's), and one 512-document batch on
//! 128 and 1,024 nodes.
//! Before that, a recorded pass solves the first `HSAP_BENCH_BATCHES` batches (default 200) once
//! each and prints the per-batch distribution (median, p99, max), which criterion does not give.

use criterion::{criterion_group, criterion_main, Criterion};
use hsap::cluster::Cluster;
use hsap::cost::{CostModel, TrainConfig};
use hsap::model::ModelShape;
use hsap::stats::quantile_sorted;
use hsap::solver::{hsap, Ctx, HsapOptions};
use hsap::trace::{make_batches, Batch, BatchBy, BatchSpec, OverLong, Trace};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn cost_model(nodes: u32) -> CostModel {
    CostModel::new(
        ModelShape::resolve("gpt-7b").expect("model"),
        Cluster::resolve("a100-40g-ib400").expect("cluster").with_nodes(nodes).expect("nodes"),
        TrainConfig::default(),
    )
    .expect("cost model")
}

fn setup() -> (Ctx, Vec<Batch>) {
    let trace = Trace::embedded("flexsp_wikipedia_1m.csv").expect("embedded trace");
    let spec = BatchSpec { by: BatchBy::Count(512), max_seq: Some(196_608), over_long: OverLong::Drop, shuffle_seed: None };
    let batches = make_batches(&trace.lengths, &spec).expect("batches").batches;
    let ctx = Ctx::new(cost_model(8), 196_608).expect("context");
    (ctx, batches)
}

/// One solve per batch, sequentially: the distribution the targets are stated in.
fn recorded(ctx: &Ctx, batches: &[Batch], name: &str, opts: &HsapOptions) {
    let n: usize = std::env::var("HSAP_BENCH_BATCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let mut ms: Vec<f64> = batches
        .iter()
        .take(n)
        .map(|b| {
            let t0 = Instant::now();
            black_box(hsap(ctx, b, opts, &[]).expect("plan"));
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let q = |q| quantile_sorted(&ms, q).unwrap_or(f64::NAN);
    println!(
        "recorded {name}: {} batches, per-batch solve median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn bench(c: &mut Criterion) {
    let t0 = Instant::now();
    let (ctx, batches) = setup();
    println!("setup (trace, batching, surrogate tables): {:.2} s", t0.elapsed().as_secs_f64());
    let full = HsapOptions::default();
    let greedy = HsapOptions { use_milp: false, ..HsapOptions::default() };
    recorded(&ctx, &batches, "hsap", &full);
    recorded(&ctx, &batches, "hsap-greedy", &greedy);
    let mut g = c.benchmark_group("solve_512_docs_64_gpus");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for i in [0usize, 1, 9] {
        g.bench_function(format!("hsap/batch-{i}"), |b| b.iter(|| hsap(&ctx, &batches[i], &full, &[]).expect("plan")));
        g.bench_function(format!("hsap-greedy/batch-{i}"), |b| b.iter(|| hsap(&ctx, &batches[i], &greedy, &[]).expect("plan")));
    }
    g.finish();
    let mut g = c.benchmark_group("setup");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(1));
    for nodes in [8u32, 32, 128, 1024] {
        g.bench_function(format!("ladder/{nodes}-nodes"), |b| b.iter(|| Ctx::new(cost_model(nodes), 196_608).expect("context")));
    }
    g.finish();
    let mut g = c.benchmark_group("solve_512_docs");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for nodes in [128u32, 1024] {
        let ctx = Ctx::new(cost_model(nodes), 196_608).expect("context");
        g.bench_function(format!("hsap/{nodes}-nodes/batch-0"), |b| b.iter(|| hsap(&ctx, &batches[0], &full, &[]).expect("plan")));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
