//! On real trace batches: hsap is never slower than any baseline, and the baselines' plans are
//! well-formed partitions of the cluster.

use hsap::cluster::Cluster;
use hsap::cost::{CostModel, TrainConfig};
use hsap::model::ModelShape;
use hsap::solver::{run_all, Ctx, Flexsp, FlexspOptions, HsapOptions, MilpStatus, RunOptions, Strategy};
use hsap::trace::{make_batches, BatchBy, BatchSpec, OverLong, Trace};

#[test]
fn hsap_is_at_most_every_baseline_on_every_batch() {
    let trace = Trace::embedded("sarathi_sharegpt8k_llama2_total.csv").unwrap();
    let spec = BatchSpec { by: BatchBy::Count(512), max_seq: Some(196_608), over_long: OverLong::Drop, shuffle_seed: None };
    let mut batches = make_batches(&trace.lengths, &spec).unwrap().batches;
    batches.truncate(3);
    let cm = CostModel::new(
        ModelShape::resolve("gpt-7b").unwrap(),
        Cluster::resolve("a100-40g-ib400").unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let max_len = batches.iter().flat_map(|b| b.docs.iter().map(|d| d.len)).max().unwrap();
    let ctx = Ctx::new(cm, max_len).unwrap();
    let opts = RunOptions {
        hsap: HsapOptions::default(),
        flexsp: FlexspOptions { time_limit_s: 0.3, ..FlexspOptions::default() },
        baselines: Strategy::BASELINES.to_vec(),
        progress: hsap::progress::Mode::Off,
    };
    let result = run_all(&ctx, &batches, &opts).unwrap();
    assert_eq!(result.strategies.len(), 6, "skipped: {:?}", result.skipped);
    let hsap = &result.strategies[0];
    assert_eq!(hsap.name, "hsap");
    for s in &result.strategies[1..] {
        for (i, (h, b)) in hsap.priced.iter().zip(&s.priced).enumerate() {
            assert!(h.step_s <= b.step_s, "batch {i}: hsap {} s > {} {} s", h.step_s, s.name, b.step_s);
        }
        for (p, batch) in s.priced.iter().zip(&batches) {
            let docs: usize = p.micro.iter().flat_map(|m| &m.groups).map(|g| g.docs.len()).sum();
            assert_eq!(docs, batch.docs.len(), "{}: every document once", s.name);
            for m in &p.micro {
                assert_eq!(m.groups.iter().map(|g| g.shape.size()).sum::<u32>(), ctx.gpus, "{}", s.name);
            }
        }
    }
    // Each static family settled on one (u, r) for all batches.
    for (choice, s) in result.static_choices.iter().zip(result.strategies.iter().filter(|s| s.name.starts_with("static-"))) {
        for p in &s.priced {
            for g in p.micro.iter().flat_map(|m| &m.groups) {
                assert_eq!((g.shape.ulysses, g.shape.ring), (choice.shape.ulysses, choice.shape.ring), "{}", s.name);
            }
        }
    }
}

/// FlexSP's MILP starts from its uniform Ulysses plan, so even a time limit too short to find
/// anything leaves HiGHS with a feasible solution (status `time_limit`, not
/// `time_limit_no_solution`) on a 64-GPU batch.
#[test]
fn flexsp_starts_from_its_uniform_plan() {
    let trace = Trace::embedded("distca_textbookchapters_llama3.csv").unwrap();
    let spec = BatchSpec { by: BatchBy::Count(512), max_seq: Some(196_608), over_long: OverLong::Drop, shuffle_seed: None };
    let batches = make_batches(&trace.lengths, &spec).unwrap().batches;
    let cm = CostModel::new(
        ModelShape::resolve("gpt-7b").unwrap(),
        Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(8).unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    let max_len = batches[..2].iter().flat_map(|b| b.docs.iter().map(|d| d.len)).max().unwrap();
    let ctx = Ctx::new(cm, max_len).unwrap();
    let flexsp = Flexsp::new(&ctx, FlexspOptions { time_limit_s: 0.01, ..FlexspOptions::default() });
    for b in &batches[..2] {
        let sol = flexsp.solve(&ctx, b).unwrap();
        assert_eq!(sol.milp.map(|m| m.status), Some(MilpStatus::TimeLimit), "batch {}", b.index);
    }
}
