//! `hsap-tune simulate` on the real binary: the report, the JSON, and the Perfetto timeline,
//! checked against the trace-event format's required fields.

use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;
use serde_json::Value;

const PLAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/validate/plan.json");

#[test]
fn a_batch_report_names_its_straggler_and_the_ideal() {
    cargo_bin_cmd!("hsap-tune")
        .args(["simulate", "--plan", PLAN, "--batch", "4"])
        .assert()
        .success()
        .stdout(predicate::str::contains("batch 4: simulated step"))
        .stdout(predicate::str::contains("ideal step"))
        .stdout(predicate::str::contains("straggler"));
}

#[test]
fn json_has_the_step_and_per_gpu_figures() {
    let out = cargo_bin_cmd!("hsap-tune").args(["simulate", "--plan", PLAN, "--batch", "4", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = v["step_s"].as_f64().unwrap();
    let isolated = v["isolated_step_s"].as_f64().unwrap();
    // Sharing links can only slow a plan down.
    assert!(step >= isolated * (1.0 - 1e-9), "{step} < {isolated}");
    assert_eq!(v["gpu_busy_s"].as_array().unwrap().len(), 16);
    assert!(v["ratio_to_ideal"].as_f64().unwrap() >= 1.0);
}

#[test]
fn the_timeline_is_a_valid_trace_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timeline.json");
    cargo_bin_cmd!("hsap-tune")
        .args(["simulate", "--plan", PLAN, "--batch", "4", "--timeline"])
        .arg(&path)
        .assert()
        .success();
    check_trace_events(&path, 16);
}

#[test]
fn a_real_plan_replays_into_a_valid_timeline() {
    // The planner's own plan of one batch of the default trace on 64 GPUs.
    let dir = tempfile::tempdir().unwrap();
    cargo_bin_cmd!("hsap-tune")
        .args(["--limit-batches", "1", "--baselines", "static-usp", "--no-report", "--no-simulate", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    let path = dir.path().join("timeline.json");
    cargo_bin_cmd!("hsap-tune")
        .args(["simulate", "--batch", "0", "--plan"])
        .arg(dir.path().join("plan.json"))
        .arg("--timeline")
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("batch 0: simulated step"));
    check_trace_events(&path, 64);
}

/// Checks a Chrome/Perfetto trace-event file: the required fields of every event, and spans on
/// `gpus` GPUs.
fn check_trace_events(path: &std::path::Path, gpus: usize) {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().expect("a traceEvents array");
    let mut spans_per_gpu = std::collections::BTreeMap::new();
    for e in events {
        // Required by the trace-event format for every event: name, ph, pid, tid.
        assert!(e["name"].is_string() && e["ph"].is_string(), "{e}");
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
        match e["ph"].as_str().unwrap() {
            "X" => {
                let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
                assert!(ts >= 0.0 && dur > 0.0, "{e}");
                *spans_per_gpu.entry(e["pid"].as_u64().unwrap()).or_insert(0) += 1;
            }
            // Metadata: names in `args.name`; a process's sort index, a number, in
            // `args.sort_index` (GPU order).
            "M" if e["name"] == "process_sort_index" => {
                assert_eq!(e["args"]["sort_index"].as_u64(), e["pid"].as_u64(), "{e}");
                assert!(e["args"].get("name").is_none(), "{e}");
            }
            "M" => assert!(e["args"]["name"].is_string(), "{e}"),
            other => panic!("unexpected phase {other}"),
        }
    }
    assert_eq!(spans_per_gpu.len(), gpus, "every GPU has spans");
}

#[test]
fn a_missing_batch_lists_the_ones_there_are() {
    cargo_bin_cmd!("hsap-tune")
        .args(["simulate", "--plan", PLAN, "--batch", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no batch 0"));
}
