//! The planner's shared-link pricing against the simulator on a real trace (issue 16): hsap's
//! plans for the first batches of the 1M-document Wikipedia trace (FlexSP's setting: gpt-7b,
//! 8 nodes of 8 A100-40GB with 2 x HDR 200G, ZeRO 3), where small groups' ZeRO gathers meet
//! other groups' reduce-scatters and a multi-node ring's hops meet both on the NICs.

use hsap::cluster::Cluster;
use hsap::cost::{CostModel, TrainConfig};
use hsap::model::ModelShape;
use hsap::sim::{simulate_batch, SimOptions};
use hsap::solver::GroupSizes;
use hsap::trace::{BatchBy, BatchSpec, OverLong, Trace};
use hsap::tune::{tune, TuneInputs, TuneOptions};

/// The bound on the planner's prediction against the simulator's total. The model takes
/// the other users of a NIC as independent of each other and of the transfer priced (module docs
/// of `cost::links`), which the simulator does not; on these batches it lands within 0.4% of the
/// simulator on every batch, so the bound holds per batch too.
const AGREEMENT: f64 = 0.02;

/// Ten batches: enough that several hold a ring across nodes beside dozens of one-GPU groups
/// (batches 1, 6, 8 and 9), and others only groups inside nodes.
const BATCHES: usize = 10;

#[test]
fn the_planner_prices_shared_links_as_the_simulator_replays_them() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = TuneInputs {
        trace: Trace::embedded("flexsp_wikipedia_1m.csv").unwrap(),
        batching: BatchSpec { by: BatchBy::Count(512), max_seq: Some(196_608), over_long: OverLong::Drop, shuffle_seed: None },
        limit_batches: Some(BATCHES),
        model: ModelShape::resolve("gpt-7b").unwrap(),
        cluster: Cluster::resolve("a100-40g-ib400").unwrap(),
        train: TrainConfig::default(),
        measurements: None,
    };
    let opts = TuneOptions {
        out: dir.path().join("run"),
        baseline_plans: false,
        simulate: true,
        report: false,
        hsap_time_limit_s: 2.0,
        milp_rounds: 0,
        flexsp_time_limit_s: 1.0,
        baselines: Vec::new(),
        group_sizes: GroupSizes::Ladder,
        progress: false,
        command: "shared_links test".into(),
    };
    let outcome = tune(&inputs, &opts, &mut |_| Ok(())).unwrap();
    let rows: Vec<_> = outcome.run.batches.iter().filter(|r| r.strategy == "hsap").collect();
    assert_eq!(rows.len(), BATCHES);
    let plan = &outcome.plans[0];
    let cm = CostModel::new(plan.model.clone(), plan.cluster.clone(), plan.train.clone()).unwrap();
    let (mut predicted, mut simulated, mut alone) = (0.0, 0.0, 0.0);
    for (row, batch) in rows.iter().zip(&plan.batches) {
        let sim = row.simulated_step_s.unwrap();
        let rel = sim / row.predicted_step_s - 1.0;
        assert!(rel.abs() <= AGREEMENT, "batch {}: predicted {} s, simulated {sim} s", row.batch, row.predicted_step_s);
        predicted += row.predicted_step_s;
        simulated += sim;
        // The same plans priced with every group alone: what the planner predicted before it
        // priced shared links.
        alone += simulate_batch(&cm, batch, &SimOptions::default()).0.isolated_step_s;
    }
    assert!((simulated / predicted - 1.0).abs() <= AGREEMENT, "predicted {predicted} s, simulated {simulated} s");
    // Sharing matters here: pricing groups alone misses more than the bound (3.9% on these
    // plans, measured when this test was written), so the agreement above is the shared pricing's doing.
    assert!(simulated > alone * (1.0 + AGREEMENT), "simulated {simulated} s, groups alone {alone} s");
}
