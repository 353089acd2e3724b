//! `hsap-tune inspect` on the real binary: every trace format, and every kind of bad input.

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn hsap() -> Command {
    Command::cargo_bin("hsap-tune").expect("the binary is built")
}

fn data(name: &str) -> String {
    format!("{}/tests/data/traces/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `inspect --json` and returns the parsed object.
fn inspect_json(args: &[&str]) -> Value {
    let out = hsap().arg("inspect").args(args).arg("--json").assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).expect("inspect --json prints JSON")
}

#[test]
fn csv_with_a_named_column_among_others() {
    let v = inspect_json(&["--trace", &data("with_header.csv")]);
    // 120, 4096, 77; the zero-length row is skipped and counted
    assert_eq!(v["count"], 3);
    assert_eq!(v["total_tokens"], 4293);
    assert_eq!((v["min"].as_u64(), v["median"].as_u64(), v["max"].as_u64()), (Some(77), Some(120), Some(4096)));
    assert_eq!(v["skipped_empty"], 1);
}

#[test]
fn zero_length_documents_are_skipped_with_a_warning() {
    hsap()
        .args(["inspect", "--trace", &data("with_header.csv")])
        .assert()
        .success()
        .stderr(predicate::str::contains("skipped 1 zero-length documents"));
}

#[test]
fn csv_without_header_and_with_seq_len() {
    let v = inspect_json(&["--trace", &data("headerless.csv")]);
    assert_eq!((v["count"].as_u64(), v["total_tokens"].as_u64()), (Some(3), Some(3584)));
    let v = inspect_json(&["--trace", &data("seq_len.csv")]);
    assert_eq!((v["count"].as_u64(), v["total_tokens"].as_u64()), (Some(2), Some(30)));
}

#[test]
fn json_lines() {
    let v = inspect_json(&["--trace", &data("lengths.jsonl")]);
    assert_eq!((v["count"].as_u64(), v["median"].as_u64(), v["max"].as_u64()), (Some(3), Some(300), Some(5000)));
    assert_eq!(v["format"], "jsonl");
}

#[test]
fn plain_text_with_comments() {
    let v = inspect_json(&["--trace", &data("lengths.txt")]);
    assert_eq!((v["count"].as_u64(), v["total_tokens"].as_u64()), (Some(3), Some(600)));
}

#[test]
fn megatron_index_counts_documents_not_sequences() {
    // tests/data/traces/make_idx.py: documents of 100+50, 30 and 400+300 tokens.
    let v = inspect_json(&["--trace", &data("megatron_text_document.idx")]);
    assert_eq!(v["count"], 3);
    assert_eq!((v["min"].as_u64(), v["median"].as_u64(), v["max"].as_u64()), (Some(30), Some(150), Some(700)));
    assert_eq!(v["format"], "idx");
}

#[test]
fn format_flag_overrides_the_extension() {
    let v = inspect_json(&["--trace", &data("lengths.txt"), "--format", "txt"]);
    assert_eq!(v["count"], 3);
}

#[test]
fn max_seq_counts_the_documents_over_it() {
    let v = inspect_json(&["--trace", &data("lengths.jsonl"), "--max-seq", "299"]);
    assert_eq!((v["over_max_seq"].as_u64(), v["over_max_seq_tokens"].as_u64()), (Some(2), Some(5300)));
}

#[test]
fn the_wikipedia_trace_has_a_median_of_347() {
    let trace = format!("{}/traces/flexsp_wikipedia_1m.csv", env!("CARGO_MANIFEST_DIR"));
    let v = inspect_json(&["--trace", &trace]);
    assert_eq!(v["count"], 1_000_000);
    assert_eq!(v["median"], 347);
    assert_eq!(v["p99"], 10_919);
    assert_eq!(v["max"], 1_823_777);
}

#[test]
fn human_output_has_the_histogram() {
    hsap()
        .args(["inspect", "--trace", &data("lengths.jsonl")])
        .assert()
        .success()
        .stdout(predicate::str::contains("median 300"))
        .stdout(predicate::str::contains("4,096 - 8,191"));
}

/// Runs inspect on a bad input and checks the exit code and that stderr has every fragment.
fn fails_with(trace: &str, fragments: &[&str]) {
    let assert = hsap().args(["inspect", "--trace", trace]).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    for f in fragments {
        assert!(stderr.contains(f), "stderr lacks {f:?}:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn malformed_row_names_file_line_and_expectation() {
    fails_with(&data("bad_value.csv"), &["bad_value.csv:3", "tokens = 'abc' is not an integer", "hint:"]);
}

#[test]
fn rows_of_crlf_and_blank_lined_files_are_located_on_their_own_lines() {
    // The csv crate's own line count is one short per CRLF line and skips blank lines.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crlf.csv");
    std::fs::write(&path, "tokens\r\n100\r\n\r\n200\r\nabc\r\n").unwrap();
    fails_with(path.to_str().unwrap(), &["crlf.csv:5", "tokens = 'abc' is not an integer"]);
}

#[test]
fn negative_and_fractional_lengths_are_refused() {
    fails_with(&data("negative.csv"), &["negative.csv:3", "-5 is negative"]);
    fails_with(&data("fractional.csv"), &["fractional.csv:3", "'3.5' is not an integer"]);
}

#[test]
fn empty_traces_are_refused() {
    fails_with(&data("empty.csv"), &["empty.csv", "no documents"]);
    fails_with(&data("all_zero.csv"), &["all_zero.csv", "all 2 lengths are zero"]);
}

#[test]
fn a_csv_without_a_length_column_lists_the_accepted_names() {
    fails_with(&data("no_column.csv"), &["no_column.csv:1", "no length column", "tokens, length, seq_len, num_tokens"]);
}

#[test]
fn json_lines_errors_name_the_line() {
    fails_with(&data("missing_field.jsonl"), &["missing_field.jsonl:2", "no length field"]);
    fails_with(&data("broken.jsonl"), &["broken.jsonl:2", "not a JSON object"]);
}

#[test]
fn truncated_megatron_index_is_refused() {
    fails_with(&data("megatron_truncated.idx"), &["megatron_truncated.idx", "truncated"]);
}

#[test]
fn a_missing_trace_file_is_named() {
    fails_with(&data("does_not_exist.csv"), &["does_not_exist.csv", "No such file", "hint: check the path"]);
}

#[test]
fn a_byte_order_mark_is_accepted_in_every_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let bom = "\u{feff}";
    for (name, text) in [
        ("bom.txt", format!("{bom}100\n200\n300\n")),
        ("bom.jsonl", format!("{bom}{{\"tokens\": 100}}\n{{\"tokens\": 200}}\n{{\"tokens\": 300}}\n")),
        ("bom.csv", format!("{bom}tokens\n100\n200\n300\n")),
        // Detected by content, not by extension.
        ("bom.lengths", format!("{bom}{{\"length\": 100}}\n{{\"length\": 200}}\n{{\"length\": 300}}\n")),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let v = inspect_json(&["--trace", path.to_str().unwrap()]);
        assert_eq!((v["count"].as_u64(), v["total_tokens"].as_u64()), (Some(3), Some(600)), "{name}: {v}");
    }
}

#[test]
fn lengths_past_the_largest_integers_are_too_large_not_malformed() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, line) in [
        ("max.txt", "100\n18446744073709551615\n", ":2"),
        ("beyond.txt", "100\n99999999999999999999999\n", ":2"),
        ("max.csv", "tokens\n18446744073709551615\n", ":2"),
        ("beyond.jsonl", "{\"tokens\": 1}\n{\"tokens\": 99999999999999999999999}\n", ":2"),
        ("max.jsonl", "{\"tokens\": 18446744073709551615}\n", ":1"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        fails_with(p, &[&format!("{name}{line}"), "is larger than the supported maximum of 4294967295 tokens"]);
    }
}

/// A Megatron index as tests/data/traces/make_idx.py writes one.
fn megatron_index(lengths: &[i32], doc_bounds: &[i64]) -> Vec<u8> {
    let mut out = b"MMIDIDX\x00\x00".to_vec();
    out.extend(1u64.to_le_bytes());
    out.push(4);
    out.extend((lengths.len() as u64).to_le_bytes());
    out.extend((doc_bounds.len() as u64).to_le_bytes());
    out.extend(lengths.iter().flat_map(|n| n.to_le_bytes()));
    out.extend(lengths.iter().scan(0i64, |at, n| {
        let p = *at;
        *at += i64::from(*n) * 4;
        Some(p)
    }).flat_map(|p| p.to_le_bytes()));
    out.extend(doc_bounds.iter().flat_map(|d| d.to_le_bytes()));
    out
}

#[test]
fn a_megatron_document_that_ends_past_the_sequences_is_refused() {
    // Found by the fuzzer (fuzz/regressions/trace_idx): boundaries 0, 7, 5 over 5 sequences end
    // where they should, but the first document runs past the last sequence.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.idx");
    std::fs::write(&path, megatron_index(&[100, 50, 30, 400, 300], &[0, 7, 5])).unwrap();
    fails_with(path.to_str().unwrap(), &["bad.idx", "document 0 ends at sequence 7, past the index's 5 sequences"]);
    // The same writer makes a valid index of the fixture's three documents.
    let good = dir.path().join("good.idx");
    std::fs::write(&good, megatron_index(&[100, 50, 30, 400, 300], &[0, 2, 3, 5])).unwrap();
    assert_eq!(std::fs::read(&good).unwrap(), std::fs::read(data("megatron_text_document.idx")).unwrap());
}
