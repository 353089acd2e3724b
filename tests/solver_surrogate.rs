//! The planner's surrogate against the cost model it stands in for, on random groups drawn from
//! the Wikipedia trace: every candidate shape of 8 nodes, three kinds of group (one long document
//! alone; short documents only; one long document with light fill). Prints the error table
//! (`cargo nextest run --release --no-capture -E 'binary(solver_surrogate)'`) and holds each size
//! class's median error to a bound: 5%, except short documents around a long one on 24 GPUs or
//! more, which the surrogate under-estimates (docs/planner.md) and the planner prices exactly.

use hsap::cluster::Cluster;
use hsap::cost::{CostModel, TrainConfig};
use hsap::model::ModelShape;
use hsap::solver::{Ctx, CtxOptions, GroupSizes};
use hsap::trace::Trace;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const TRIALS_PER_SHAPE: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// One document of 8K tokens up to the shape's capacity, alone.
    Alone,
    /// Short documents (at most 8K) from the trace, 2K-30K tokens per GPU.
    Fill,
    /// One long document and short ones adding at most 2K tokens per GPU.
    LongLight,
}

#[test]
fn surrogate_errors_per_group_size() {
    let trace = Trace::embedded("flexsp_wikipedia_1m.csv").unwrap();
    let short: Vec<u32> = trace.lengths.iter().copied().filter(|&l| l <= 8_000).take(100_000).collect();
    let cm = CostModel::new(
        ModelShape::resolve("gpt-7b").unwrap(),
        Cluster::resolve("a100-40g-ib400").unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let all = CtxOptions { sizes: GroupSizes::All, ..CtxOptions::default() };
    let ctx = Ctx::with(cm, 196_608, &all).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // (size class, kind) -> relative errors
    let mut errors: BTreeMap<(u32, Kind), Vec<f64>> = BTreeMap::new();
    for c in &ctx.candidates {
        for trial in 0..TRIALS_PER_SHAPE {
            let kind = [Kind::Alone, Kind::Fill, Kind::LongLight][trial % 3];
            let cap = c.capacity_tokens().min(196_608) as u32;
            let mut docs = Vec::new();
            if kind != Kind::Fill {
                if cap <= 8_000 {
                    continue;
                }
                docs.push(rng.random_range(8_000..cap));
            }
            let fill_per_gpu = match kind {
                Kind::Alone => 0,
                Kind::Fill => rng.random_range(2_000..30_000u64),
                Kind::LongLight => rng.random_range(0..2_000u64),
            };
            let mut fill = 0;
            while fill < fill_per_gpu * u64::from(c.size) {
                let l = short[rng.random_range(0..short.len())];
                fill += u64::from(l);
                docs.push(l);
            }
            if docs.iter().map(|&l| u64::from(l)).sum::<u64>() > c.capacity_tokens() {
                continue;
            }
            let (_, exact) = ctx.best_scheme(c.shape.ulysses, c.shape.ring, &docs);
            if exact.memory_bytes > ctx.limit_bytes {
                continue;
            }
            let class = c.size.min(32);
            errors.entry((class, kind)).or_default().push(c.time_s(docs.iter().copied()) / exact.time_s - 1.0);
        }
    }
    let mut failures = Vec::new();
    for ((class, kind), mut e) in errors {
        e.sort_by(f64::total_cmp);
        let mut abs: Vec<f64> = e.iter().map(|x| x.abs()).collect();
        abs.sort_by(f64::total_cmp);
        let (n, median_abs) = (e.len(), abs[abs.len() / 2]);
        println!(
            "size {}{class:>2} {kind:?}: {n} groups, median |error| {:.1}%, p90 |error| {:.1}%, p10 {:+.1}%, p90 {:+.1}%",
            if class == 32 { ">=" } else { "  " },
            100.0 * median_abs,
            100.0 * abs[n * 9 / 10],
            100.0 * e[n / 10],
            100.0 * e[n * 9 / 10]
        );
        let bound = if kind == Kind::LongLight && class >= 24 { 0.20 } else { 0.05 };
        if median_abs > bound {
            failures.push(format!("size {class} {kind:?}: median |error| {:.1}%", 100.0 * median_abs));
        }
    }
    assert!(failures.is_empty(), "the surrogate strays from the cost model: {failures:?}");
}
