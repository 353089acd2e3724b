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
