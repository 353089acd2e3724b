//! The development set: the published end-to-end training runs of `reference/e2e/`, each read as
//! a `predict` scenario (model, cluster, parallel layout, sharding, recomputation, dtype, batch,
//! software stack) and compared with what the source measured, on tokens per second per GPU
//! (the sources count FLOPs differently; reference/e2e/README.md). `reference/e2e/hsap.toml`
//! says how each source's columns become a scenario and what is assumed where a cell is empty.

use super::flops::{megatron_model_flops_per_token, narayanan_hardware_flops_per_token};
use super::pipeline::PpSchedule;
use super::scenario::{self, BatchSpec, ClusterSpec, ModelSpec, Passes, Prediction, Scenario, StackSpec, StrategySpec};
use super::{Checkpointing, Dtype, Scope};
use crate::stats::{median, quantile};
use crate::cluster::{Arch, Cluster};
use crate::error::{Error, Result};
use crate::model::{Mlp, ModelShape};
use crate::reference::{self, E2eDtype, E2eMetric, E2eRow, E2E_FILE};
use crate::stack::Fitted;
use crate::scheme::{RingVariant, Scheme};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How hsap reads the development set (reference/e2e/hsap.toml).
const RULES_FILE: &str = "reference/e2e/hsap.toml";
const RULES: &str = include_str!("../../reference/e2e/hsap.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    clusters: BTreeMap<String, String>,
    skip_gpus: BTreeMap<String, String>,
    sources: BTreeMap<String, SourceRules>,
    mlp: MlpRules,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MlpRules {
    /// Model-name fragments (case-insensitive) of gated-MLP families.
    gated: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SourceRules {
    stack: String,
    /// The stack of rows whose notes say they ran under torch.compile.
    compiled_stack: Option<String>,
    /// The attention kernel the source's runs used, when not the stack's.
    attention_kernel: Option<super::AttentionKernel>,
    zero: Option<u8>,
    recompute: Option<String>,
    micro_batch: Option<u32>,
    head_dim: Option<u32>,
    tp_max: Option<u32>,
    #[serde(default)]
    vocab: BTreeMap<String, u32>,
    skip: Option<String>,
}

fn rules() -> Result<Rules> {
    crate::toml_input::parse(Path::new(RULES_FILE), RULES, "the embedded development-set rules must parse; fix reference/e2e/hsap.toml")
}

/// A GPU generation, for the development set's coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    Ampere,
    Ada,
    Hopper,
    Blackwell,
}

impl Generation {
    fn of(arch: Arch) -> Generation {
        match arch {
            Arch::Ampere => Generation::Ampere,
            Arch::Ada => Generation::Ada,
            Arch::Hopper => Generation::Hopper,
            Arch::Blackwell => Generation::Blackwell,
        }
    }
}

/// One run of the development set and the model's prediction of it.
#[derive(Debug, Clone, Serialize)]
pub struct DevCheck {
    pub line: usize,
    pub source_id: String,
    pub stack: String,
    pub model: String,
    pub cluster: String,
    pub generation: Generation,
    pub gpus: u32,
    pub layout: String,
    pub dtype: Dtype,
    pub seq_len: u32,
    /// What the source published, as tokens per second per GPU.
    pub measured_tokens_per_s_per_gpu: f64,
    pub predicted_tokens_per_s_per_gpu: f64,
    /// The step time the source's throughput implies.
    pub measured_step_s: f64,
    /// The predicted step time with the stack's priced terms only (its fitted factor left out).
    pub priced_step_s: f64,
    /// Predicted step time (the stack's fitted factor applied) over measured, less one:
    /// negative when the model is too fast.
    pub error: f64,
    /// The same for the priced terms alone.
    pub priced_error: f64,
    pub prediction: Prediction,
}

/// A row predicted with stack terms fitted on every other source (leave-one-source-out).
#[derive(Debug, Clone, Serialize)]
pub struct CvCheck {
    pub line: usize,
    pub source_id: String,
    pub stack: String,
    pub generation: Generation,
    /// The fitted time factor this row was predicted with.
    pub time_factor: f64,
    /// Predicted over measured step time, less one.
    pub error: f64,
}

/// A run the model does not predict, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub line: usize,
    pub source_id: String,
    pub model: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DevSet {
    pub checks: Vec<DevCheck>,
    pub skipped: Vec<Skipped>,
}

/// Rows, median |error| and signed median of a group of checks.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub group: String,
    pub rows: usize,
    pub median_abs_error: f64,
    pub signed_median_error: f64,
}

impl Summary {
    pub fn of(group: impl Into<String>, errors: impl Iterator<Item = f64>) -> Summary {
        let errors: Vec<f64> = errors.collect();
        let abs: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
        Summary {
            group: group.into(),
            rows: errors.len(),
            median_abs_error: median(&abs).unwrap_or(f64::NAN),
            signed_median_error: median(&errors).unwrap_or(f64::NAN),
        }
    }
}

/// Per-group summaries, groups in order of first appearance.
pub fn summaries<K: Into<String> + PartialEq + Clone>(checks: &[DevCheck], key: impl Fn(&DevCheck) -> K) -> Vec<Summary> {
    let mut keys: Vec<K> = Vec::new();
    for c in checks {
        let k = key(c);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|k| Summary::of(k.clone(), checks.iter().filter(|c| key(c) == k).map(|c| c.error)))
        .collect()
}

/// Prices every run of the development set that hsap can represent.
pub fn devset() -> Result<DevSet> {
    let rules = rules()?;
    let t = reference::tables()?;
    let mut out = DevSet { checks: Vec::new(), skipped: Vec::new() };
    for row in &t.e2e {
        match read_row(row, &rules)? {
            Reading::Skip(reason) => out.skipped.push(Skipped {
                line: row.line,
                source_id: row.source_id.clone(),
                model: row.model.clone(),
                reason,
            }),
            Reading::Scenario(run) => out.checks.push(check(row, *run)?),
        }
    }
    Ok(out)
}

enum Reading {
    Skip(String),
    Scenario(Box<Run>),
}

/// A row read as a scenario, with what else the comparison needs.
struct Run {
    scenario: Scenario,
    model: ModelShape,
    stack: String,
    cluster: Cluster,
}

fn row_error(row: &E2eRow, what: impl Into<String>) -> Error {
    Error::input(E2E_FILE, row.line, what, format!("see {RULES_FILE} for how rows are read"))
}

fn read_row(row: &E2eRow, rules: &Rules) -> Result<Reading> {
    let Some(src) = rules.sources.get(&row.source_id) else {
        return Err(row_error(row, format!("source '{}' has no entry in {RULES_FILE}", row.source_id)));
    };
    if let Some(reason) = &src.skip {
        return Ok(Reading::Skip(reason.clone()));
    }
    if let Some(reason) = rules.skip_gpus.get(&row.gpu) {
        return Ok(Reading::Skip(reason.clone()));
    }
    let Some(preset) = rules.clusters.get(&row.gpu) else {
        return Err(row_error(row, format!("GPU '{}' has no cluster preset in {RULES_FILE}", row.gpu)));
    };
    let cluster = Cluster::resolve(preset)?;
    let model = row_model(row, src, rules)?;
    let (tp, pp) = row_tp_pp(row, src)?;
    let cp = row.cp.unwrap_or(1);
    let dp = match row.dp {
        Some(dp) => dp,
        None => row.gpus / (tp * pp * cp).max(1),
    };
    if dp * tp * pp * cp != row.gpus {
        return Err(row_error(row, format!("dp {dp} x tp {tp} x pp {pp} x cp {cp} is not the {} GPUs", row.gpus)));
    }
    let micro_batch = row
        .micro_batch
        .or(src.micro_batch)
        .ok_or_else(|| row_error(row, "micro_batch is empty and the source's rules give none"))?;
    let per_replica = row.global_batch / dp;
    if per_replica * dp != row.global_batch || per_replica % micro_batch != 0 {
        return Err(row_error(row, format!("global batch {} is not dp {dp} x micro-batch {micro_batch} x an integer", row.global_batch)));
    }
    let vp = row.vp.unwrap_or(1).max(1);
    let stack = row_stack(row, src);
    let scenario = Scenario {
        scope: Scope::Step,
        passes: Passes::FwdBwd,
        dtype: match row.dtype {
            E2eDtype::Bf16 | E2eDtype::Half => Dtype::Bf16,
            E2eDtype::Fp8 | E2eDtype::Mxfp8 => Dtype::Fp8,
        },
        model: inline_model(&model),
        cluster: ClusterSpec { preset: preset.clone(), nodes: None, gpus: Some(row.gpus) },
        strategy: StrategySpec {
            scheme: if cp > 1 { Scheme::Ring } else { Scheme::Ulysses },
            ulysses: 1,
            ring: cp,
            ring_variant: RingVariant::Zigzag,
            tp,
            dp: Some(dp),
            zero: Some(row_zero(row, src)?),
            checkpointing: row_recompute(row, src)?,
            qkv_packed: false,
            attention_kernel: src.attention_kernel,
            overlap_grad_sync: None,
            pp,
            pp_virtual: vp,
            pp_schedule: Some(if vp > 1 { PpSchedule::Interleaved } else { PpSchedule::OneFOneB }),
            sequence_parallel: None,
        },
        batch: BatchSpec {
            sequences: Some(vec![row.seq_len; row.global_batch as usize]),
            packed: None,
            microbatches: Some(per_replica / micro_batch),
        },
        stack: Some(stack.clone()),
    };
    Ok(Reading::Scenario(Box::new(Run { scenario, model, stack: stack.preset, cluster })))
}

/// The row's stack: the compiled variant when its notes say torch.compile ran, and tensor-parallel
/// communication overlap when they name async TP (on) or vanilla TP (off).
fn row_stack(row: &E2eRow, src: &SourceRules) -> StackSpec {
    let text = format!("{} {}", row.notes, row.framework_version).to_lowercase();
    // "torch.compile" or a flag list's "compile," (not "with/without compile" in a footnote).
    let compiled = (text.contains("torch.compile") || text.contains("compile,")) && !text.contains("no torch.compile");
    let preset = match (&src.compiled_stack, compiled) {
        (Some(c), true) => c.clone(),
        _ => src.stack.clone(),
    };
    let tp_comm_overlap = if text.contains("asynctp") || text.contains("async tp") {
        Some(true)
    } else if text.contains("vanilla tp") {
        Some(false)
    } else {
        None
    };
    StackSpec { preset, tp_comm_overlap }
}

fn inline_model(m: &ModelShape) -> ModelSpec {
    ModelSpec {
        preset: None,
        config: None,
        name: Some(m.name.clone()),
        heads: Some(m.heads),
        kv_heads: Some(m.kv_heads),
        head_dim: Some(m.head_dim),
        layers: Some(m.layers),
        hidden: Some(m.hidden),
        ffn: Some(m.ffn),
        vocab: Some(m.vocab),
        mlp: Some(m.mlp),
        tied_embeddings: Some(m.tied_embeddings),
    }
}

fn row_model(row: &E2eRow, src: &SourceRules, rules: &Rules) -> Result<ModelShape> {
    let (Some(layers), Some(hidden)) = (row.layers, row.hidden) else {
        return Err(row_error(row, "layers and hidden are needed"));
    };
    let heads = match (row.heads, src.head_dim) {
        (Some(h), _) => h,
        (None, Some(d)) if hidden % d == 0 => hidden / d,
        _ => return Err(row_error(row, "heads is empty and the source's rules give no head_dim that divides hidden")),
    };
    let vocab = match row.vocab {
        Some(v) => v,
        None => *src
            .vocab
            .iter()
            .find(|(prefix, _)| row.model.starts_with(prefix.as_str()))
            .ok_or_else(|| row_error(row, "vocab is empty and the source's rules give none for this model"))?
            .1,
    };
    let name = row.model.to_lowercase();
    let gated = rules.mlp.gated.iter().any(|g| name.contains(&g.to_lowercase()));
    Ok(ModelShape {
        name: row.model.split(" (").next().unwrap_or(&row.model).to_string(),
        layers,
        hidden,
        heads,
        kv_heads: row.kv_heads.unwrap_or(heads),
        head_dim: hidden / heads,
        ffn: row.ffn.unwrap_or(4 * hidden),
        vocab,
        mlp: if gated { Mlp::Gated } else { Mlp::Plain },
        tied_embeddings: false,
        source: format!("{E2E_FILE}:{}", row.line),
        layer_pattern: None,
        softmax_layers: None,
        linear_attention: None,
    })
}

/// tp and pp from the row; when both are empty, the model-parallel size `gpus / dp` split as
/// the source's `tp_max` says.
fn row_tp_pp(row: &E2eRow, src: &SourceRules) -> Result<(u32, u32)> {
    match (row.tp, row.pp, src.tp_max, row.dp) {
        (Some(tp), pp, _, _) => Ok((tp, pp.unwrap_or(1))),
        (None, None, Some(tp_max), Some(dp)) => {
            let size = row.gpus / (dp * row.cp.unwrap_or(1)).max(1);
            let tp = size.min(tp_max);
            Ok((tp, size / tp))
        }
        _ => Err(row_error(row, "tp is empty and the source's rules give no way to split the model-parallel size")),
    }
}

fn row_zero(row: &E2eRow, src: &SourceRules) -> Result<u8> {
    let s = row.sharding.to_lowercase();
    let stated = if s.starts_with("ddp") {
        None
    } else if s.contains("full_shard") || s.contains("full shard") || s.contains("megatron-fsdp") {
        Some(3)
    } else if s.contains("shard_grad_op") {
        Some(2)
    } else if s.contains("zero-1") || s.contains("distributed optimizer") {
        Some(1)
    } else {
        None
    };
    stated
        .or(src.zero)
        .ok_or_else(|| row_error(row, format!("sharding '{}' names no ZeRO stage and the source's rules give none", row.sharding)))
}

fn row_recompute(row: &E2eRow, src: &SourceRules) -> Result<Checkpointing> {
    let text = if row.recompute.is_empty() { src.recompute.clone().unwrap_or_default() } else { row.recompute.to_lowercase() };
    Ok(match text.split_whitespace().next().unwrap_or("") {
        "none" => Checkpointing::None,
        "selective" => Checkpointing::Selective,
        "full" => Checkpointing::Full,
        _ => return Err(row_error(row, format!("recompute '{}' is not none, selective or full, and the source's rules give none", row.recompute))),
    })
}

/// What the row published, in tokens per second per GPU, by the source's FLOP convention.
fn measured_tokens_per_s_per_gpu(row: &E2eRow, model: &ModelShape, cluster: &Cluster) -> f64 {
    let peak = cluster.gpu.bf16_dense_tflops * 1e12;
    match row.metric {
        E2eMetric::TokensPerSPerGpu => row.value,
        E2eMetric::TflopsPerGpuModel => row.value * 1e12 / megatron_model_flops_per_token(model, row.seq_len),
        E2eMetric::Mfu => row.value / 100.0 * peak / megatron_model_flops_per_token(model, row.seq_len),
        E2eMetric::Hfu => row.value / 100.0 * peak / narayanan_hardware_flops_per_token(model, row.seq_len),
        E2eMetric::StepTimeS => f64::from(row.global_batch) * f64::from(row.seq_len) / row.value / f64::from(row.gpus),
    }
}

fn check(row: &E2eRow, run: Run) -> Result<DevCheck> {
    let prediction = scenario::predict(&run.scenario, Path::new(E2E_FILE), "")
        .map_err(|e| row_error(row, format!("the row's scenario does not price: {e}")))?;
    let tokens = f64::from(row.global_batch) * f64::from(row.seq_len);
    let predicted = tokens / prediction.time_s / f64::from(row.gpus);
    let measured = measured_tokens_per_s_per_gpu(row, &run.model, &run.cluster);
    let measured_step_s = tokens / measured / f64::from(row.gpus);
    let priced_step_s = prediction.time_s - prediction.breakdown.stack_fitted_s;
    let s = &run.scenario.strategy;
    Ok(DevCheck {
        line: row.line,
        source_id: row.source_id.clone(),
        stack: run.stack,
        model: run.model.name.clone(),
        cluster: run.cluster.name.clone(),
        generation: Generation::of(run.cluster.gpu.arch),
        gpus: row.gpus,
        layout: format!("tp{} pp{}x{} cp{} dp{} z{}", s.tp, s.pp, s.pp_virtual, s.ring, s.dp.unwrap_or(1), s.zero.unwrap_or(0)),
        dtype: run.scenario.dtype,
        seq_len: row.seq_len,
        measured_tokens_per_s_per_gpu: measured,
        predicted_tokens_per_s_per_gpu: predicted,
        measured_step_s,
        priced_step_s,
        error: measured / predicted - 1.0,
        priced_error: priced_step_s / measured_step_s - 1.0,
        prediction,
    })
}

/// The stack terms `stack::Fitted` records, fitted on `checks` less the rows of `exclude`: per
/// stack, the time factor is the geometric median of measured over priced step time; a stack
/// with no rows left takes the median over every other row. Residual bars are left at zero (they
/// come from the cross-validation, [`fitted_with_bars`]).
pub fn fit_stack_terms(checks: &[DevCheck], exclude: Option<&str>) -> BTreeMap<String, Fitted> {
    let kept: Vec<&DevCheck> = checks.iter().filter(|c| Some(c.source_id.as_str()) != exclude).collect();
    let log_ratio = |c: &&DevCheck| (c.measured_step_s / c.priced_step_s).ln();
    let pooled = median(&kept.iter().map(log_ratio).collect::<Vec<_>>()).unwrap_or(0.0);
    let mut stacks: Vec<&str> = checks.iter().map(|c| c.stack.as_str()).collect();
    stacks.sort_unstable();
    stacks.dedup();
    stacks
        .into_iter()
        .map(|stack| {
            let mine: Vec<f64> = kept.iter().filter(|c| c.stack == stack).map(log_ratio).collect();
            let rows = mine.len() as u32;
            let log_factor = median(&mine).unwrap_or(pooled);
            (stack.to_string(), Fitted { time_factor: log_factor.exp(), residual_low: 0.0, residual_high: 0.0, rows })
        })
        .collect()
}

/// Every row predicted with the stack terms fitted on the other sources only.
pub fn cross_validate(checks: &[DevCheck]) -> Vec<CvCheck> {
    let mut sources: Vec<&str> = checks.iter().map(|c| c.source_id.as_str()).collect();
    sources.dedup();
    let mut out = Vec::new();
    for source in sources {
        let terms = fit_stack_terms(checks, Some(source));
        for c in checks.iter().filter(|c| c.source_id == source) {
            let factor = terms[&c.stack].time_factor;
            out.push(CvCheck {
                line: c.line,
                source_id: c.source_id.clone(),
                stack: c.stack.clone(),
                generation: c.generation,
                time_factor: factor,
                error: c.priced_step_s * factor / c.measured_step_s - 1.0,
            });
        }
    }
    out
}

/// The stack terms fitted on every row, with error bars from the cross-validated residuals of
/// the stack's rows: 10th and 90th percentiles of measured over predicted time, less one (the
/// pooled residuals for a stack with fewer than five rows), so that the measured time lies in
/// `[t (1 + residual_low), t (1 + residual_high)]` around a prediction t as often.
pub fn fitted_with_bars(checks: &[DevCheck]) -> BTreeMap<String, Fitted> {
    let cv = cross_validate(checks);
    // A row's error is predicted over measured, less one: its residual is the inverse.
    let residual = |c: &CvCheck| 1.0 / (1.0 + c.error) - 1.0;
    let all: Vec<f64> = cv.iter().map(residual).collect();
    let mut terms = fit_stack_terms(checks, None);
    for (stack, fitted) in terms.iter_mut() {
        let mine: Vec<f64> = cv.iter().filter(|c| &c.stack == stack).map(residual).collect();
        let residuals = if mine.len() >= 5 { mine } else { all.clone() };
        fitted.residual_low = quantile(&residuals, 0.1).unwrap_or(0.0);
        fitted.residual_high = quantile(&residuals, 0.9).unwrap_or(0.0);
    }
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_rules_and_every_gpu_a_cluster_or_a_reason() {
        let rules = rules().unwrap();
        for row in &reference::tables().unwrap().e2e {
            assert!(rules.sources.contains_key(&row.source_id), "{}", row.source_id);
            assert!(rules.clusters.contains_key(&row.gpu) || rules.skip_gpus.contains_key(&row.gpu), "{}", row.gpu);
        }
    }

    #[test]
    fn published_metrics_become_tokens_per_second() {
        let t = reference::tables().unwrap();
        let rules = rules().unwrap();
        // BLOOM: 2048 sequences of 2048 tokens in 105.22 s on 384 GPUs = 103.8 tokens/s per GPU.
        let bloom = t.e2e.iter().find(|r| r.source_id == "bloom_176b_2022_03").unwrap();
        let Reading::Scenario(run) = read_row(bloom, &rules).unwrap() else { panic!("bloom skipped") };
        let tps = measured_tokens_per_s_per_gpu(bloom, &run.model, &run.cluster);
        assert!((tps - 2048.0 * 2048.0 / 105.22 / 384.0).abs() < 1e-9);
        // Megatron-LM 2021, GPT-1.7B: 44% of 312 TFLOP/s in Narayanan's hardware FLOPs.
        let gpt = t.e2e.iter().find(|r| r.source_id == "megatron_lm_a100_2021_04").unwrap();
        let Reading::Scenario(run) = read_row(gpt, &rules).unwrap() else { panic!("skipped") };
        let per_token = narayanan_hardware_flops_per_token(&run.model, 2048);
        assert!((measured_tokens_per_s_per_gpu(gpt, &run.model, &run.cluster) - 0.44 * 312e12 / per_token).abs() < 1e-6);
    }

    #[test]
    fn rows_run_the_stack_their_notes_name() {
        let t = reference::tables().unwrap();
        let rules = rules().unwrap();
        let stack_of = |line: usize| {
            let row = t.e2e.iter().find(|r| r.line == line).unwrap();
            row_stack(row, &rules.sources[&row.source_id])
        };
        // Table 1 "FSDP" vs "FSDP + torch.compile"; the April 2024 A100 rows ran without compile.
        assert_eq!(stack_of(13).preset, "torchtitan");
        assert_eq!(stack_of(14).preset, "torchtitan-compile");
        assert_eq!(stack_of(2).preset, "torchtitan");
        // Async TP against vanilla TP (2025-06 benchmark).
        assert_eq!((stack_of(31).tp_comm_overlap, stack_of(32).tp_comm_overlap), (Some(false), Some(true)));
        assert_eq!(stack_of(71).preset, "nemo");
    }

    #[test]
    fn rows_without_a_split_take_tensor_parallelism_inside_the_node() {
        // GPT-1T on 3072 GPUs with dp 6: model-parallel size 512 = tp 8 x pp 64.
        let t = reference::tables().unwrap();
        let rules = rules().unwrap();
        let row = t.e2e.iter().find(|r| r.model.starts_with("GPT-1T")).unwrap();
        let Reading::Scenario(run) = read_row(row, &rules).unwrap() else { panic!("skipped") };
        assert_eq!((run.scenario.strategy.tp, run.scenario.strategy.pp), (8, 64));
        assert_eq!(run.model.heads, 25600 / 128);
    }
}
