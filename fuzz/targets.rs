//! The bodies of the fuzz targets: each takes arbitrary bytes to one of hsap's parsers of user
//! input, and through what the commands do next with what it read. Every input must come back as
//! a value or an `hsap::Error`: a panic, an overflow, a hang or a crash is a finding.
//!
//! Shared by the libFuzzer targets (`fuzz_targets/*.rs`, built by `cargo +nightly fuzz`) and the
//! stable replay of the seeds and of every crash found so far (`tests/fuzz_corpus.rs`).
#![allow(dead_code)] // each libFuzzer target uses one of these; the stable replay uses them all

use hsap::calibrate::nccl_tests::{self, NcclOp};
use hsap::calibrate::profile::{self, Hints, MeasurementFile};
use hsap::cluster::{Cluster, Collective};
use hsap::cost::scenario::{self, Scenario};
use hsap::cost::{comm, sources, Transfer};
use hsap::model::ModelShape;
use hsap::plan::Plan;
use hsap::trace::{Trace, TraceFormat};
use std::path::Path;

/// Every target by name, as `fuzz_targets/NAME.rs`, `fuzz/seeds/NAME/` and `fuzz/regressions/NAME/` are named.
pub const TARGETS: [(&str, fn(&[u8])); 12] = [
    ("trace_csv", trace_csv),
    ("trace_jsonl", trace_jsonl),
    ("trace_text", trace_text),
    ("trace_idx", trace_idx),
    ("nccl_tests", nccl_tests_log),
    ("measurements", measurements),
    ("scenario_toml", scenario_toml),
    ("scenario_json", scenario_json),
    ("hf_config", hf_config),
    ("cluster_toml", cluster_toml),
    ("model_toml", model_toml),
    ("plan_json", plan_json),
];

fn trace(format: TraceFormat, name: &str, data: &[u8]) {
    if let Ok(trace) = Trace::parse(Path::new(name), format, data) {
        // What `inspect` and `tune` compute from every trace.
        let _ = trace.stats(Some(8192));
        let _ = trace.total_tokens();
    }
}

pub fn trace_csv(data: &[u8]) {
    trace(TraceFormat::Csv, "fuzz.csv", data);
}

pub fn trace_jsonl(data: &[u8]) {
    trace(TraceFormat::JsonLines, "fuzz.jsonl", data);
}

pub fn trace_text(data: &[u8]) {
    trace(TraceFormat::Text, "fuzz.txt", data);
}

pub fn trace_idx(data: &[u8]) {
    trace(TraceFormat::MegatronIdx, "fuzz.idx", data);
}

/// An nccl-tests log read as `calibrate` reads it, then inferred and fitted (the hints stand in
/// for what a log does not say).
pub fn nccl_tests_log(data: &[u8]) {
    if data.contains(&0) {
        return; // `nccl_tests::read` refuses binary files before parsing
    }
    let text = String::from_utf8_lossy(data);
    let Ok(log) = nccl_tests::parse(Path::new("fuzz.log"), &text) else { return };
    for run in &log.runs {
        let _ = run.summary();
    }
    let hints = Hints { op: Some(NcclOp::AllReduce), ranks: Some(16), nodes: Some(2) };
    let _ = profile::calibrate(base(), &[log], &[], &hints);
}

/// A measurements CSV read and fitted as `calibrate --measurements` does.
pub fn measurements(data: &[u8]) {
    let path = Path::new("fuzz.csv");
    let Ok(rows) = hsap::formats::measurements::parse_located(path, data) else { return };
    let file = MeasurementFile { path: path.to_path_buf(), rows };
    let _ = profile::calibrate(base(), &[], &[file], &Hints::default());
}

pub fn scenario_toml(data: &[u8]) {
    scenario_file("fuzz.toml", data);
}

pub fn scenario_json(data: &[u8]) {
    scenario_file("fuzz.json", data);
}

/// The largest scenario the targets price: the cost model's time grows with the documents and
/// nodes of a scenario, and the fuzzer is after parsing faults, not after slow but valid inputs.
const MAX_SCENARIO_TOKENS: u64 = 1 << 22;
const MAX_SCENARIO_SEQUENCES: usize = 1024;
const MAX_SCENARIO_NODES: u32 = 64;

/// A `predict` scenario parsed as `predict --scenario` does, and priced when it names only presets
/// (a path inside it would make the fuzzer read arbitrary files) and stays within the bounds above.
fn scenario_file(name: &str, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new(name);
    let Ok(s) = Scenario::parse(path, text) else { return };
    let presets_only = s.model.config.is_none()
        && s.model.preset.as_ref().is_none_or(|p| ModelShape::preset_names().contains(p))
        && Cluster::preset_names().contains(&s.cluster.preset);
    let sequences: Vec<&u32> = s.batch.sequences.iter().flatten().chain(s.batch.packed.iter().flatten().flatten()).collect();
    let tokens: u64 = sequences.iter().map(|&&l| u64::from(l)).sum();
    let small = tokens <= MAX_SCENARIO_TOKENS && sequences.len() <= MAX_SCENARIO_SEQUENCES && s.cluster.nodes.unwrap_or(1) <= MAX_SCENARIO_NODES;
    if presets_only && small {
        let _ = scenario::predict(&s, path, text);
    }
}

pub fn hf_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = ModelShape::from_hf_config(Path::new("config.json"), text) {
        let _ = m.params();
    }
}

pub fn model_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = ModelShape::from_toml(Path::new("model.toml"), text) {
        let _ = m.params();
    }
}

/// A cluster file (a preset or a calibrated profile), then the collectives every plan prices on it.
pub fn cluster_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cluster) = Cluster::from_toml(Path::new("cluster.toml"), text) else { return };
    let _ = sources::describe(&cluster);
    for collective in Collective::ALL {
        for (ranks, nodes) in [(8, 1), (16, 2), (64, 8)] {
            let _ = comm::time_s(&cluster, &Transfer::new(collective, ranks, nodes, 1e8));
        }
    }
}

pub fn plan_json(data: &[u8]) {
    let _ = Plan::parse(Path::new("plan.json"), data);
}

/// The cluster the calibration targets fit against, resolved once: parsing the preset again for
/// every input would spend the fuzzer's executions on a file that never changes.
fn base() -> &'static Cluster {
    static BASE: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    BASE.get_or_init(|| Cluster::resolve("dgx-h100").expect("dgx-h100 is a preset"))
}
