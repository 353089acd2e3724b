//! The verdict on real shipped traces: long documents where per-batch planning pays, short
//! conversations where it does not; and the recommendation every `tune` run writes.

use hsap::cluster::Cluster;
use hsap::formats::recommendation::{Decision, Recommendation, RECOMMENDATION_JSON, RECOMMENDATION_MD};
use hsap::formats::run::RunData;
use hsap::model::ModelShape;
use hsap::solver::{Family, Strategy};
use hsap::trace::{BatchBy, BatchSpec, OverLong, Trace};
use hsap::tune::{tune, TuneInputs, TuneOptions, TuneOutcome};
use std::path::Path;

const STATICS: [Strategy; 3] = [Strategy::Static(Family::Ulysses), Strategy::Static(Family::Ring), Strategy::Static(Family::Usp)];

/// The first `batches` batches of `global_batch` documents of an embedded trace, gpt-7b on
/// `nodes` nodes of FlexSP's A100 cluster, against the three static families; the greedy planner
/// only (no LP stage), no simulation.
fn run(trace: &str, global_batch: usize, batches: usize, nodes: u32, out: &Path, report: bool) -> TuneOutcome {
    run_on(trace, global_batch, batches, nodes, out, report, hsap::stack::Stack::default())
}

fn run_on(trace: &str, global_batch: usize, batches: usize, nodes: u32, out: &Path, report: bool, stack: hsap::stack::Stack) -> TuneOutcome {
    let inputs = TuneInputs {
        trace: Trace::embedded(trace).unwrap(),
        batching: BatchSpec { by: BatchBy::Count(global_batch), max_seq: None, over_long: OverLong::Drop, shuffle_seed: None },
        limit_batches: Some(batches),
        model: ModelShape::resolve("gpt-7b").unwrap(),
        cluster: Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(nodes).unwrap(),
        train: hsap::cost::TrainConfig { stack, ..hsap::cost::TrainConfig::default() },
        measurements: None,
    };
    let opts = TuneOptions {
        out: out.to_path_buf(),
        baseline_plans: false,
        simulate: false,
        report,
        hsap_time_limit_s: 0.0,
        milp_rounds: 0,
        flexsp_time_limit_s: 1.0,
        baselines: STATICS.to_vec(),
        progress: false,
        group_sizes: hsap::solver::GroupSizes::Ladder,
        command: "recommend_verdict test".into(),
    };
    tune(&inputs, &opts, &mut |_| Ok(())).unwrap()
}

/// The gain the verdict reports is the summary's speedup over the best static plan, minus 1.
fn check_against_summary(outcome: &TuneOutcome) {
    let v = &outcome.recommendation.verdict;
    let s = &outcome.run.summary;
    let hsap = s.strategies.iter().find(|st| st.name == "hsap").unwrap();
    assert_eq!(v.best_static, s.best_static);
    let gain = v.whole_run_gain.unwrap();
    assert!((gain - (hsap.speedup_vs_best_static.unwrap() - 1.0)).abs() < 1e-9, "{gain} vs {:?}", hsap.speedup_vs_best_static);
    assert!(v.hsap_memory_headroom >= 0.0 && v.hsap_memory_headroom < 1.0);
    assert!(v.static_memory_headroom.is_some_and(|h| (0.0..1.0).contains(&h)));
}

#[test]
fn long_textbook_chapters_make_per_batch_planning_worth_adopting() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run("distca_textbookchapters_llama3.csv", 512, 3, 8, &dir.path().join("run"), true);
    check_against_summary(&outcome);
    let v = &outcome.recommendation.verdict;
    assert_eq!(v.decision, Decision::Adopt, "{}", v.paragraph);
    assert!(v.whole_run_gain.unwrap() >= hsap::recommend::RANKING_TOLERANCE);
    assert!(v.paragraph.ends_with("worth adopting on this data."), "{}", v.paragraph);
    // The paragraph opens the report, in summary.md and index.html.
    let report = outcome.report.as_ref().unwrap();
    let md = std::fs::read_to_string(report.index_html.with_file_name("summary.md")).unwrap();
    assert!(md.contains(&format!("## Verdict\n\n{}\n", v.paragraph)), "{md}");
    let html = std::fs::read_to_string(&report.index_html).unwrap();
    assert!(html.contains("<p class=\"verdict\"><strong>Verdict.</strong> Best static configuration"), "no verdict in index.html");
}

#[test]
fn short_sharegpt_conversations_keep_the_static_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run("sarathi_sharegpt8k_llama2_total.csv", 512, 3, 2, &dir.path().join("run"), false);
    check_against_summary(&outcome);
    let v = &outcome.recommendation.verdict;
    assert_eq!(v.decision, Decision::KeepStatic, "{}", v.paragraph);
    assert!(v.whole_run_gain.unwrap() < hsap::recommend::RANKING_TOLERANCE);
    assert!(v.paragraph.ends_with("keep the static configuration."), "{}", v.paragraph);
    // On two nodes of 8K-token conversations the best static plan has no sequence parallelism.
    assert!(v.paragraph.contains("(u1xr1: data parallelism alone, no sequence parallelism)"), "{}", v.paragraph);
}

#[test]
fn every_run_writes_the_recommendation_it_returns_with_four_frameworks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let outcome = run("sarathi_sharegpt8k_llama2_total.csv", 256, 1, 1, &out, false);
    let written: Recommendation = serde_json::from_str(&std::fs::read_to_string(out.join(RECOMMENDATION_JSON)).unwrap()).unwrap();
    assert_eq!(written, outcome.recommendation);
    let names: Vec<&str> = written.frameworks.iter().map(|f| f.framework.as_str()).collect();
    assert_eq!(names, ["megatron-core", "deepspeed", "torchtitan", "yunchang"]);
    let launch = written.launch.as_ref().unwrap();
    assert_eq!(launch.strategy, written.verdict.best_static);
    // The launch is the best static plan's: every group of it has the launch's degrees, and the
    // longest packed sequence is its largest group.
    let run = RunData::load(&out).unwrap();
    let groups: Vec<_> = run.groups.iter().filter(|g| g.strategy == launch.strategy).collect();
    assert!(groups.iter().all(|g| g.ulysses == launch.ulysses && g.ring == launch.ring));
    assert_eq!(groups.iter().map(|g| g.tokens).max(), Some(launch.max_group_tokens));
    assert_eq!(launch.sp_degree * launch.data_parallel * launch.tensor_parallel, launch.gpus);
    let md = std::fs::read_to_string(out.join(RECOMMENDATION_MD)).unwrap();
    assert!(md.starts_with(&format!("# Recommendation\n\n{}\n", written.verdict.paragraph)));
    for f in &written.frameworks {
        assert!(md.contains(&format!("### {} ({})", f.framework, f.version)), "{md}");
    }
}

#[test]
fn a_stacks_error_bar_turns_adopt_into_measure_where_the_intervals_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let stack = |name| hsap::stack::Stack::resolve(name).unwrap();
    // Megatron-Core's bar (+0.1% to +17.7%: out of sample its rows all came out too fast) is narrow:
    // the textbook chapters' gain stays apart.
    let narrow = run_on("distca_textbookchapters_llama3.csv", 512, 3, 8, &dir.path().join("a"), false, stack("megatron-core"));
    let v = &narrow.recommendation.verdict;
    assert_eq!((v.decision, v.intervals_overlap), (Decision::Adopt, Some(false)), "{}", v.paragraph);
    assert!(v.paragraph.contains("with the stack's error bar (+0.1% to +17.7%) the two totals' intervals are apart"), "{}", v.paragraph);
    // DeepSpeed's (-22.3% to +22.1%) spans a factor 1.57 between totals: the gain is beyond the
    // ranking tolerance but the intervals overlap.
    let wide = run_on("distca_textbookchapters_llama3.csv", 512, 3, 8, &dir.path().join("b"), false, stack("deepspeed"));
    let v = &wide.recommendation.verdict;
    let bar = v.error_bar.unwrap();
    assert!(v.whole_run_gain.unwrap() + 1.0 < (1.0 + bar.high) / (1.0 + bar.low), "{}", v.paragraph);
    assert_eq!((v.decision, v.intervals_overlap), (Decision::Measure, Some(true)), "{}", v.paragraph);
    assert!(v.paragraph.ends_with("measure both before adopting."), "{}", v.paragraph);
}
