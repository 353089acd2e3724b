//! Tampered plans fed to `simulate` and `validate --dry-run` on the real binary: each is refused
//! with exit code 2 and a message naming the batch, micro-batch and group, never a panic.
//! The plan is tests/data/validate/plan.json: batch 4 on 2 x 8 GPUs; micro-batch 0 has groups on
//! ranks 0-7 (u4 x r2, documents 0-1), 8-11 (u2 x r2, documents 2-5) and 12-15 (u4, documents
//! 6-7); micro-batch 1 one group on all 16 (documents 8-9).

use assert_cmd::Command;
use serde_json::{json, Value};

const PLAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/validate/plan.json");

fn plan() -> Value {
    serde_json::from_str(&std::fs::read_to_string(PLAN).unwrap()).unwrap()
}

fn group(plan: &mut Value, m: usize, g: usize) -> &mut Value {
    &mut plan["batches"][0]["microbatches"][m]["groups"][g]
}

/// Runs `simulate` and `validate --dry-run` on the plan; both must exit 2 with every `needle` in
/// the message and no panic.
fn refused(plan: &Value, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    std::fs::write(&path, serde_json::to_string(plan).unwrap()).unwrap();
    for args in [&["simulate", "--plan"][..], &["validate", "--dry-run", "--plan"][..]] {
        let out = Command::cargo_bin("hsap-tune").unwrap().args(args).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?}: no '{needle}' in {stderr}");
        }
    }
}

#[test]
fn the_untampered_plan_is_accepted() {
    let out = Command::cargo_bin("hsap-tune").unwrap().args(["simulate", "--plan", PLAN]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_rank_outside_the_cluster() {
    let mut p = plan();
    group(&mut p, 0, 2)["ranks"][3] = json!(99);
    refused(&p, &["plan.json", "batch 4, micro-batch 0, group 2", "rank 99 is outside the cluster (GPUs 0 to 15)"]);
}

#[test]
fn a_rank_in_two_groups() {
    let mut p = plan();
    group(&mut p, 0, 2)["ranks"][0] = json!(8);
    refused(&p, &["batch 4, micro-batch 0, group 2", "rank 8 is also in group 1"]);
}

#[test]
fn a_gpu_in_no_group() {
    // Micro-batch 0 without its group on ranks 12-15.
    let mut p = plan();
    p["batches"][0]["microbatches"][0]["groups"].as_array_mut().unwrap().pop();
    refused(&p, &["batch 4, micro-batch 0", "GPU 12 is in no group"]);
}

#[test]
fn a_group_without_ranks() {
    let mut p = plan();
    group(&mut p, 1, 0)["ranks"] = json!([]);
    refused(&p, &["batch 4, micro-batch 1, group 0", "the group has no ranks"]);
}

#[test]
fn a_zero_degree() {
    let mut p = plan();
    group(&mut p, 0, 1)["ulysses"] = json!(0);
    refused(&p, &["batch 4, micro-batch 0, group 1", "ulysses 0 x ring 2: both degrees must be at least 1"]);
}

#[test]
fn degrees_that_do_not_multiply_to_the_group() {
    let mut p = plan();
    group(&mut p, 0, 0)["ring"] = json!(4);
    refused(&p, &["batch 4, micro-batch 0, group 0", "ulysses 4 x ring 4 is not its 8 ranks"]);
}

#[test]
fn a_document_twice() {
    // Document 6 (1,000 tokens) also in micro-batch 1's group, with its layout unchanged.
    let mut p = plan();
    let doc = group(&mut p, 0, 2)["docs"][0].clone();
    let g = group(&mut p, 1, 0);
    g["docs"].as_array_mut().unwrap().push(doc);
    g["sequences"].as_array_mut().unwrap().push(json!(6));
    refused(&p, &["batch 4, micro-batch 1, group 0", "document 6 is also in micro-batch 0, group 2"]);
}

#[test]
fn a_document_missing() {
    let mut p = plan();
    let docs = p["batches"][0]["docs"].as_array_mut().unwrap();
    docs.push(json!({"index": 10, "offset": 0, "len": 4096}));
    refused(&p, &["batch 4", "document 10 (4096 tokens) is in no group"]);
}

#[test]
fn two_ranks_holding_the_same_tokens() {
    // Rank 4 (slot 1 of the u4 x r2 group) takes tokens 1000..2000 instead of 1250..2250: as
    // many tokens, inside the group, agreeing with its cu_seqlens; but 1000..1250 are rank 1's
    // and 2000..2250 nobody's.
    let mut p = plan();
    group(&mut p, 0, 0)["rank_layouts"][4]["token_ranges"] = json!([{"start": 1000, "end": 2000}]);
    refused(&p, &["batch 4, micro-batch 0, group 0", "ranks 1 and 4 both hold token 1000 (their ranges 1000..1250 and 1000..2000)"]);
}

#[test]
fn token_ranges_that_disagree_with_cu_seqlens() {
    let mut p = plan();
    group(&mut p, 0, 2)["rank_layouts"][1]["cu_seqlens"] = json!([0, 5]);
    refused(&p, &["batch 4, micro-batch 0, group 2", "rank 13", "cu_seqlens"]);
}
