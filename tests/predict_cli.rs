//! `hsap-tune predict` on the real binary: the shipped example scenarios, the JSON contract,
//! over-memory reporting, and errors that name the file, line and field.

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;

fn hsap() -> Command {
    Command::cargo_bin("hsap-tune").unwrap()
}

fn predict_json(scenario: &str) -> Value {
    let out = hsap().args(["predict", "--scenario", scenario, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn every_example_scenario_runs_and_prints_a_table() {
    let examples: Vec<_> = std::fs::read_dir("docs/examples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "json"))
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for path in examples {
        hsap()
            .args(["predict", "--scenario"])
            .arg(&path)
            .assert()
            .success()
            .stdout(predicate::str::contains("time").and(predicate::str::contains("TFLOP/s per GPU")).and(predicate::str::contains("memory")));
    }
}

#[test]
fn json_has_the_contracted_fields_and_a_consistent_breakdown() {
    let v = predict_json("docs/examples/llama3-8b-hsap-step.toml");
    for key in ["time_s", "tflops_per_gpu", "mfu", "memory_bytes_per_gpu", "breakdown"] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    let b = &v["breakdown"];
    let time = v["time_s"].as_f64().unwrap();
    let collectives = b["collectives"].as_array().unwrap();
    assert!(collectives.iter().any(|c| c["collective"] == "all_to_all"), "{b}");
    for c in collectives {
        assert!(c["exposed_s"].as_f64().unwrap() <= c["total_s"].as_f64().unwrap() + 1e-12, "{c}");
    }
    let exposed: f64 = collectives.iter().map(|c| c["exposed_s"].as_f64().unwrap()).sum();
    // time = compute + exposed communication + idle + data-parallel sync and optimizer (each
    // carrying the stack's fitted factor)
    let sum = b["compute_s"].as_f64().unwrap() + exposed + b["idle_s"].as_f64().unwrap() + b["data_parallel_exposed_s"].as_f64().unwrap();
    assert!((sum - time).abs() <= 1e-9 * time, "{sum} vs {time}");
    let mfu = v["mfu"].as_f64().unwrap();
    assert!(mfu > 0.0 && mfu < 1.0, "{mfu}");
}

#[test]
fn toml_and_json_of_the_same_scenario_agree() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "s.toml",
        "scope = \"attention\"\npasses = \"fwd\"\n[model]\nheads = 32\nhead_dim = 128\nkv_heads = 8\n[cluster]\npreset = \"dgx-a100-80g\"\n[strategy]\nscheme = \"ulysses\"\nulysses = 8\n[batch]\nsequences = [65536]\n",
    );
    let json = write(
        dir.path(),
        "s.json",
        r#"{"scope": "attention", "passes": "fwd", "model": {"heads": 32, "head_dim": 128, "kv_heads": 8},
            "cluster": {"preset": "dgx-a100-80g"}, "strategy": {"scheme": "ulysses", "ulysses": 8},
            "batch": {"sequences": [65536]}}"#,
    );
    let (a, b) = (predict_json(&toml), predict_json(&json));
    assert_eq!(a["time_s"], b["time_s"]);
    assert!(a["time_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_scenario_that_does_not_fit_is_priced_and_says_by_how_much() {
    let v = predict_json("docs/examples/llama3-70b-over-memory.toml");
    assert_eq!(v["fits_in_memory"], false);
    let over = v["over_memory_bytes"].as_f64().unwrap();
    let expected = v["memory_bytes_per_gpu"].as_f64().unwrap() - v["memory_limit_bytes"].as_f64().unwrap();
    assert!(over > 0.0 && (over - expected).abs() < 1.0, "{over} vs {expected}");
    assert!(v["time_s"].as_f64().unwrap() > 0.0);
    hsap()
        .args(["predict", "--scenario", "docs/examples/llama3-70b-over-memory.toml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("DOES NOT FIT").and(predicate::str::contains("GiB over")));
}

#[test]
fn syntax_and_unknown_field_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", "scope = \"step\"\n[model]\npreset = \"llama3-8b\"\nlayerz = 3\n");
    hsap()
        .args(["predict", "--scenario", &path])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.toml:4").and(predicate::str::contains("layerz")));
    let json = write(dir.path(), "bad.json", "{\n  \"scope\": \"step\",\n  \"model\": {\"preset\": 3}\n}\n");
    hsap().args(["predict", "--scenario", &json]).assert().code(2).stderr(predicate::str::contains("bad.json:3"));
}

#[test]
fn semantic_errors_name_the_field_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "gpus.toml",
        "scope = \"step\"\n[model]\npreset = \"llama3-8b\"\n[cluster]\npreset = \"dgx-a100-80g\"\ngpus = 6\n[strategy]\nscheme = \"ulysses\"\nulysses = 4\n[batch]\nsequences = [8192]\n",
    );
    hsap()
        .args(["predict", "--scenario", &path])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("gpus.toml:6").and(predicate::str::contains("field 'cluster.gpus'")).and(predicate::str::contains("hint:")));
    let heads = write(
        dir.path(),
        "heads.toml",
        "scope = \"attention\"\n[model]\nheads = 32\nhead_dim = 128\n[cluster]\npreset = \"dgx-a100-80g\"\n[strategy]\nscheme = \"ulysses\"\nulysses = 3\n[batch]\nsequences = [8192]\n",
    );
    hsap().args(["predict", "--scenario", &heads]).assert().code(2).stderr(predicate::str::contains("heads.toml:9"));
    let missing = write(
        dir.path(),
        "missing.toml",
        "scope = \"step\"\n[model]\nheads = 32\nhead_dim = 128\n[cluster]\npreset = \"dgx-a100-80g\"\n[strategy]\nscheme = \"ulysses\"\n[batch]\nsequences = [8192]\n",
    );
    hsap()
        .args(["predict", "--scenario", &missing])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("field 'model.layers': missing"));
}

#[test]
fn unknown_presets_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.toml",
        "[model]\npreset = \"llama3-8b\"\n[cluster]\npreset = \"dgx-b300\"\n[strategy]\nscheme = \"ulysses\"\n[batch]\nsequences = [8192]\n",
    );
    hsap().args(["predict", "--scenario", &path]).assert().code(2).stderr(predicate::str::contains("unknown cluster 'dgx-b300'"));
    hsap()
        .args(["predict", "--scenario", "no/such/file.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no/such/file.toml"));
    hsap().args(["predict"]).assert().failure().stderr(predicate::str::contains("--scenario"));
}

#[test]
fn reference_tables_print_the_validation() {
    hsap()
        .args(["predict", "--reference", "usp"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("median |time error|")
                .and(predicate::str::contains("zigzag_qkvpack"))
                .and(predicate::str::contains("unexplained")),
        );
    let out = hsap().args(["predict", "--reference", "alltoall", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 6);
}
