//! Large runs on the real binary: progress on stderr when it is a file, the plan streamed one
//! batch per line (plan.jsonl and plan-header.json) and read back one batch at a time, and
//! clusters of more than 128 nodes planned as identical pods.

use assert_cmd::Command;
use hsap::formats::plan::{PlanStream, PlanWriter};
use hsap::formats::run::is_run_file;
use hsap::plan::Plan;
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;

const TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/small_trace.csv");

fn bin() -> Command {
    Command::cargo_bin("hsap-tune").unwrap()
}

/// Four batches of ten documents on one node, hsap only (or with `baselines`): quick.
fn four_batches(out: &Path) -> Vec<String> {
    with_baselines(out, "none")
}

fn with_baselines(out: &Path, baselines: &str) -> Vec<String> {
    ["--trace", TRACE, "--nodes", "1", "--global-batch", "10", "--baselines", baselines, "--no-report", "--out"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
}

#[test]
fn progress_is_written_as_lines_with_an_estimate_when_stderr_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.txt");
    let file = std::fs::File::create(&log).unwrap();
    let status = std::process::Command::new(assert_cmd::cargo::cargo_bin("hsap-tune"))
        .args(four_batches(&dir.path().join("run")))
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // No terminal redraws in a file.
    assert!(!text.contains('\r'), "{text}");
    for (stage, unit) in [("setup: surrogate tables", "group shapes"), ("planning hsap", "batches"), ("simulating", "batches")] {
        let first = lines.iter().position(|l| l.starts_with(&format!("{stage}: ")));
        let first = first.unwrap_or_else(|| panic!("no {stage} line in:\n{text}"));
        assert!(lines[first].ends_with(unit), "{}", lines[first]);
        assert!(
            lines[first..].iter().any(|l| l.starts_with(stage) && l.contains(&format!(" {unit} in "))),
            "{stage} does not say it finished:\n{text}"
        );
    }
    // Four batches: a line at each of the first three with the time left, the fourth is the end.
    let eta: Vec<&&str> = lines.iter().filter(|l| l.starts_with("planning hsap: ") && l.contains("eta ")).collect();
    assert_eq!(eta.len(), 3, "{text}");
    assert!(eta[0].starts_with("planning hsap: 1/4 batches (25%)"), "{}", eta[0]);
}

#[test]
fn the_plan_is_streamed_one_batch_per_line_and_read_back_batch_by_batch() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    bin().args(with_baselines(&run, "static-usp")).arg("--baseline-plans").assert().success();
    let header: Value = serde_json::from_slice(&std::fs::read(run.join("plan-header.json")).unwrap()).unwrap();
    assert_eq!(header["batches"], 4);
    assert_eq!(header["strategy"], "hsap");
    assert!(header.get("model").is_some() && header.get("cluster").is_some() && header.get("train").is_some());
    let lines = std::fs::read_to_string(run.join("plan.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    for (k, line) in lines.lines().enumerate() {
        let batch: Value = serde_json::from_str(line).unwrap();
        assert_eq!(batch["index"], k);
        let rank0 = &batch["microbatches"][0]["groups"][0]["rank_layouts"][0];
        assert!(rank0["cu_seqlens"].is_array() && rank0["token_ranges"].is_array(), "{rank0}");
    }
    // Small runs also get the plan whole, the same plan.
    let whole = Plan::read(&run.join("plan.json")).unwrap();
    assert_eq!(Plan::read(&run.join("plan.jsonl")).unwrap(), whole);
    assert_eq!(Plan::read(&run.join("plan-header.json")).unwrap(), whole);
    let stream = PlanStream::open(&run.join("plan.jsonl")).unwrap();
    assert_eq!(stream.header(), &whole.header());
    let streamed: Vec<_> = stream.map(Result::unwrap).collect();
    assert_eq!(streamed, whole.batches);
    // The baseline's plan the same way.
    assert_eq!(
        Plan::read(&run.join("plans/static-usp.jsonl")).unwrap(),
        Plan::read(&run.join("plans/static-usp.json")).unwrap()
    );
    // simulate reads one batch of the streamed plan.
    bin()
        .args(["simulate", "--plan"])
        .arg(run.join("plan.jsonl"))
        .args(["--batch", "2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("batch 2: simulated step"));
}

#[test]
fn a_long_plan_is_written_in_parts_of_bounded_size_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    bin().args(four_batches(&run)).assert().success();
    let whole = Plan::read(&run.join("plan.json")).unwrap();
    let lines = std::fs::read_to_string(run.join("plan.jsonl")).unwrap();
    let longest = lines.lines().map(|l| l.len() as u64 + 1).max().unwrap();
    // A budget that two batches always pass and one never does: one batch per file.
    let parted = dir.path().join("parted");
    let mut writer = PlanWriter::create(&parted, "plan", whole.header(), false).unwrap().with_part_bytes(longest + 1);
    whole.batches.iter().for_each(|b| writer.write(b).unwrap());
    writer.finish().unwrap();
    let names = ["plan.jsonl", "plan-00001.jsonl", "plan-00002.jsonl", "plan-00003.jsonl"];
    let mut on_disk: Vec<String> = std::fs::read_dir(&parted).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    on_disk.sort();
    assert_eq!(on_disk, ["plan-00001.jsonl", "plan-00002.jsonl", "plan-00003.jsonl", "plan-header.json", "plan.jsonl"]);
    for name in names {
        let size = std::fs::metadata(parted.join(name)).unwrap().len();
        assert!(size <= longest + 1, "{name}: {size} bytes");
        assert!(is_run_file(Path::new(name)), "{name}");
    }
    let header: Value = serde_json::from_slice(&std::fs::read(parted.join("plan-header.json")).unwrap()).unwrap();
    assert_eq!(header["parts"], serde_json::json!(names));
    // Any of its files names the plan, read from its first batch.
    for name in ["plan-header.json", "plan.jsonl", "plan-00002.jsonl"] {
        assert_eq!(Plan::read(&parted.join(name)).unwrap(), whole, "{name}");
    }
    let streamed: Vec<_> = PlanStream::open(&parted.join("plan.jsonl")).unwrap().map(Result::unwrap).collect();
    assert_eq!(streamed, whole.batches);
    // Readers of one batch find it in its part.
    bin()
        .args(["simulate", "--plan"])
        .arg(parted.join("plan-header.json"))
        .args(["--batch", "3"])
        .assert()
        .success()
        .stdout(predicate::str::contains("batch 3: simulated step"));
    // A missing part is an error naming it.
    std::fs::remove_file(parted.join("plan-00002.jsonl")).unwrap();
    let err = Plan::read(&parted.join("plan.jsonl")).unwrap_err().to_string();
    assert!(err.contains("plan-00002.jsonl"), "{err}");
    // With a budget above the plan, one file as before.
    let single = dir.path().join("single");
    let mut writer = PlanWriter::create(&single, "plan", whole.header(), false).unwrap();
    whole.batches.iter().for_each(|b| writer.write(b).unwrap());
    writer.finish().unwrap();
    assert_eq!(std::fs::read_to_string(single.join("plan.jsonl")).unwrap().lines().count(), 4);
    assert!(!single.join("plan-00001.jsonl").exists());
    assert_eq!(Plan::read(&single.join("plan-header.json")).unwrap(), whole);
}

#[test]
fn a_cut_or_broken_streamed_plan_is_refused_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    bin().args(four_batches(&run)).assert().success();
    let jsonl = run.join("plan.jsonl");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Cut after three batches.
    std::fs::write(&jsonl, lines[..3].join("\n") + "\n").unwrap();
    let err = Plan::read(&jsonl).unwrap_err().to_string();
    assert!(err.contains("plan.jsonl") && err.contains("3 batches, but its header says 4"), "{err}");
    // A batch whose group lost a rank: Plan::check's message, with the line.
    let mut batch: Value = serde_json::from_str(lines[1]).unwrap();
    let ranks = batch["microbatches"][0]["groups"][0]["ranks"].as_array_mut().unwrap();
    ranks.push(Value::from(99));
    let broken = [lines[0].to_string(), batch.to_string(), lines[2].to_string(), lines[3].to_string()].join("\n") + "\n";
    std::fs::write(&jsonl, broken).unwrap();
    bin()
        .args(["simulate", "--plan"])
        .arg(&jsonl)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("plan.jsonl:2: batch 1, micro-batch 0, group 0"));
}

#[test]
fn a_cluster_of_more_than_128_nodes_is_planned_as_identical_pods_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = bin()
        .args(["--trace", TRACE, "--nodes", "256", "--global-batch", "40", "--baselines", "static-usp", "--no-simulate", "--no-report", "--out"])
        .arg(&run)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("planned as 2 identical pods of 128 nodes (1024 GPUs each)"), "{text}");
    assert!(text.contains("static-usp") && text.contains("skipped: the cluster is planned as 2 pods of 128 nodes"), "{text}");
    // Every GPU of both pods is in one group of every micro-batch (Plan::check on reading).
    let plan = Plan::read(&run.join("plan.jsonl")).unwrap();
    assert_eq!(plan.cluster.gpus(), 2048);
    let summary: Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["pods"], 2);
    assert_eq!(summary["pod_nodes"], 128);
    // No group spans the two pods' halves of the cluster.
    for b in &plan.batches {
        for m in &b.microbatches {
            for g in &m.groups {
                let pods: std::collections::BTreeSet<u32> = g.ranks.iter().map(|r| r / 1024).collect();
                assert_eq!(pods.len(), 1, "group {:?}..{:?}", g.ranks.first(), g.ranks.last());
            }
        }
    }
}
