//! `hsap-tune report --from DIR` on the real binary.

mod report_common;

use assert_cmd::Command;
use predicates::prelude::*;
use report_common::fixture_copy;

fn hsap_tune() -> Command {
    Command::cargo_bin("hsap-tune").expect("the binary is built")
}

#[test]
fn report_writes_into_the_run_directory() {
    let dir = fixture_copy(&[]);
    hsap_tune()
        .args(["report", "--from"])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("8 figures as SVG, PNG and CSV"))
        .stderr(predicate::str::is_empty());
    let report = dir.path().join("report");
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    assert_eq!(html.matches("<svg").count(), 8);
    assert!(std::fs::read_to_string(report.join("summary.md"))
        .expect("summary.md")
        .contains("| hsap | 9.082 |"));
}

#[test]
fn report_out_puts_it_elsewhere_and_warnings_go_to_stderr() {
    let dir = fixture_copy(&["measurements.csv", "fit_points.csv"]);
    report_common::edit(dir.path(), "summary.json", "\"batches\": 6", "\"batches\": 5");
    let out = tempfile::tempdir().expect("temp");
    hsap_tune()
        .args(["report", "--from"])
        .arg(dir.path())
        .arg("--out")
        .arg(out.path().join("r"))
        .assert()
        .success()
        .stdout(predicate::str::contains("6 figures"))
        .stderr(predicate::str::contains(
            "warning: summary.json counts 5 batches but batches.csv has 6",
        ));
    assert!(out.path().join("r/plans.png").is_file());
    assert!(!dir.path().join("report").exists());
}

#[test]
fn a_report_drawn_again_without_measurements_drops_their_figures() {
    let dir = fixture_copy(&[]);
    let run = || {
        hsap_tune()
            .args(["report", "--from"])
            .arg(dir.path())
            .assert()
            .success()
    };
    run();
    let stale = dir.path().join("report/calibration_fit.png");
    assert!(stale.is_file());
    std::fs::remove_file(dir.path().join("measurements.csv")).expect("remove");
    std::fs::remove_file(dir.path().join("fit_points.csv")).expect("remove");
    run();
    assert!(!stale.exists());
    assert!(!dir.path().join("report/predicted_vs_measured.csv").exists());
    assert!(dir.path().join("report/plans.png").is_file());
}

#[test]
fn a_missing_run_directory_is_a_usage_error() {
    hsap_tune()
        .args(["report", "--from", "/nonexistent/run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error: /nonexistent/run").and(predicate::str::contains("hint:")));
}

#[test]
fn a_malformed_file_is_named_with_its_line() {
    let dir = fixture_copy(&[]);
    report_common::edit(
        dir.path(),
        "groups.csv",
        "0,hsap,0,8,8,1,hsap,1,8,",
        "0,hsap,0,8,8,1,hsap,1,eight,",
    );
    hsap_tune()
        .args(["report", "--from"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("groups.csv:2").and(predicate::str::contains("column 'documents'")));
}

#[test]
fn a_missing_font_is_explained() {
    let dir = fixture_copy(&[]);
    hsap_tune()
        .env(hsap::report::FONT_ENV, "/nonexistent/font.ttf")
        .args(["report", "--from"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/font.ttf").and(predicate::str::contains("fonts-dejavu-core")));
}
