//! The product pipeline called as a library function, as a user of the crate would: what
//! `hsap::tune::tune` returns is what it wrote, and what it tells is what happened.

use hsap::cluster::Cluster;
use hsap::formats::run::RunData;
use hsap::model::ModelShape;
use hsap::plan::Plan;
use hsap::solver::Strategy;
use hsap::trace::{BatchBy, BatchSpec, OverLong, Trace};
use hsap::tune::{tune, Notice, TuneInputs, TuneOptions};
use std::path::Path;

#[test]
fn tune_returns_what_it_writes_and_tells_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let trace = Trace::read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small_trace.csv"))).unwrap();
    // 40 documents, two of them (15,998 and 18,256 tokens) longer than 15,000.
    let inputs = TuneInputs {
        trace,
        batching: BatchSpec { by: BatchBy::Count(20), max_seq: Some(15_000), over_long: OverLong::Drop, shuffle_seed: None },
        limit_batches: None,
        model: ModelShape::resolve("gpt-7b").unwrap(),
        cluster: Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(1).unwrap(),
        measurements: None,
    };
    let opts = TuneOptions {
        out: dir.path().join("run"),
        baseline_plans: true,
        simulate: true,
        report: false,
        hsap_time_limit_s: 0.0,
        milp_rounds: 0,
        flexsp_time_limit_s: 1.0,
        baselines: vec![Strategy::from_name("static-ulysses").unwrap()],
        progress: false,
        command: "tune_library test".into(),
    };
    let mut notices = Vec::new();
    let outcome = tune(&inputs, &opts, &mut |n| {
        notices.push(n.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(notices, vec![Notice::Dropped { documents: 2, tokens: 15_998 + 18_256, max_seq: 15_000 }]);
    // 38 documents in batches of 20: two batches, each planned by hsap and the baseline.
    assert_eq!(outcome.plans.iter().map(|p| (p.strategy.as_str(), p.batches.len())).collect::<Vec<_>>(), vec![("hsap", 2), ("static-ulysses", 2)]);
    assert!(outcome.report.is_none());
    let written = RunData::load(&opts.out).unwrap();
    assert_eq!(written.summary, outcome.run.summary);
    assert_eq!(written.batches, outcome.run.batches);
    assert_eq!(written.summary.command, "tune_library test");
    assert!(written.batches.iter().all(|b| b.simulated_step_s.is_some()));
    assert_eq!(Plan::read(&opts.out.join("plan.json")).unwrap(), outcome.plans[0]);
    assert_eq!(Plan::read(&opts.out.join("plans/static-ulysses.json")).unwrap(), outcome.plans[1]);
}

#[test]
fn bad_time_limits_are_refused_before_any_work() {
    let opts = TuneOptions {
        out: "unused".into(),
        baseline_plans: false,
        simulate: false,
        report: false,
        hsap_time_limit_s: -1.0,
        milp_rounds: 0,
        flexsp_time_limit_s: 1.0,
        baselines: Vec::new(),
        progress: false,
        command: String::new(),
    };
    let err = opts.check().unwrap_err().to_string();
    assert!(err.contains("--time-limit -1"), "{err}");
    let err = TuneOptions { hsap_time_limit_s: 2.0, flexsp_time_limit_s: 0.0, ..opts }.check().unwrap_err().to_string();
    assert!(err.contains("--flexsp-time-limit 0"), "{err}");
}

#[test]
fn every_strategys_plan_passes_the_check_every_reader_runs() {
    // Split documents, two nodes, every baseline: each plan tune writes reads back through
    // Plan::check.
    let dir = tempfile::tempdir().unwrap();
    let trace = Trace::read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small_trace.csv"))).unwrap();
    let inputs = TuneInputs {
        trace,
        batching: BatchSpec { by: BatchBy::Count(20), max_seq: Some(8_192), over_long: OverLong::Split, shuffle_seed: Some(3) },
        limit_batches: None,
        model: ModelShape::resolve("gpt-7b").unwrap(),
        cluster: Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(2).unwrap(),
        measurements: None,
    };
    let opts = TuneOptions {
        out: dir.path().join("run"),
        baseline_plans: true,
        simulate: false,
        report: false,
        hsap_time_limit_s: 0.5,
        milp_rounds: 0,
        flexsp_time_limit_s: 0.5,
        baselines: Strategy::BASELINES.to_vec(),
        progress: false,
        command: String::new(),
    };
    let outcome = tune(&inputs, &opts, &mut |_| Ok(())).unwrap();
    assert_eq!(outcome.plans.len(), 1 + Strategy::BASELINES.len());
    for plan in &outcome.plans {
        let file = if plan.strategy == "hsap" { opts.out.join("plan.json") } else { opts.out.join(format!("plans/{}.json", plan.strategy)) };
        let read = Plan::read(&file).unwrap_or_else(|e| panic!("{}: {e}", plan.strategy));
        assert!(read.batches.iter().flat_map(|b| &b.docs).any(|d| d.offset > 0), "{}: no split document", plan.strategy);
    }
}
