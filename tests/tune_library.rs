//! The product pipeline called as a library function, as a user of the crate would: what
//! `hsap::tune::tune` returns is what it wrote, and what it tells is what happened.

use hsap::cluster::Cluster;
use hsap::formats::run::RunData;
use hsap::model::ModelShape;
use hsap::plan::Plan;
use hsap::solver::{GroupSizes, Strategy};
use hsap::trace::{BatchBy, BatchSpec, OverLong, Trace};
use hsap::tune::{tune, Notice, TuneInputs, TuneOptions};
use std::path::Path;

/// tests/data/small_trace.csv (40 documents) on gpt-7b and `nodes` A100 nodes, batches of 20.
fn inputs(max_seq: u32, over_long: OverLong, nodes: u32) -> TuneInputs {
    TuneInputs {
        trace: Trace::read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small_trace.csv"))).unwrap(),
        batching: BatchSpec { by: BatchBy::Count(20), max_seq: Some(max_seq), over_long, shuffle_seed: None },
        limit_batches: None,
        model: ModelShape::resolve("gpt-7b").unwrap(),
        cluster: Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(nodes).unwrap(),
        train: hsap::cost::TrainConfig::default(),
        measurements: None,
    }
}

/// Every plan written, no report, short solver limits.
fn options(out: &Path, baselines: Vec<Strategy>, simulate: bool) -> TuneOptions {
    TuneOptions {
        out: out.to_path_buf(),
        baseline_plans: true,
        simulate,
        report: false,
        hsap_time_limit_s: 0.5,
        milp_rounds: 0,
        flexsp_time_limit_s: 0.5,
        baselines,
        group_sizes: GroupSizes::Ladder,
        progress: false,
        command: "tune_library test".into(),
    }
}

/// The plan as it reads back from JSON (serde_json's default float parsing may move a last digit).
fn as_read(plan: &Plan) -> Plan {
    serde_json::from_str(&serde_json::to_string(plan).unwrap()).unwrap()
}

#[test]
fn tune_returns_what_it_writes_and_tells_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Two of the 40 documents (15,998 and 18,256 tokens) are longer than 15,000.
    let inputs = inputs(15_000, OverLong::Drop, 1);
    let opts = options(&dir.path().join("run"), vec![Strategy::from_name("static-ulysses").unwrap()], true);
    let mut notices = Vec::new();
    let outcome = tune(&inputs, &opts, &mut |n| {
        notices.push(n.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(notices, vec![Notice::Dropped { documents: 2, tokens: 15_998 + 18_256, max_seq: 15_000 }]);
    // 38 documents in batches of 20: two batches, each planned by hsap and the baseline.
    let planned: Vec<(&str, usize)> = outcome.plans.iter().map(|p| (p.strategy.as_str(), p.batches.len())).collect();
    assert_eq!(planned, vec![("hsap", 2), ("static-ulysses", 2)]);
    assert!(outcome.report.is_none());
    let written = RunData::load(&opts.out).unwrap();
    let summary: hsap::formats::run::Summary = serde_json::from_str(&serde_json::to_string(&outcome.run.summary).unwrap()).unwrap();
    assert_eq!(written.summary, summary);
    assert_eq!(written.summary.command, "tune_library test");
    assert_eq!(written.batches.len(), outcome.run.batches.len());
    assert!(written.batches.iter().all(|b| b.simulated_step_s.is_some()));
    assert_eq!(Plan::read(&opts.out.join("plan.json")).unwrap(), as_read(&outcome.plans[0]));
    assert_eq!(Plan::read(&opts.out.join("plans/static-ulysses.json")).unwrap(), as_read(&outcome.plans[1]));
}

#[test]
fn every_strategys_plan_passes_the_check_every_reader_runs() {
    // Split documents, two nodes, every baseline: each plan tune writes reads back through
    // Plan::check.
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&dir.path().join("run"), Strategy::BASELINES.to_vec(), false);
    let outcome = tune(&inputs(8_192, OverLong::Split, 2), &opts, &mut |_| Ok(())).unwrap();
    assert_eq!(outcome.plans.len(), 1 + Strategy::BASELINES.len());
    for plan in &outcome.plans {
        let file = if plan.strategy == "hsap" { opts.out.join("plan.json") } else { opts.out.join(format!("plans/{}.json", plan.strategy)) };
        let read = Plan::read(&file).unwrap_or_else(|e| panic!("{}: {e}", plan.strategy));
        assert!(read.batches.iter().flat_map(|b| &b.docs).any(|d| d.offset > 0), "{}: no split document", plan.strategy);
    }
}

#[test]
fn bad_time_limits_are_refused_before_any_work() {
    let opts = TuneOptions { hsap_time_limit_s: -1.0, ..options(Path::new("unused"), Vec::new(), false) };
    let err = opts.check().unwrap_err().to_string();
    assert!(err.contains("--time-limit -1"), "{err}");
    let err = TuneOptions { hsap_time_limit_s: 2.0, flexsp_time_limit_s: 0.0, ..opts }.check().unwrap_err().to_string();
    assert!(err.contains("--flexsp-time-limit 0"), "{err}");
}

#[test]
fn predict_the_planner_and_the_simulator_price_a_step_alike_with_the_stacks_factor() {
    use hsap::cost::scenario::{predict, Scenario};
    use hsap::cost::{Checkpointing, CostModel, TrainConfig};
    use hsap::scheme::{GroupShape, RingVariant, Scheme};
    use hsap::sim::{simulate_batch, SimOptions};
    use hsap::solver::{Ctx, Group, Micro, Solution};
    use hsap::stack::Stack;
    use hsap::trace::{Batch, Doc};
    // One Ulysses-8 group on a DGX A100 running nine packed documents, ZeRO 1 (a reduce-scatter
    // beside the backward, an all-gather after the optimizer), Megatron-Core's stack, whose
    // fitted factor is not 1.
    let lens: [u32; 9] = [16384, 9000, 4096, 2500, 1200, 800, 300, 120, 40];
    let packed = lens.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let text = format!(
        "scope = \"step\"\npasses = \"fwd_bwd\"\n[model]\npreset = \"gpt-7b\"\n[cluster]\npreset = \"dgx-a100-80g\"\nnodes = 1\n[strategy]\nscheme = \"ulysses\"\nulysses = 8\nzero = 1\ncheckpointing = \"full\"\n[stack]\npreset = \"megatron-core\"\n[batch]\npacked = [[{packed}]]\n"
    );
    let path = Path::new("step.toml");
    let predicted = predict(&Scenario::parse(path, &text).unwrap(), path, &text).unwrap();
    let stack = Stack::resolve("megatron-core").unwrap();
    let factor = stack.fitted.time_factor;
    assert!((factor - 1.0).abs() > 0.05, "{factor}");
    let cluster = Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(1).unwrap();
    let train = |stack: Stack| TrainConfig { zero: 1, checkpointing: Checkpointing::Full, data_parallel_gpus: Some(8), stack, ..TrainConfig::default() };
    let model = ModelShape::resolve("gpt-7b").unwrap();
    let batch = Batch { index: 0, docs: lens.iter().enumerate().map(|(i, &len)| Doc { index: i as u32, offset: 0, len }).collect() };
    let shape = GroupShape { scheme: Scheme::Ulysses, ulysses: 8, ring: 1, variant: RingVariant::Zigzag };
    let solution = Solution { micro: vec![Micro { groups: vec![Group { shape, docs: (0..lens.len()).collect() }] }], ..Solution::default() };
    let priced_step = |stack: Stack| {
        let ctx = Ctx::new(CostModel::new(model.clone(), cluster.clone(), train(stack)).unwrap(), 16384).unwrap();
        let priced = ctx.finish(&batch, &solution).unwrap();
        let (sim, _) = simulate_batch(&ctx.cm, &ctx.to_batch_plan(&batch, &priced), &SimOptions::default());
        (priced.step_s, sim.step_s)
    };
    let (planned, simulated) = priced_step(stack.clone());
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b;
    assert!(close(planned, predicted.time_s), "planner {planned} vs predict {}", predicted.time_s);
    assert!(close(simulated, predicted.time_s), "simulator {simulated} vs predict {}", predicted.time_s);
    // The factor multiplies the whole step, once: the same step with nothing fitted.
    let (unfitted, _) = priced_step(Stack { fitted: Default::default(), ..stack });
    assert!(close(planned, factor * unfitted), "{planned} vs {factor} x {unfitted}");
    assert!(close(predicted.breakdown.stack_fitted_s, planned - unfitted));
}
