//! The run-directory formats: what the planner writes is what the report reads, the headline
//! numbers follow one definition, and bad run directories get errors naming file, line and fix.

mod report_common;

use hsap::formats::run::{self as data, strategy_summaries, RunData, TraceInfo};
use hsap::report::{self};
use report_common::{edit, fixture, fixture_copy};

fn load_err(dir: &std::path::Path) -> String {
    RunData::load(dir).expect_err("the run directory is bad").to_string()
}

#[test]
fn what_the_planner_writes_the_report_reads() {
    let data = RunData::load(&fixture()).expect("fixture");
    let dir = tempfile::tempdir().expect("temp");
    data.write(dir.path()).expect("write");
    let again = RunData::load(dir.path()).expect("reload");
    assert_eq!(again, data);
    assert_eq!(data.batches.len(), 36);
    assert_eq!(data.groups.len(), 128);
    assert_eq!(data.measurements.len(), 18);
    assert_eq!(data.fit_points.len(), 22);
}

#[test]
fn trace_json_is_what_inspect_prints() {
    use clap::Parser;
    let cli = hsap::cli::Cli::try_parse_from([
        "hsap-tune",
        "inspect",
        "--trace",
        "tests/data/report_run/lengths.csv",
        "--json",
    ])
    .expect("arguments");
    let mut out = Vec::new();
    hsap::cli::run(cli, &mut out, &mut Vec::new()).expect("inspect");
    let printed: TraceInfo = serde_json::from_slice(&out).expect("inspect --json parses as trace.json");
    let stored: TraceInfo =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("trace.json")).expect("read")).expect("parse");
    assert_eq!(printed, stored);
}

/// The fixture's summary.json was computed by a separate script from the same batches; the
/// library's definition of the headline numbers agrees with it.
#[test]
fn headline_numbers_have_one_definition() {
    let data = RunData::load(&fixture()).expect("fixture");
    let (summaries, best) = strategy_summaries(&data.batches);
    assert_eq!(best.as_deref(), Some("static-usp"));
    assert_eq!(summaries.len(), data.summary.strategies.len());
    for (mine, stored) in summaries.iter().zip(&data.summary.strategies) {
        assert_eq!(mine.name, stored.name);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
        assert!(close(mine.total_time_s, stored.total_time_s), "{}", mine.name);
        assert!(close(mine.mean_step_s, stored.mean_step_s), "{}", mine.name);
        assert!(
            close(mine.speedup_vs_best_static.unwrap(), stored.speedup_vs_best_static.unwrap()),
            "{}",
            mine.name
        );
        assert_eq!(
            mine.simulated_total_s.is_some(),
            stored.simulated_total_s.is_some(),
            "{}",
            mine.name
        );
    }
}

#[test]
fn a_missing_run_directory_says_what_to_pass() {
    let err = load_err(std::path::Path::new("/nonexistent/run"));
    assert!(
        err.contains("/nonexistent/run") && err.contains("hint:") && err.contains("--out"),
        "{err}"
    );
}

#[test]
fn a_missing_required_file_is_named() {
    for name in ["summary.json", "trace.json", "batches.csv", "groups.csv"] {
        let dir = fixture_copy(&[name]);
        let err = load_err(dir.path());
        assert!(
            err.contains(&format!("no {name}")) && err.contains("docs/report.md"),
            "{err}"
        );
    }
}

#[test]
fn optional_files_may_be_absent() {
    let dir = fixture_copy(&["measurements.csv", "fit_points.csv"]);
    let data = RunData::load(dir.path()).expect("loads");
    let built = report::build(&data).expect("builds");
    let ids: Vec<&str> = built.figures.iter().map(|f| f.id).collect();
    assert_eq!(ids, ["trace", "step_time", "speedup", "breakdown", "plans", "memory"]);
    assert!(!built.summary_md.contains("Model against measurements"));
}

#[test]
fn a_bad_number_names_line_and_column() {
    let dir = fixture_copy(&[]);
    // Line 4 of batches.csv is batch 0 of megatron-dcp.
    edit(
        dir.path(),
        "batches.csv",
        "0,megatron-dcp,16,48119,1.24138,",
        "0,megatron-dcp,16,48119,fast,",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("batches.csv:4") && err.contains("column 'predicted_step_s'"),
        "{err}"
    );
}

#[test]
fn a_missing_column_is_named() {
    let dir = fixture_copy(&[]);
    edit(dir.path(), "groups.csv", ",predicted_s\n", ",predicted_time\n");
    let err = load_err(dir.path());
    assert!(
        err.contains("groups.csv:2") && err.contains("predicted_s") && err.contains("docs/report.md"),
        "{err}"
    );
}

#[test]
fn malformed_json_names_its_line() {
    let dir = fixture_copy(&[]);
    edit(dir.path(), "summary.json", "\"nodes\": 2,", "\"nodes\": two,");
    let err = load_err(dir.path());
    assert!(err.contains("summary.json:6"), "{err}");
}

#[test]
fn an_unknown_summary_version_is_refused() {
    let dir = fixture_copy(&[]);
    edit(
        dir.path(),
        "summary.json",
        "\"format_version\": 1",
        "\"format_version\": 7",
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("format_version 7") && err.contains("re-run the planner"),
        "{err}"
    );
}

#[test]
fn inconsistent_rows_are_refused() {
    let cases: [(&str, &str, &str, &str); 7] = [
        // A group whose size is not ulysses x ring.
        (
            "groups.csv",
            "0,hsap,0,8,8,1,hsap",
            "0,hsap,0,8,4,1,hsap",
            "is not ulysses 4 x ring 1",
        ),
        // A group of a batch the strategy did not price.
        (
            "groups.csv",
            "0,hsap,0,8,8,1,hsap",
            "9,hsap,0,8,8,1,hsap",
            "batch 9 of strategy 'hsap' is not in batches.csv",
        ),
        // A micro-batch beyond the batch's count.
        (
            "groups.csv",
            "0,hsap,0,8,8,1,hsap",
            "0,hsap,3,8,8,1,hsap",
            "micro-batch 3",
        ),
        // A negative time.
        (
            "batches.csv",
            "0,hsap,16,48119,0.930467,0.930467,0.891981,",
            "0,hsap,16,48119,0.930467,0.930467,-0.891981,",
            "compute_s = -0.891981",
        ),
        // The same batch twice.
        (
            "batches.csv",
            "1,hsap,16,36596",
            "0,hsap,16,36596",
            "appears again (first on line 2)",
        ),
        // An unknown scheme.
        (
            "groups.csv",
            "0,hsap,0,8,8,1,hsap",
            "0,hsap,0,8,8,1,magic",
            "column 'scheme'",
        ),
        // A fit point of an unknown collective.
        (
            "fit_points.csv",
            "all_reduce,intra,8,1024,",
            "all_sum,intra,8,1024,",
            "fit_points.csv:2",
        ),
    ];
    for (file, from, to, expected) in cases {
        let dir = fixture_copy(&[]);
        edit(dir.path(), file, from, to);
        let err = load_err(dir.path());
        assert!(
            err.contains(expected) && err.contains(file) && err.contains("hint:"),
            "{file}: {err}"
        );
    }
}

#[test]
fn every_strategy_prices_every_batch() {
    let dir = fixture_copy(&[]);
    let path = dir.path().join("batches.csv");
    let text = std::fs::read_to_string(&path).expect("read");
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("4,static-ring,")).collect();
    std::fs::write(&path, kept.join("\n") + "\n").expect("write");
    // Its groups would now point at a batch that is not priced; drop them too.
    let path = dir.path().join("groups.csv");
    let text = std::fs::read_to_string(&path).expect("read");
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("4,static-ring,")).collect();
    std::fs::write(&path, kept.join("\n") + "\n").expect("write");
    let err = load_err(dir.path());
    assert!(err.contains("strategy 'static-ring' has no row for batch 4"), "{err}");
}

#[test]
fn a_run_without_hsap_is_refused() {
    let dir = fixture_copy(&[]);
    for name in ["batches.csv", "groups.csv"] {
        let path = dir.path().join(name);
        let text = std::fs::read_to_string(&path).expect("read");
        // The strategy is the second column; the scheme column may say hsap too.
        let renamed: Vec<String> = text
            .lines()
            .map(|l| match l.split_once(",hsap,") {
                Some((batch, rest)) if !batch.contains(',') => format!("{batch},ours,{rest}"),
                _ => l.to_string(),
            })
            .collect();
        std::fs::write(&path, renamed.join("\n") + "\n").expect("write");
    }
    let err = load_err(dir.path());
    assert!(err.contains("no rows for strategy 'hsap'"), "{err}");
}

#[test]
fn a_header_without_rows_is_refused() {
    let dir = fixture_copy(&[]);
    let path = dir.path().join(data::FIT_POINTS_CSV);
    std::fs::write(&path, "op,level,ranks,bytes,measured_s,fitted_s,rel_error,held_out\n").expect("write");
    let err = load_err(dir.path());
    assert!(err.contains("fit_points.csv") && err.contains("no rows"), "{err}");
}

#[test]
fn disagreements_with_the_summary_are_warnings_in_the_report() {
    let dir = fixture_copy(&[]);
    edit(
        dir.path(),
        "summary.json",
        "\"total_time_s\": 9.08168",
        "\"total_time_s\": 8.0",
    );
    edit(
        dir.path(),
        "summary.json",
        "\"best_static\": \"static-usp\"",
        "\"best_static\": \"static-ring\"",
    );
    let data = RunData::load(dir.path()).expect("still loads");
    assert_eq!(data.warnings.len(), 2, "{:?}", data.warnings);
    assert!(
        data.warnings[0].contains("gives hsap a total of 8.0000 s"),
        "{:?}",
        data.warnings
    );
    assert!(
        data.warnings[1].contains("batches.csv makes it 'static-usp'"),
        "{:?}",
        data.warnings
    );
    let built = report::build(&data).expect("builds");
    assert!(built.summary_md.contains("## Warnings"));
    assert!(built.index_html.contains("batches.csv makes it &#39;static-usp&#39;"));
}

#[test]
fn a_breakdown_that_does_not_add_up_is_a_warning() {
    let dir = fixture_copy(&[]);
    edit(
        dir.path(),
        "batches.csv",
        "0,hsap,16,48119,0.930467,0.930467,0.891981,",
        "0,hsap,16,48119,0.930467,0.930467,0.5,",
    );
    let data = RunData::load(dir.path()).expect("still loads");
    assert!(
        data.warnings
            .iter()
            .any(|w| w.contains("batches.csv:2") && w.contains("differs from predicted_step_s")),
        "{:?}",
        data.warnings
    );
}
