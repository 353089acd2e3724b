//! Linear attention and hybrid models (issue 17): layer kinds, the chunked algorithm's FLOPs,
//! the LASP schemes' state exchanges, against figures computed by hand in the comments, and
//! `predict` on the real binary.

use assert_cmd::Command;
use hsap::cluster::{Cluster, Collective};
use hsap::cost::{CostModel, Pass, Scope, TrainConfig};
use hsap::model::{LayerKind, ModelShape};
use hsap::scheme::{GroupShape, RingVariant, Scheme};
use hsap::workload::{Kernel, Linear, Part, Workload};
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;

fn cost_model(model: &str, nodes: u32, train: TrainConfig) -> CostModel {
    let c = Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(nodes).unwrap();
    CostModel::new(ModelShape::resolve(model).unwrap(), c, train).unwrap()
}

fn shape(scheme: Scheme, r: u32) -> GroupShape {
    GroupShape { scheme, ulysses: 1, ring: r, variant: RingVariant::Basic }
}

fn fwd_only() -> TrainConfig {
    TrainConfig { backward: false, zero: 0, ..TrainConfig::default() }
}

fn is_chunk(linear: Linear) -> bool {
    matches!(linear, Linear::ChunkScores | Linear::ChunkOutput | Linear::ChunkInter | Linear::ChunkState | Linear::ChunkDelta)
}

/// FLOPs of the chunk products the busiest slot runs in `pass`, per layer.
fn chunk_gemm_flops(w: &Workload, pass: Pass) -> f64 {
    slot_chunk_flops(w, pass).into_iter().fold(0.0, f64::max)
}

/// FLOPs of the chunk products each slot runs in `pass`, per layer.
fn slot_chunk_flops(w: &Workload, pass: Pass) -> Vec<f64> {
    let r = w.shape.ring as usize;
    (0..r)
        .map(|slot| {
            w.steps
                .iter()
                .filter(|s| s.pass == pass && s.part == Part::Attention)
                .flat_map(|s| s.compute.kernels_of(slot))
                .map(|k| match k {
                    Kernel::Gemm { linear, m, n, k } if is_chunk(linear) => 2.0 * m * n * k,
                    _ => 0.0,
                })
                .sum::<f64>()
        })
        .collect()
}

#[test]
fn presets_list_their_layer_kinds() {
    let linear = ModelShape::resolve("linear-llama3-1b").unwrap();
    assert_eq!(linear.layer_counts(), (0, 16));
    let hybrid = ModelShape::resolve("hybrid-llama3-1b-3to1").unwrap();
    assert_eq!(hybrid.layer_counts(), (4, 12));
    assert_eq!(hybrid.layer_kinds()[..4], [LayerKind::Linear, LayerKind::Linear, LayerKind::Linear, LayerKind::Softmax]);
    let seven = ModelShape::resolve("hybrid-llama3-8b-7to1").unwrap();
    assert_eq!(seven.layer_counts(), (4, 28));
    assert_eq!(seven.layer_kinds()[7], LayerKind::Softmax);
    // Every softmax model keeps its layers softmax.
    assert_eq!(ModelShape::resolve("llama3-8b").unwrap().layer_counts(), (32, 0));
    // A linear layer of linear-llama3-1b: Q, K, V of 16 heads x 128 (3 x 2048 x 2048), the output
    // projection (2048 x 2048) and the gated MLP (3 x 2048 x 8192): 16,777,216 + 50,331,648
    // = 67,108,864; its softmax layer has 8 KV heads of 128: (2048 + 2 x 1024) x 2048 +
    // 2048 x 2048 + 50,331,648 = 62,914,560. The 3:1 hybrid: 12 x 67,108,864 + 4 x 62,914,560 =
    // 1,056,964,608, plus one tied 128,256 x 2048 embedding (262,668,288).
    assert_eq!(linear.kind_layer_params(LayerKind::Linear), 67_108_864);
    assert_eq!(linear.kind_layer_params(LayerKind::Softmax), 62_914_560);
    assert_eq!(hybrid.params(), 1_056_964_608 + 262_668_288);
}

#[test]
fn explicit_softmax_indices_equal_the_pattern_and_bad_patterns_are_refused() {
    let text = std::fs::read_to_string("models/transformers/hybrid-llama3-1b-3to1.toml").unwrap();
    let indices = text.replace("layer_pattern = \"LLLS\"", "softmax_layers = [3, 7, 11, 15]");
    let by_index = ModelShape::from_toml(Path::new("h.toml"), &indices).unwrap();
    assert_eq!(by_index.layer_kinds(), ModelShape::resolve("hybrid-llama3-1b-3to1").unwrap().layer_kinds());
    for (bad, says) in [
        ("layer_pattern = \"LLXS\"", "letters S (softmax) and L (linear)"),
        ("softmax_layers = [3, 16]", "lists layer 16 of 16"),
        ("softmax_layers = [3, 3]", "lists layer 3 twice"),
    ] {
        let err = ModelShape::from_toml(Path::new("h.toml"), &text.replace("layer_pattern = \"LLLS\"", bad)).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
    let no_shape = text.split("[linear_attention]").next().unwrap();
    let err = ModelShape::from_toml(Path::new("h.toml"), no_shape).unwrap_err().to_string();
    assert!(err.contains("linear layers without a [linear_attention] shape"), "{err}");
}

#[test]
fn chunk_flops_by_hand_with_documents_resetting_the_state() {
    // linear-llama3-1b: C = 64, d_k = d_v = 128, 16 heads. One chunk of one head, forward:
    // Q K^T 2 x 64 x 128 x 64 = 1,048,576; S V 1,048,576; Q M 2 x 64 x 128 x 128 = 2,097,152;
    // K^T V 2,097,152: 6,291,456 (= 2 C^2 (d_k + d_v) + 4 C d_k d_v).
    let cm = cost_model("linear-llama3-1b", 1, fwd_only());
    let one = shape(Scheme::Lasp2, 1);
    let w = cm.workload(&one, &[vec![8192]], Scope::Attention);
    // 8,192 tokens: 128 chunks x 16 heads x 6,291,456 = 12,884,901,888.
    assert_eq!(chunk_gemm_flops(&w, Pass::Fwd), 12_884_901_888.0);
    assert_eq!(w.flops_per_gpu, 12_884_901_888.0);
    // Varlen: documents of 100 and 28 tokens are chunked apart (2 + 1 chunks, not 128 / 64 = 2).
    let w = cm.workload(&one, &[vec![100, 28]], Scope::Attention);
    assert_eq!(chunk_gemm_flops(&w, Pass::Fwd), 3.0 * 16.0 * 6_291_456.0);
    // The backward computes each product's two gradients: twice the forward.
    let train = TrainConfig { zero: 0, checkpointing: hsap::cost::Checkpointing::None, ..TrainConfig::default() };
    let w = cost_model("linear-llama3-1b", 1, train).workload(&one, &[vec![8192]], Scope::Attention);
    assert_eq!(chunk_gemm_flops(&w, Pass::Bwd), 2.0 * 12_884_901_888.0);
}

#[test]
fn lasp2_gathers_every_ranks_state_once_per_pass_beside_the_intra_chunk_work() {
    // Ring 8 on one DGX A100: each rank's state is 16 heads x 128 x 128 x 4 B = 1,048,576 bytes;
    // the all-gather's output holds 8 of them, 8,388,608 bytes, forward and backward, for each
    // of the 16 layers.
    let cm = cost_model("linear-llama3-1b", 1, TrainConfig { zero: 0, checkpointing: hsap::cost::Checkpointing::None, ..TrainConfig::default() });
    let w = cm.workload(&shape(Scheme::Lasp2, 8), &[vec![65_536]], Scope::Step);
    let gathers: Vec<_> = w.steps.iter().filter_map(|s| s.transfer.filter(|t| t.collective == Collective::AllGather && s.part == Part::Attention).map(|t| (s, t))).collect();
    assert_eq!(gathers.len(), 2, "one per pass");
    for (step, t) in gathers {
        assert_eq!((t.bytes, t.ranks, step.repeat, step.overlapped), (8_388_608.0, 8, 16, true), "{}", step.label);
    }
    // 65,536 tokens over 8 ranks: 8,192 each, 128 chunks: a rank's forward chunk work is the
    // single GPU's over 8,192 tokens.
    assert_eq!(chunk_gemm_flops(&w, Pass::Fwd), 12_884_901_888.0);
}

#[test]
fn lasp1_sends_the_state_from_rank_to_rank_one_hop_after_another() {
    // Ring 8: seven hops of 1,048,576 bytes each, one message each, exposed.
    let cm = cost_model("linear-llama3-1b", 1, fwd_only());
    let w = cm.workload(&shape(Scheme::Lasp1, 8), &[vec![65_536]], Scope::Layer);
    let chains: Vec<_> = w.steps.iter().filter(|s| s.label.contains("state chain")).collect();
    assert_eq!(chains.len(), 1);
    let t = chains[0].transfer.unwrap();
    assert_eq!((t.collective, t.bytes, t.messages, chains[0].overlapped), (Collective::SendRecv, 7.0 * 1_048_576.0, 7, false));
    // The same chunk work as LASP-2; the state chain makes LASP-1 slower on the same layout.
    let lasp2 = cm.program_batch(&shape(Scheme::Lasp2, 8), &[vec![65_536]], Scope::Layer);
    let lasp1 = cm.program_batch(&shape(Scheme::Lasp1, 8), &[vec![65_536]], Scope::Layer);
    assert_eq!(lasp1.flops_per_gpu, lasp2.flops_per_gpu);
    let (t1, t2) = (lasp1.time_s(), lasp2.time_s());
    assert!(t1 > t2, "LASP-1 {t1} s, LASP-2 {t2} s");
}

#[test]
fn lasp2h_runs_lasp2_on_linear_layers_and_gathers_kv_on_softmax_layers() {
    let cm = cost_model("hybrid-llama3-1b-3to1", 1, fwd_only());
    let w = cm.workload(&shape(Scheme::Lasp2h, 8), &[vec![65_536]], Scope::Step);
    let repeat_of = |needle: &str| w.steps.iter().find(|s| s.label.contains(needle)).map(|s| s.repeat);
    assert_eq!(repeat_of("allgather kv fwd"), Some(4), "the 4 softmax layers");
    assert_eq!(repeat_of("lasp2h allgather states fwd"), Some(12), "the 12 linear layers");
    // K and V of 8 KV heads x 128 for all 65,536 tokens, bf16: 65,536 x 2 x 8 x 128 x 2 =
    // 268,435,456.
    let kv = w.steps.iter().find(|s| s.label.contains("allgather kv fwd")).unwrap().transfer.unwrap();
    assert_eq!(kv.bytes, 268_435_456.0);
}

#[test]
fn schemes_that_cannot_run_a_models_layers_are_refused() {
    let c = Cluster::resolve("dgx-a100-80g").unwrap();
    let linear = ModelShape::resolve("linear-llama3-1b").unwrap();
    let hybrid = ModelShape::resolve("hybrid-llama3-1b-3to1").unwrap();
    let ring = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 8, variant: RingVariant::Zigzag };
    assert!(ring.check(&linear, &c).unwrap_err().to_string().contains("linear-attention layers"));
    assert!(shape(Scheme::Lasp2, 8).check(&hybrid, &c).unwrap_err().to_string().contains("use scheme lasp2h"));
    let u2 = GroupShape { ulysses: 2, ..shape(Scheme::Lasp1, 4) };
    assert!(u2.check(&linear, &c).unwrap_err().to_string().contains("ulysses = 1"));
    assert!(shape(Scheme::Lasp2h, 8).check(&hybrid, &c).is_ok());
    assert!(shape(Scheme::Lasp1, 8).check(&linear, &c).is_ok());
}

fn predict(scheme: &str, model: &str, dir: &Path) -> Value {
    let text = format!(
        "scope = \"step\"\n[model]\npreset = \"{model}\"\n[cluster]\npreset = \"dgx-a100-80g\"\nnodes = 1\n\
         [strategy]\nscheme = \"{scheme}\"\nring = 8\nzero = 1\n[batch]\nsequences = [262144]\n"
    );
    let path = dir.join(format!("{scheme}-{model}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = Command::cargo_bin("hsap-tune").unwrap().args(["predict", "--json", "--scenario"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{scheme} on {model}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn predict_prices_every_lasp_scheme_on_the_linear_and_the_hybrid_preset() {
    let dir = tempfile::tempdir().unwrap();
    let lasp1 = predict("lasp1", "linear-llama3-1b", dir.path());
    let lasp2 = predict("lasp2", "linear-llama3-1b", dir.path());
    let lasp2h = predict("lasp2h", "linear-llama3-1b", dir.path());
    for v in [&lasp1, &lasp2, &lasp2h] {
        assert!(v["time_s"].as_f64().unwrap() > 0.0 && v["memory_bytes_per_gpu"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert!(lasp1["time_s"].as_f64() > lasp2["time_s"].as_f64(), "LASP-1's chain is on the critical path");
    // On a pure linear model LASP-2H is LASP-2.
    assert_eq!(lasp2["time_s"], lasp2h["time_s"]);
    let hybrid = predict("lasp2h", "hybrid-llama3-1b-3to1", dir.path());
    assert!(hybrid["time_s"].as_f64() > lasp2["time_s"].as_f64(), "four softmax layers over 262K tokens cost more");
    let out = Command::cargo_bin("hsap-tune").unwrap().args(["predict", "--scenario", "docs/examples/hybrid-llama3-1b-lasp2h-step.toml"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("lasp2h u1xr8"), "{}", String::from_utf8_lossy(&out.stdout));
    // lasp2 on the hybrid is refused, naming the field.
    let text = "scope = \"step\"\n[model]\npreset = \"hybrid-llama3-1b-3to1\"\n[cluster]\npreset = \"dgx-a100-80g\"\n[strategy]\nscheme = \"lasp2\"\nring = 8\n[batch]\nsequences = [65536]\n";
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    Command::cargo_bin("hsap-tune")
        .unwrap()
        .args(["predict", "--scenario"])
        .arg(&path)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("field 'strategy'").and(predicates::str::contains("lasp2h")));
}

#[test]
fn tune_plans_a_real_trace_on_the_hybrid_preset_and_the_report_names_the_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("hsap-tune")
        .unwrap()
        .args(["--trace", "traces/distca_textbookchapters_llama3.csv", "--model", "hybrid-llama3-1b-3to1", "--cluster", "dgx-a100-80g"])
        .args(["--nodes", "2", "--limit-batches", "4", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("static-ring      skipped: hybrid-llama3-1b-3to1 has 12 linear-attention layers"), "{stdout}");
    let groups = std::fs::read_to_string(dir.path().join("groups.csv")).unwrap();
    let schemes: Vec<&str> = groups.lines().skip(1).map(|l| l.split(',').nth(6).unwrap()).collect();
    assert!(schemes.iter().all(|&s| s == "lasp2h" || s == "ulysses"), "{schemes:?}");
    assert!(schemes.contains(&"lasp2h"), "batches 0-3 hold documents one GPU cannot run alone: {schemes:?}");
    for line in groups.lines().skip(1).filter(|l| l.contains(",ulysses,")) {
        assert!(line.contains(",1,1,1,ulysses,"), "only one-GPU groups run unsplit: {line}");
    }
    let summary = std::fs::read_to_string(dir.path().join("report/summary.md")).unwrap();
    assert!(summary.contains("## Schemes of the groups") && summary.contains("| hsap | lasp2h |"), "{summary}");
    // The baselines were asked for and skipped, not left out with `--baselines none`.
    assert!(
        summary.contains("No baseline could plan this run") && summary.contains("static-ring") && !summary.contains("--baselines none"),
        "{summary}"
    );
    // The validator does not lay linear layers out yet: it refuses the plan rather than run
    // softmax attention in their place.
    Command::cargo_bin("hsap-tune")
        .unwrap()
        .args(["validate", "--dry-run", "--plan"])
        .arg(dir.path().join("plan.jsonl"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("12 linear-attention layers, which validate cannot lay out or run yet"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Over random document mixes and SP degrees, a LASP group runs every document's chunks once,
    /// plus at most one more for each shard boundary that cuts a document (the shard's first
    /// piece starts a chunk of its own): between the single GPU's chunk work and that plus
    /// `r - 1` chunks of every head.
    #[test]
    fn shards_add_at_most_one_chunk_per_boundary(
        docs in proptest::collection::vec(1u32..5_000, 1..20),
        log_r in 1u32..4,
        scheme in proptest::sample::select(vec![Scheme::Lasp1, Scheme::Lasp2, Scheme::Lasp2h]),
    ) {
        let r = 1 << log_r;
        let cm = cost_model("linear-llama3-1b", 1, fwd_only());
        let one: f64 = slot_chunk_flops(&cm.workload(&shape(scheme, 1), &[docs.clone()], Scope::Attention), Pass::Fwd).iter().sum();
        let split: f64 = slot_chunk_flops(&cm.workload(&shape(scheme, r), &[docs.clone()], Scope::Attention), Pass::Fwd).iter().sum();
        // One chunk of one head: 6,291,456 FLOPs (chunk_flops_by_hand...); 16 heads.
        let chunk = 16.0 * 6_291_456.0;
        let whole: f64 = docs.iter().map(|&d| f64::from(d.div_ceil(64))).sum::<f64>() * chunk;
        proptest::prop_assert_eq!(one, whole);
        proptest::prop_assert!(split >= one && split <= one + f64::from(r - 1) * chunk, "r {}: {} against {}", r, split, one);
    }
}
