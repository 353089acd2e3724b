//! Sizes past what hsap can count are refused with exit code 2 and a message naming the flag or
//! field, never an arithmetic overflow or another panic (on the real binary).

use assert_cmd::Command;
use serde_json::json;

/// Runs hsap-tune; it must exit 2 naming every `needle`, without panicking.
fn refused(args: &[&str], needles: &[&str]) {
    let out = Command::cargo_bin("hsap-tune").unwrap().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: no '{needle}' in {stderr}");
    }
}

const QUICK: [&str; 7] = ["--limit-batches", "1", "--baselines", "none", "--no-report", "--no-simulate", "--json"];

fn tune(dir: &tempfile::TempDir, extra: &[&str]) -> Vec<String> {
    let out = dir.path().join("run").display().to_string();
    extra.iter().chain(&QUICK).map(|s| s.to_string()).chain(["--out".into(), out]).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn nodes_past_the_gpu_bound() {
    let dir = tempfile::tempdir().unwrap();
    // 536,870,912 nodes x 8 GPUs is 2^32 GPUs: one more than a u32 counts.
    refused(&strs(&tune(&dir, &["--nodes", "536870912"])), &["--nodes 536870912", "4,294,967,296 GPUs", "at most 1,048,576"]);
}

#[test]
fn a_hugging_face_config_with_huge_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let huge = json!({
        "model_type": "llama", "hidden_size": 4_000_000_000u64, "num_attention_heads": 32,
        "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256
    });
    std::fs::write(&config, huge.to_string()).unwrap();
    let model = config.display().to_string();
    refused(&strs(&tune(&dir, &["--model", &model])), &["config.json", "hidden_size = 4,000,000,000", "at most"]);
    let heads = json!({
        "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 65536, "head_dim": 65536,
        "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256
    });
    std::fs::write(&config, heads.to_string()).unwrap();
    refused(&strs(&tune(&dir, &["--model", &model])), &["config.json", "num_attention_heads = 65,536"]);
}

#[test]
fn a_document_of_4_billion_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("lengths.txt");
    std::fs::write(&trace, "4294967295\n1000\n").unwrap();
    let trace = trace.display().to_string();
    refused(&strs(&tune(&dir, &["--trace", &trace, "--max-seq", "4294967295"])), &["--max-seq 4,294,967,295", "at most 2,147,483,647"]);
}

#[test]
fn a_batch_past_the_token_bound() {
    // Two documents of 2^31 - 1 tokens in one batch: each fits, the batch does not.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("lengths.txt");
    std::fs::write(&trace, "2147483647\n2147483647\n").unwrap();
    let trace = trace.display().to_string();
    refused(
        &strs(&tune(&dir, &["--trace", &trace, "--max-seq", "2147483647", "--global-batch", "2"])),
        &["--global-batch", "batch 0 holds 4,294,967,294 tokens"],
    );
    refused(
        &strs(&tune(&dir, &["--trace", &trace, "--max-seq", "1000", "--batch-tokens", "18446744073709551615"])),
        &["--batch-tokens 18,446,744,073,709,551,615", "at most 2,147,483,647"],
    );
}

#[test]
fn the_longest_document_a_batch_may_hold_is_refused_for_memory_not_by_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("lengths.txt");
    std::fs::write(&trace, "2147483647\n").unwrap();
    let trace = trace.display().to_string();
    refused(
        &strs(&tune(&dir, &["--trace", &trace, "--max-seq", "2147483647", "--global-batch", "1"])),
        &["2,147,483,647-token document does not fit in memory"],
    );
}

#[test]
fn a_plan_on_too_many_gpus_or_a_huge_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/validate/plan.json");
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let plan = path.display().to_string();
    let mut p = original.clone();
    p["cluster"]["nodes"] = json!(536_870_912u64);
    std::fs::write(&path, p.to_string()).unwrap();
    refused(&["simulate", "--plan", &plan], &["plan.json", "nodes", "4,294,967,296 GPUs"]);
    refused(&["validate", "--dry-run", "--plan", &plan], &["plan.json", "nodes", "4,294,967,296 GPUs"]);
    let mut p = original;
    p["model"]["hidden"] = json!(4_000_000_000u64);
    std::fs::write(&path, p.to_string()).unwrap();
    refused(&["simulate", "--plan", &plan], &["plan.json", "hidden = 4,000,000,000"]);
}
