//! `hsap-tune validate` on the real binary: the dry run prints every rank's schedule; without
//! the NVIDIA driver a real run is a clear error (exit code 4), never a panic.

mod gpu_common;

use assert_cmd::Command;
use predicates::prelude::*;

fn plan_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("plan.json");
    std::fs::write(&path, serde_json::to_string_pretty(&gpu_common::two_node_plan()).unwrap()).unwrap();
    path
}

fn hsap() -> Command {
    Command::cargo_bin("hsap-tune").unwrap()
}

#[test]
fn dry_run_prints_every_ranks_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(&dir);
    let out = hsap().args(["validate", "--dry-run", "--plan"]).arg(&plan).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("model llama3-8b (32 layers), cluster dgx-a100-80g x 2 nodes (16 GPUs)"), "{text}");
    assert!(text.contains("batch 4: 2 micro-batches, predicted step 140 ms"), "{text}");
    assert!(text.contains("group 1: hsap u2xr2 on ranks 8,9,10,11; 4 documents, 6,600 tokens; shard 1,650 rows"), "{text}");
    for rank in 0..16 {
        assert!(text.contains(&format!("\nrank {rank} (node {})\n", rank / 8)), "rank {rank} missing");
    }
    // Rank 13's Ulysses all-to-all of Q: 1000 rows x 32 heads x 128 x 2 bytes to its slot.
    let rank13 = &text[text.find("\nrank 13 ").unwrap()..text.find("\nrank 14 ").unwrap()];
    assert!(rank13.contains("all_to_all q to heads") && rank13.contains("ranks 12,13,14,15; 8,192,000 bytes"), "{rank13}");
    assert!(rank13.contains("layer forward, micro-batch 0, x32"), "{rank13}");
    // Rank 9's ring step sends the split document's 3000 rows to rank 11 on the ring stream.
    let rank9 = &text[text.find("\nrank 9 ").unwrap()..text.find("\nrank 10 ").unwrap()];
    assert!(rank9.contains("ring     send_recv kv") && rank9.contains("to 11, from 11; 3000 rows; 6,144,000 bytes"), "{rank9}");
    assert!(rank9.contains("cu_seqlens"), "{rank9}");
}

#[test]
fn dry_run_of_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(&dir);
    let out = hsap().args(["validate", "--dry-run", "--rank", "3", "--plan"]).arg(&plan).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\nrank 3 (node 0)\n"));
    assert!(!text.contains("\nrank 4 "));
    hsap().args(["validate", "--dry-run", "--rank", "16", "--plan"]).arg(&plan).assert().code(2).stderr(predicate::str::contains("16 GPUs"));
}

#[test]
fn without_the_driver_validate_says_what_is_missing_and_how_to_run() {
    if hsap::gpu::cuda::driver_present() {
        eprintln!("skipped: this machine has the NVIDIA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(&dir);
    hsap()
        .args(["validate", "--plan"])
        .arg(&plan)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("libcuda.so"))
        .stderr(predicate::str::contains("srun "))
        .stderr(predicate::str::contains("mpirun "))
        .stderr(predicate::str::contains("docs/validate.md"))
        .stderr(predicate::str::contains("panicked").not());
}

#[test]
fn a_missing_batch_or_plan_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(&dir);
    hsap()
        .args(["validate", "--dry-run", "--batch", "9", "--plan"])
        .arg(&plan)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no batch 9").and(predicate::str::contains("batches are 4")));
    hsap()
        .args(["validate", "--dry-run", "--plan"])
        .arg(dir.path().join("nope.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope.json"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"format_version\": 1,\n  \"strategy\": 3\n}\n").unwrap();
    hsap().args(["validate", "--dry-run", "--plan"]).arg(&bad).assert().code(2).stderr(predicate::str::contains("bad.json:3"));
}


/// docs/validate.md's example plan is the hand-made plan these tests check (regenerate it with
/// `HSAP_WRITE_EXAMPLE=1 cargo nextest run --release --test gpu_cli example_plan`).
#[test]
fn example_plan_is_the_tested_plan() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/plan.json");
    let want = serde_json::to_string_pretty(&gpu_common::two_node_plan()).unwrap() + "\n";
    if std::env::var("HSAP_WRITE_EXAMPLE").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want, "{} is stale", path.display());
    hsap().args(["validate", "--dry-run", "--rank", "9", "--plan"]).arg(&path).assert().success();
}

/// A plan `tune` wrote: the dry run's schedule, priced by the cost model, takes the step time the
/// plan predicts, batch by batch, within what the executor adds of its own. Here that is 1.25%
/// (gpt-7b, 64 key/value heads of 64): its kernels accumulate in fp32 buffers and cast O, dQ, dK
/// and dV to bf16 in passes of their own, and run the backward's preprocessing as its own kernel,
/// which FlashAttention does inside the calls the cost model prices.
#[test]
fn the_dry_run_of_a_tuned_plan_prices_to_its_predicted_step() {
    let plan = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/plan_small.json");
    let out = hsap().args(["validate", "--dry-run", "--json", "--rank", "0", "--plan"]).arg(&plan).assert().success().get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let batches = v["batches"].as_array().unwrap();
    assert!(!batches.is_empty());
    for b in batches {
        let (predicted, schedule) = (b["predicted_step_s"].as_f64().unwrap(), b["schedule_step_s"].as_f64().unwrap());
        assert!((0.0..0.02).contains(&(schedule / predicted - 1.0)), "batch {}: schedule {schedule} s, predicted {predicted} s", b["batch"]);
        let ranks = b["schedule"]["ranks"].as_array().unwrap();
        assert_eq!(ranks.len(), 1);
        assert_eq!(ranks[0]["rank"], 0);
    }
}
