//! Scenarios for `hsap-tune predict`: a model, a cluster, a strategy and a batch, in TOML or
//! JSON (docs/cost-model.md, "Scenarios"), priced by the cost model.

use super::flops::megatron_model_flops_per_token;
use super::pipeline::{Pipeline, PpSchedule, StageMicrobatch};
use super::{comm, Checkpointing, CostModel, Dtype, MemoryBreakdown, Part, Program, Scope, TrainConfig, Transfer};
use super::AttentionKernel;
use crate::cluster::{Cluster, Collective};
use crate::error::{Error, Result};
use crate::model::{Mlp, ModelShape};
use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::stack::Stack;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Passes {
    Fwd,
    #[default]
    FwdBwd,
}

impl Passes {
    pub fn name(self) -> &'static str {
        match self {
            Passes::Fwd => "fwd",
            Passes::FwdBwd => "fwd_bwd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub passes: Passes,
    #[serde(default)]
    pub dtype: Dtype,
    pub model: ModelSpec,
    pub cluster: ClusterSpec,
    pub strategy: StrategySpec,
    pub batch: BatchSpec,
    /// The software stack (default: the GPU kernels alone, `stack::Stack::default`).
    #[serde(default)]
    pub stack: Option<StackSpec>,
}

/// `[stack] preset = "megatron-core"` (a name or a stack TOML), with per-run overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    pub preset: String,
    /// Overrides the stack's tensor-parallel communication overlap (Megatron's
    /// `--tp-comm-overlap`, PyTorch's async TP).
    pub tp_comm_overlap: Option<bool>,
}

/// `preset = "llama3-8b"` (a name or a preset-style TOML), `config = "config.json"` (Hugging
/// Face), or the shape inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub preset: Option<String>,
    pub config: Option<PathBuf>,
    pub name: Option<String>,
    pub heads: Option<u32>,
    pub kv_heads: Option<u32>,
    pub head_dim: Option<u32>,
    pub layers: Option<u32>,
    pub hidden: Option<u32>,
    pub ffn: Option<u32>,
    pub vocab: Option<u32>,
    pub mlp: Option<Mlp>,
    pub tied_embeddings: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// A preset name or a cluster TOML (e.g. a calibrated profile).
    pub preset: String,
    pub nodes: Option<u32>,
    /// GPUs used (default: dp x ulysses x ring x tp).
    pub gpus: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    pub scheme: Scheme,
    #[serde(default = "one")]
    pub ulysses: u32,
    #[serde(default = "one")]
    pub ring: u32,
    #[serde(default)]
    pub ring_variant: RingVariant,
    #[serde(default = "one")]
    pub tp: u32,
    /// Data-parallel replicas of the SP group (default: what `gpus` leaves, else 1).
    pub dp: Option<u32>,
    /// Default 3.
    pub zero: Option<u8>,
    #[serde(default)]
    pub checkpointing: Checkpointing,
    #[serde(default)]
    pub qkv_packed: bool,
    pub attention_kernel: Option<AttentionKernel>,
    /// Whether the data-parallel gradient reduction overlaps the backward pass (default true).
    pub overlap_grad_sync: Option<bool>,
    /// Pipeline stages (1: no pipeline parallelism).
    #[serde(default = "one")]
    pub pp: u32,
    /// Model chunks per pipeline stage (interleaved schedule only).
    #[serde(default = "one")]
    pub pp_virtual: u32,
    /// `1f1b` (default) or `interleaved` (default when pp_virtual > 1).
    pub pp_schedule: Option<PpSchedule>,
    /// Megatron sequence parallelism inside the tensor-parallel group (default true): norms and
    /// elementwise work split over tp, all-gather and reduce-scatter instead of all-reduce.
    pub sequence_parallel: Option<bool>,
}

fn one() -> u32 {
    1
}

/// `sequences = [131072, 131072]`: independent sequences of that global length; `packed = [[...]]`:
/// each inner list one packed sequence of documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub sequences: Option<Vec<u32>>,
    pub packed: Option<Vec<Vec<u32>>>,
    /// Gradient-accumulation steps each replica splits its sequences into (default 1).
    pub microbatches: Option<u32>,
}

/// What `predict` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub scenario: ScenarioSummary,
    /// Time of the scope: one attention layer, one layer, or a training step.
    pub time_s: f64,
    /// The error bar from the development set's cross-validated residuals for the stack
    /// (10th and 90th percentiles); absent when the stack has none fitted.
    pub time_s_low: Option<f64>,
    pub time_s_high: Option<f64>,
    /// FLOPs the average GPU executes (padding and recomputation included) per second.
    pub tflops_per_gpu: f64,
    /// Model TFLOP/s per GPU as Megatron-LM and NeMo count them (`cost::flops`: non-causal
    /// attention, logits included, no recomputation), for the sequences' lengths.
    pub model_tflops_per_gpu: f64,
    /// Model FLOPs of the real tokens per GPU and second, over the GPU's dense peak.
    pub mfu: f64,
    /// Peak memory of the most loaded GPU.
    pub memory_bytes_per_gpu: f64,
    pub memory_limit_bytes: f64,
    pub fits_in_memory: bool,
    /// How much the peak exceeds the limit (0 when it fits).
    pub over_memory_bytes: f64,
    pub memory: MemoryBreakdown,
    pub breakdown: Breakdown,
    /// Tokens (padding included) per GPU in the largest micro-batch.
    pub tokens_per_gpu: f64,
    /// On a calibrated cluster, which fitted figures priced the prediction and which came from
    /// the preset (`cost::sources`); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub priced_by: Vec<String>,
    /// Why the cluster preset's figures are partly derived rather than measured
    /// (`Cluster::uncalibrated`); absent for a preset whose figures are all published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncalibrated: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioSummary {
    pub scope: Scope,
    pub passes: Passes,
    pub dtype: Dtype,
    pub model: String,
    pub cluster: String,
    pub nodes: u32,
    pub gpus: u32,
    pub group: String,
    pub tp: u32,
    pub pp: u32,
    pub pp_virtual: u32,
    pub pp_schedule: PpSchedule,
    pub sequence_parallel: bool,
    pub dp: u32,
    pub zero: u8,
    pub checkpointing: Checkpointing,
    pub attention_kernel: AttentionKernel,
    pub stack: String,
    pub sequences: usize,
    pub tokens: u64,
    pub microbatches: u32,
}

/// Where the time goes, averaged over every GPU in use:
/// `time_s = compute_s + sum of exposed collectives + idle_s + data_parallel_exposed_s` (which
/// includes the optimizer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    /// Busy compute, averaged over the group's GPUs.
    pub compute_s: f64,
    pub collectives: Vec<CollectiveTime>,
    /// Communication hidden behind compute (ring transfers, ZeRO prefetch, overlapped gradient
    /// reduction).
    pub overlap_s: f64,
    /// Waiting: load imbalance inside a group and between replicas (a replica waits for the
    /// slowest at every micro-batch boundary).
    pub idle_s: f64,
    /// Pipeline fill and drain (pp > 1), included in `idle_s`.
    pub pipeline_bubble_s: f64,
    /// Stage-to-stage transfers on the critical path (pp > 1), included in `idle_s`.
    pub pipeline_p2p_s: f64,
    /// The stack's host time per step outside the micro-batches, included in `idle_s`.
    pub host_step_s: f64,
    /// What the stack's fitted time factor (development set, `stack::Fitted`) adds to the terms
    /// above, each of which carries it: `time_s x (1 - 1 / factor)`.
    pub stack_fitted_s: f64,
    /// The step's data-parallel synchronisation after the micro-batches (step scope).
    pub data_parallel_total_s: f64,
    pub data_parallel_exposed_s: f64,
    pub optimizer_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectiveTime {
    pub collective: Collective,
    pub total_s: f64,
    pub exposed_s: f64,
}

/// Scenario guidance printed with parse errors.
pub const SCENARIO_HINT: &str = "see docs/examples/*.toml and docs/cost-model.md (\"Scenarios\") for the format";

impl Scenario {
    /// Reads a scenario file, TOML or JSON by extension; errors name the file and line.
    pub fn read(path: &Path) -> Result<Scenario> {
        crate::toml_input::read(path, SCENARIO_HINT)
    }

    /// A scenario from the text of a file at `path` (TOML, or JSON by its .json extension).
    pub fn parse(path: &Path, text: &str) -> Result<Scenario> {
        crate::toml_input::parse_toml_or_json(path, text, SCENARIO_HINT)
    }
}

/// Errors about a field name the file, the field and the line it is on.
struct Located<'a> {
    path: &'a Path,
    /// The file's text, for line numbers (None: read it from `path` when an error needs it).
    text: Option<&'a str>,
}

impl Located<'_> {
    fn error(&self, field: &str, what: impl Into<String>, hint: impl Into<String>) -> Error {
        let line = match self.text {
            Some(text) => line_of_field(text, field),
            None => std::fs::read_to_string(self.path).map_or(0, |text| line_of_field(&text, field)),
        };
        Error::input(self.path, line, format!("field '{field}': {}", what.into()), hint)
    }
}

/// The line of `key = ...` (TOML) or `"key":` (JSON) for the last segment of a dotted field name,
/// looked for after its section's header (`[section]` or `"section":`) when the file has one.
pub fn line_of_field(text: &str, field: &str) -> usize {
    let key = field.rsplit('.').next().unwrap_or(field);
    let json = format!("\"{key}\"");
    let is_key = |l: &str| {
        let t = l.trim_start();
        (t.starts_with(key) && t[key.len()..].trim_start().starts_with('=')) || t.contains(&format!("{json}:")) || t.contains(&format!("{json} :"))
    };
    let section = field.split_once('.').map(|(s, _)| s);
    let start = section
        .and_then(|s| {
            let (toml, json) = (format!("[{s}]"), format!("\"{s}\""));
            text.lines().position(|l| l.trim() == toml || l.trim_start().starts_with(&json))
        })
        .unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, l)| is_key(l))
        .or_else(|| text.lines().enumerate().find(|(_, l)| is_key(l)))
        .map_or(0, |(i, _)| i + 1)
}

/// Prices a scenario read from `path` (relative paths inside it are taken from its folder).
pub fn predict_file(path: &Path) -> Result<Prediction> {
    predict_file_with_stack(path, None)
}

/// [`predict_file`] with the scenario's `[stack]` replaced by `stack` (a preset name or a stack
/// TOML), as `--stack` does.
pub fn predict_file_with_stack(path: &Path, stack: Option<&str>) -> Result<Prediction> {
    let mut scenario = Scenario::read(path)?;
    if let Some(preset) = stack {
        let overrides = scenario.stack.take().and_then(|s| s.tp_comm_overlap);
        scenario.stack = Some(StackSpec { preset: preset.to_string(), tp_comm_overlap: overrides });
    }
    predict_at(&scenario, &Located { path, text: None })
}

/// Prices `scenario` given as `text` of a file at `path` (which locates errors and resolves
/// relative paths; it need not exist).
pub fn predict(scenario: &Scenario, path: &Path, text: &str) -> Result<Prediction> {
    predict_at(scenario, &Located { path, text: Some(text) })
}

fn predict_at(scenario: &Scenario, at: &Located) -> Result<Prediction> {
    let path = at.path;
    let base = path.parent().unwrap_or(Path::new("."));
    let model = resolve_model(&scenario.model, scenario.scope, base, at)?;
    let s = &scenario.strategy;
    let mut cluster = Cluster::resolve(&resolve_path(base, &scenario.cluster.preset))?;
    let pipeline = resolve_pipeline(s, scenario.scope, &model, at)?;
    let group_gpus = s.ulysses * s.ring * s.tp * s.pp;
    if group_gpus == 0 {
        return Err(at.error("strategy.ulysses", "degrees must be at least 1", "use 1 for an unused dimension"));
    }
    let dp = match (s.dp, scenario.cluster.gpus) {
        (Some(dp), _) => dp,
        (None, Some(gpus)) => gpus / group_gpus,
        (None, None) => 1,
    };
    if dp == 0 {
        return Err(at.error("strategy.dp", "no data-parallel replica fits", "gpus must be at least ulysses x ring x tp x pp"));
    }
    let gpus = dp * group_gpus;
    if let Some(given) = scenario.cluster.gpus {
        if given != gpus {
            return Err(at.error(
                "cluster.gpus",
                format!("{given} GPUs, but dp x ulysses x ring x tp x pp = {dp} x {} x {} x {} x {} = {gpus}", s.ulysses, s.ring, s.tp, s.pp),
                "make gpus equal the product of the degrees, or leave one of them out",
            ));
        }
    }
    let nodes = scenario.cluster.nodes.unwrap_or_else(|| gpus.div_ceil(cluster.gpus_per_node));
    if nodes == 0 || gpus > nodes * cluster.gpus_per_node {
        return Err(at.error(
            "cluster.nodes",
            format!("{nodes} nodes of {} GPUs cannot hold {gpus} GPUs", cluster.gpus_per_node),
            "raise nodes or lower the degrees",
        ));
    }
    cluster = cluster.with_nodes(nodes)?;
    let shape = GroupShape { scheme: s.scheme, ulysses: s.ulysses, ring: s.ring, variant: s.ring_variant };
    check_shape(&shape, s.tp, &model, &cluster, at)?;
    let train = TrainConfig {
        dtype: scenario.dtype,
        zero: s.zero.unwrap_or(3),
        checkpointing: s.checkpointing,
        tp: s.tp,
        overlap_grad_sync: s.overlap_grad_sync.unwrap_or(true),
        backward: scenario.passes == Passes::FwdBwd,
        qkv_packed: s.qkv_packed,
        attention_kernel: s.attention_kernel,
        // ZeRO and the gradient synchronisation span the GPUs that hold one pipeline stage.
        data_parallel_gpus: Some(gpus / pipeline.stages),
        sequence_parallel: s.sequence_parallel.unwrap_or(true),
        stack: resolve_stack(scenario.stack.as_ref(), base, at)?,
    };
    if train.zero > 3 {
        return Err(at.error("strategy.zero", format!("ZeRO stage {} does not exist", train.zero), "use 0, 1, 2 or 3"));
    }
    if scenario.dtype == Dtype::Fp8 && cluster.gpu.fp8_dense_tflops.is_none() {
        return Err(at.error("dtype", format!("{} has no FP8 tensor cores", cluster.gpu.name), "use dtype = \"bf16\""));
    }
    let cm = CostModel::new(model, cluster, train).map_err(|e| match e {
        Error::Invalid { what, hint } => at.error("strategy", what, hint),
        other => other,
    })?;
    let stage = StageModels::new(&cm, pipeline)?;
    let sequences = batch_sequences(&scenario.batch, at)?;
    let microbatches = scenario.batch.microbatches.unwrap_or(1);
    if microbatches == 0 {
        return Err(at.error("batch.microbatches", "must be at least 1", "use 1 for no gradient accumulation"));
    }
    let plan = assign(&sequences, dp, microbatches);
    if plan.iter().flatten().all(|mb| mb.is_empty()) {
        return Err(at.error("batch", "no tokens to run", "give sequences or packed documents"));
    }
    Ok(evaluate(&stage, &shape, scenario, &plan, gpus, nodes, dp, microbatches, &sequences))
}

/// The stack of `[stack]` with its overrides; the kernels-only default without one.
fn resolve_stack(spec: Option<&StackSpec>, base: &Path, at: &Located) -> Result<Stack> {
    let Some(spec) = spec else { return Ok(Stack::default()) };
    let mut stack = Stack::resolve(&resolve_path(base, &spec.preset)).map_err(|e| match e {
        Error::Unknown { .. } => at.error("stack.preset", e.to_string(), "name a preset of models/stacks/ or a stack TOML"),
        other => other,
    })?;
    if let Some(overlap) = spec.tp_comm_overlap {
        stack.overlap.tp_comm = overlap;
    }
    Ok(stack)
}

/// The pipeline of `[strategy]`: pp stages, pp_virtual chunks each, and the schedule.
fn resolve_pipeline(s: &StrategySpec, scope: Scope, model: &ModelShape, at: &Located) -> Result<Pipeline> {
    let schedule = s.pp_schedule.unwrap_or(if s.pp_virtual > 1 { PpSchedule::Interleaved } else { PpSchedule::OneFOneB });
    if s.pp == 0 || s.pp_virtual == 0 {
        return Err(at.error("strategy.pp", "pp and pp_virtual must be at least 1", "use pp = 1 for no pipeline parallelism"));
    }
    if s.pp_virtual > 1 && schedule != PpSchedule::Interleaved {
        return Err(at.error(
            "strategy.pp_virtual",
            format!("pp_virtual = {} needs the interleaved schedule", s.pp_virtual),
            "set pp_schedule = \"interleaved\" or pp_virtual = 1",
        ));
    }
    if schedule == PpSchedule::Interleaved && s.pp_virtual < 2 {
        return Err(at.error("strategy.pp_schedule", "the interleaved schedule needs pp_virtual >= 2", "set pp_virtual, or use pp_schedule = \"1f1b\""));
    }
    if s.pp > 1 && scope != Scope::Step {
        return Err(at.error("strategy.pp", "pipeline parallelism splits the model's layers", "use scope = \"step\", or pp = 1"));
    }
    let chunks = s.pp.saturating_mul(s.pp_virtual);
    if s.pp > 1 && chunks > model.layers {
        return Err(at.error(
            "strategy.pp",
            format!("pp x pp_virtual = {chunks} chunks for {} layers", model.layers),
            "each pipeline chunk needs at least one layer",
        ));
    }
    Ok(Pipeline { stages: s.pp, virtual_stages: s.pp_virtual, schedule })
}

/// The cost models of a pipelined run: the whole model (FLOP counts) and its largest stage
/// (`ceil(layers / pp)` layers, with the embedding and LM head; ZeRO over the GPUs of one stage).
struct StageModels<'a> {
    full: &'a CostModel,
    stage: CostModel,
    pipeline: Pipeline,
}

impl<'a> StageModels<'a> {
    fn new(full: &'a CostModel, pipeline: Pipeline) -> Result<StageModels<'a>> {
        let mut model = full.model.clone();
        model.layers = pipeline.layers_per_stage(model.layers);
        let stage = CostModel::new(model, full.cluster.clone(), full.train.clone())?;
        Ok(StageModels { full, stage, pipeline })
    }
}

fn resolve_path(base: &Path, name: &str) -> String {
    let candidate = base.join(name);
    if !name.is_empty() && candidate.exists() && !Path::new(name).is_absolute() {
        candidate.to_string_lossy().into_owned()
    } else {
        name.to_string()
    }
}

fn resolve_model(spec: &ModelSpec, scope: Scope, base: &Path, at: &Located) -> Result<ModelShape> {
    let inline = [spec.heads, spec.kv_heads, spec.head_dim, spec.layers, spec.hidden, spec.ffn, spec.vocab]
        .iter()
        .any(Option::is_some)
        || spec.mlp.is_some();
    let sources = usize::from(spec.preset.is_some()) + usize::from(spec.config.is_some()) + usize::from(inline);
    if sources != 1 {
        return Err(at.error(
            "model",
            "give exactly one of preset, config or an inline shape",
            "e.g. preset = \"llama3-8b\", or heads, kv_heads and head_dim for an attention scope",
        ));
    }
    if let Some(preset) = &spec.preset {
        return ModelShape::resolve(&resolve_path(base, preset)).map_err(|e| at.error("model.preset", e.to_string(), "name a preset or a model file"));
    }
    if let Some(config) = &spec.config {
        let file = if config.is_absolute() { config.clone() } else { base.join(config) };
        return ModelShape::from_file(&file);
    }
    let need = |v: Option<u32>, field: &str, why: &str| v.ok_or_else(|| at.error(field, format!("missing ({why})"), "add it to [model]"));
    let heads = need(spec.heads, "model.heads", "every scope needs the query heads")?;
    let head_dim = need(spec.head_dim, "model.head_dim", "every scope needs the head dim")?;
    let kv_heads = spec.kv_heads.unwrap_or(heads);
    let (layers, vocab) = match scope {
        Scope::Step => (
            need(spec.layers, "model.layers", "a step scope runs every layer")?,
            need(spec.vocab, "model.vocab", "a step scope runs the LM head")?,
        ),
        _ => (spec.layers.unwrap_or(1), spec.vocab.unwrap_or(32_000)),
    };
    let (hidden, ffn) = match scope {
        Scope::Attention => (spec.hidden.unwrap_or(heads * head_dim), spec.ffn.unwrap_or(4 * heads * head_dim)),
        _ => (
            need(spec.hidden, "model.hidden", "a layer or step scope runs the GEMMs")?,
            need(spec.ffn, "model.ffn", "a layer or step scope runs the MLP")?,
        ),
    };
    let shape = ModelShape {
        name: spec.name.clone().unwrap_or_else(|| "inline".into()),
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        mlp: spec.mlp.unwrap_or_default(),
        tied_embeddings: spec.tied_embeddings.unwrap_or(false),
        source: format!("inline in {}", at.path.display()),
        layer_pattern: None,
        softmax_layers: None,
        linear_attention: None,
    };
    let positive = [("layers", layers), ("hidden", hidden), ("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim), ("ffn", ffn), ("vocab", vocab)];
    if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(at.error(&format!("model.{name}"), "must be positive", "fix the model shape"));
    }
    if heads % kv_heads != 0 {
        return Err(at.error("model.kv_heads", format!("{heads} heads are not a multiple of {kv_heads} KV heads"), "grouped-query attention needs heads divisible by kv_heads"));
    }
    Ok(shape)
}

fn check_shape(shape: &GroupShape, tp: u32, model: &ModelShape, cluster: &Cluster, at: &Located) -> Result<()> {
    let (u, r) = (shape.ulysses, shape.ring);
    match shape.scheme {
        Scheme::Ulysses if r != 1 => {
            return Err(at.error("strategy.ring", format!("scheme ulysses with ring = {r}"), "use scheme = \"usp\" for ulysses x ring"))
        }
        Scheme::Ring | Scheme::Allgather if u != 1 => {
            return Err(at.error("strategy.ulysses", format!("scheme {} with ulysses = {u}", shape.scheme.name()), "use scheme = \"usp\" for ulysses x ring"))
        }
        _ => {}
    }
    if model.heads % u != 0 {
        return Err(at.error(
            "strategy.ulysses",
            format!("ulysses degree {u} does not divide the model's {} query heads", model.heads),
            "choose a Ulysses degree that divides the number of heads",
        ));
    }
    if tp == 0 || model.heads % (u * tp) != 0 {
        return Err(at.error(
            "strategy.tp",
            format!("ulysses x tp = {} does not divide the {} heads", u * tp, model.heads),
            "choose degrees whose product divides the heads",
        ));
    }
    let gpn = cluster.gpus_per_domain();
    if tp > gpn && tp % gpn != 0 {
        return Err(at.error("strategy.tp", format!("tp = {tp} spans part of an NVLink domain of {gpn} GPUs"), "tensor parallelism across domains must span whole domains"));
    }
    let span = shape.size() * tp;
    if span > gpn && span % gpn != 0 {
        return Err(at.error("strategy.ring", format!("a group of {span} GPUs spans part of an NVLink domain of {gpn}"), "groups larger than a domain must be whole domains"));
    }
    shape.check(model, cluster).map_err(|e| match e {
        Error::Invalid { what, hint } => at.error("strategy", what, hint),
        other => other,
    })
}

fn batch_sequences(batch: &BatchSpec, at: &Located) -> Result<Vec<Vec<u32>>> {
    let sequences = match (&batch.sequences, &batch.packed) {
        (Some(s), None) => s.iter().map(|&len| vec![len]).collect::<Vec<_>>(),
        (None, Some(p)) => p.clone(),
        _ => {
            return Err(at.error(
                "batch",
                "give exactly one of sequences or packed",
                "sequences = [131072, 131072], or packed = [[8000, 120, 56000]]",
            ))
        }
    };
    if sequences.is_empty() || sequences.iter().all(|s| s.iter().all(|&d| d == 0)) {
        return Err(at.error(if batch.sequences.is_some() { "batch.sequences" } else { "batch.packed" }, "no tokens", "list at least one non-empty sequence"));
    }
    Ok(sequences)
}

/// Sequences to replicas (longest work first, to the least loaded: quadratic attention plus
/// linear work), then each replica's into `microbatches` balanced micro-batches.
fn assign(sequences: &[Vec<u32>], dp: u32, microbatches: u32) -> Vec<Vec<Vec<Vec<u32>>>> {
    let work = |s: &Vec<u32>| s.iter().map(|&d| f64::from(d) * f64::from(d) + 4096.0 * f64::from(d)).sum::<f64>();
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by(|&a, &b| work(&sequences[b]).total_cmp(&work(&sequences[a])).then(a.cmp(&b)));
    let bins = (dp * microbatches) as usize;
    let mut load = vec![0.0f64; bins];
    let mut plan: Vec<Vec<Vec<Vec<u32>>>> = vec![vec![Vec::new(); microbatches as usize]; dp as usize];
    for i in order {
        let b = (0..bins).min_by(|&x, &y| load[x].total_cmp(&load[y]).then(x.cmp(&y))).unwrap_or(0);
        load[b] += work(&sequences[i]);
        plan[b % dp as usize][b / dp as usize].push(sequences[i].clone());
    }
    plan
}

fn exposed_total(collectives: &[CollectiveTime]) -> f64 {
    collectives.iter().map(|c| c.exposed_s).sum()
}

/// The host's time to issue one micro-batch's kernels on one stage: the stack's kernels per
/// layer (twice in the backward, once more for a full recomputation) times its issue time.
fn host_bound_s(cm: &CostModel, scope: Scope) -> f64 {
    let host = &cm.train.stack.host;
    let layers = match scope {
        Scope::Step => f64::from(cm.model.layers),
        _ => 1.0,
    };
    let passes = if !cm.train.backward {
        1.0
    } else if cm.train.checkpointing == Checkpointing::Full {
        4.0
    } else {
        3.0
    };
    let factor = if scope == Scope::Step { cm.step_factor() } else { 1.0 };
    layers * passes * host.kernels_per_layer * host.issue_us_per_kernel * 1e-6 * factor
}

/// The time of a stage program without its LM head: what a pipeline stage that does not hold
/// the head runs.
fn without_head_s(program: &Program) -> f64 {
    program.stages.iter().filter(|s| s.part != Part::Head).map(|s| f64::from(s.repeat) * s.time_s()).sum()
}

/// One send/recv of the activations at a pipeline-stage boundary, per GPU: the micro-batch's
/// tokens on the rank times the hidden size in bf16 (divided by tp under sequence parallelism).
/// Adjacent stages sit on different nodes when one stage fills a node or more.
fn stage_boundary_transfer(cm: &CostModel, program: &Program, gpus_per_stage: u32) -> Transfer {
    let tokens_per_rank = program.tokens_per_gpu * f64::from(cm.train.tp);
    let tp_split = if cm.train.sequence_parallel { f64::from(cm.train.tp) } else { 1.0 };
    let bytes = tokens_per_rank * f64::from(cm.model.hidden) * 2.0 / tp_split;
    let nodes = if gpus_per_stage >= cm.cluster.gpus_per_domain() { 2 } else { 1 };
    Transfer::new(super::Collective::SendRecv, 2, nodes, bytes)
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    st: &StageModels,
    shape: &GroupShape,
    scenario: &Scenario,
    plan: &[Vec<Vec<Vec<u32>>>],
    gpus: u32,
    nodes: u32,
    dp: u32,
    microbatches: u32,
    sequences: &[Vec<u32>],
) -> Prediction {
    let cm = &st.stage;
    let pipeline = st.pipeline;
    let pp = f64::from(pipeline.stages);
    let factor = if scenario.scope == Scope::Step { cm.step_factor() } else { 1.0 };
    let mut time_s = 0.0;
    let (mut flops, mut model_flops) = (0.0, 0.0);
    let mut memory = MemoryBreakdown::default();
    let mut tokens_per_gpu: f64 = 0.0;
    let mut compute_s = 0.0;
    let mut collectives: Vec<CollectiveTime> = Vec::new();
    let mut last_backward_s = 0.0;
    let mut stage_microbatches: Vec<StageMicrobatch> = Vec::new();
    let mut transfers: Vec<super::Transfer> = Vec::new();
    let replicas = f64::from(dp);
    // Replicas and micro-batches often repeat the same sequences: price each once.
    let mut cache: std::collections::HashMap<&[Vec<u32>], (Program, Option<Program>)> = std::collections::HashMap::new();
    for m in 0..microbatches as usize {
        let mut programs: Vec<(&Program, Option<&Program>)> = Vec::new();
        for replica in plan.iter().filter(|replica| !replica[m].is_empty()) {
            let key: &[Vec<u32>] = &replica[m];
            if !cache.contains_key(key) {
                let stage = cm.program_batch(shape, key, scenario.scope);
                let full = pipeline.is_pipelined().then(|| st.full.program_batch(shape, key, scenario.scope));
                cache.insert(key, (stage, full));
            }
        }
        for replica in plan.iter().filter(|replica| !replica[m].is_empty()) {
            let (stage, full) = &cache[&replica[m][..]];
            programs.push((stage, full.as_ref()));
        }
        let Some(&(slowest, _)) = programs.iter().max_by(|a, b| a.0.time_s().total_cmp(&b.0.time_s())) else { continue };
        // A stage whose GPU work is shorter than the host's time to issue it runs at the host's pace.
        let host = host_bound_s(cm, scenario.scope);
        // A pipeline stage without the head runs this share of the last stage's time.
        let mean_share = if pipeline.is_pipelined() {
            let last = slowest.time_s().max(host);
            let first = without_head_s(slowest).max(host);
            stage_microbatches.push(StageMicrobatch {
                slowest_s: last.max(first),
                mean_s: (first * (pp - 1.0) + last) / pp,
                p2p_s: comm::time_s(&cm.cluster, &stage_boundary_transfer(cm, slowest, gpus / pipeline.stages)) * factor,
            });
            if last > 0.0 { (first * (pp - 1.0) + last) / pp / last } else { 1.0 }
        } else {
            time_s += slowest.time_s().max(host);
            1.0
        };
        // Averages over every GPU: a replica with nothing to do adds only idle time.
        for &(p, full) in &programs {
            let counted = full.unwrap_or(p);
            flops += counted.flops_per_gpu / pp / replicas;
            model_flops += counted.model_flops_per_gpu / pp / replicas;
            transfers.extend(p.stages.iter().filter_map(|s| s.transfer));
            let peak = stage_memory(p, pipeline, microbatches);
            if peak.total_bytes() > memory.total_bytes() {
                memory = peak;
            }
            tokens_per_gpu = tokens_per_gpu.max(p.tokens_per_gpu);
            let cost = p.cost(&cm.cluster);
            compute_s += cost.compute_s * mean_share / replicas;
            for c in &cost.comm {
                let (total, exposed) = (c.total_s * mean_share / replicas, c.exposed_s * mean_share / replicas);
                match collectives.iter_mut().find(|x| x.collective == c.collective) {
                    Some(x) => {
                        x.total_s += total;
                        x.exposed_s += exposed;
                    }
                    None => collectives.push(CollectiveTime { collective: c.collective, total_s: total, exposed_s: exposed }),
                }
            }
        }
        // What hides the gradient reduction: from the backward's start (recomputation included)
        // to the micro-batch's end, as the planner prices it (`CostModel::grad_sync_after`).
        last_backward_s = slowest.time_s() - slowest.forward_s();
    }
    let piped = pipeline.step_time(&stage_microbatches, cm.train.stack.overlap.pp_p2p);
    time_s += piped.time_s;
    let sync_gpus = gpus / pipeline.stages;
    let sync = (scenario.scope == Scope::Step && cm.train.backward).then(|| cm.grad_sync(sync_gpus, last_backward_s));
    if sync.is_some() {
        let (overlapped, after) = cm.sync_transfers(sync_gpus);
        transfers.extend(overlapped.into_iter().chain(after));
    }
    let (sync_total, sync_exposed, optimizer_s) = sync.map_or((0.0, 0.0, 0.0), |s| (s.time_s, s.exposed_s, s.optimizer_s));
    time_s += sync_exposed;
    let host_step_s = if scenario.scope == Scope::Step { cm.train.stack.host.step_s * factor } else { 0.0 };
    time_s += host_step_s;
    let idle_s = (time_s - compute_s - exposed_total(&collectives) - sync_exposed).max(0.0);
    // Every term above carries the stack's fitted factor (`CostModel::step_factor`); this is
    // what it added to them in all.
    let fitted = &cm.train.stack.fitted;
    let stack_fitted_s = time_s * (1.0 - 1.0 / factor);
    let bar = (fitted.rows > 0 && scenario.scope == Scope::Step).then_some((fitted.residual_low, fitted.residual_high));
    // Megatron counts a whole training step (forward and backward, 3x the forward) with each
    // sequence's full length, documents packed in it or not.
    let passes = if cm.train.backward { 1.0 } else { 1.0 / 3.0 };
    let megatron_flops: f64 = if scenario.scope == Scope::Step {
        let per_sequence = |seq: &Vec<u32>| {
            let len: u32 = seq.iter().sum();
            f64::from(len) * megatron_model_flops_per_token(&st.full.model, len)
        };
        passes * sequences.iter().map(per_sequence).sum::<f64>()
    } else {
        0.0
    };
    let exposed: f64 = collectives.iter().map(|c| c.exposed_s).sum();
    let total: f64 = collectives.iter().map(|c| c.total_s).sum();
    let limit = cm.memory_limit_bytes();
    let peak = memory.total_bytes();
    let attention_kernel = cm.attention.kernel;
    let group = format!("{shape}");
    Prediction {
        scenario: ScenarioSummary {
            scope: scenario.scope,
            passes: scenario.passes,
            dtype: scenario.dtype,
            model: st.full.model.name.clone(),
            cluster: cm.cluster.name.clone(),
            nodes,
            gpus,
            group,
            tp: cm.train.tp,
            pp: pipeline.stages,
            pp_virtual: pipeline.virtual_stages,
            pp_schedule: pipeline.schedule,
            sequence_parallel: cm.train.sequence_parallel,
            dp,
            zero: cm.train.zero,
            checkpointing: cm.train.checkpointing,
            attention_kernel,
            stack: cm.train.stack.name.clone(),
            sequences: sequences.len(),
            tokens: sequences.iter().flatten().map(|&d| u64::from(d)).sum(),
            microbatches,
        },
        time_s,
        time_s_low: bar.map(|(low, _)| time_s * (1.0 + low)),
        time_s_high: bar.map(|(_, high)| time_s * (1.0 + high)),
        tflops_per_gpu: if time_s > 0.0 { flops / time_s / 1e12 } else { 0.0 },
        model_tflops_per_gpu: if time_s > 0.0 { megatron_flops / f64::from(gpus) / time_s / 1e12 } else { 0.0 },
        mfu: if time_s > 0.0 { model_flops / time_s / super::compute::peak_flops(&cm.cluster, cm.train.dtype) } else { 0.0 },
        memory_bytes_per_gpu: peak,
        memory_limit_bytes: limit,
        fits_in_memory: peak <= limit,
        over_memory_bytes: (peak - limit).max(0.0),
        memory,
        breakdown: Breakdown {
            compute_s,
            collectives,
            overlap_s: (total - exposed) + (sync_total - (sync_exposed - optimizer_s)).max(0.0),
            idle_s,
            pipeline_bubble_s: piped.bubble_s,
            pipeline_p2p_s: piped.p2p_exposed_s,
            host_step_s,
            stack_fitted_s,
            data_parallel_total_s: sync_total,
            data_parallel_exposed_s: sync_exposed,
            optimizer_s,
        },
        tokens_per_gpu,
        priced_by: super::sources::describe_transfers(&cm.cluster, &transfers),
        uncalibrated: cm.cluster.uncalibrated.clone(),
    }
}

/// The peak memory of a pipeline's most loaded stage for a micro-batch priced as `program` (the
/// largest stage, with the LM head): the first stage keeps the activations of the micro-batches
/// in flight and no logits, the last stage one micro-batch's activations and the logits.
fn stage_memory(program: &Program, pipeline: Pipeline, microbatches: u32) -> MemoryBreakdown {
    let m = program.memory;
    if !pipeline.is_pipelined() {
        return m;
    }
    let first = MemoryBreakdown {
        activations_bytes: m.activations_bytes * pipeline.in_flight_microbatches(microbatches),
        logits_bytes: 0.0,
        ..m
    };
    if first.total_bytes() > m.total_bytes() {
        first
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_balanced_over_replicas_then_microbatches() {
        // Four sequences over 2 replicas x 1 micro-batch: longest first to the least loaded.
        let seqs = vec![vec![100], vec![400], vec![300], vec![200]];
        let plan = assign(&seqs, 2, 1);
        assert_eq!(plan[0][0], vec![vec![400], vec![100]]);
        assert_eq!(plan[1][0], vec![vec![300], vec![200]]);
    }

    #[test]
    fn field_lines_are_found_in_toml_and_json() {
        let toml = "scope = \"step\"\n[strategy]\nscheme = \"usp\"\nulysses = 3\n";
        assert_eq!(line_of_field(toml, "strategy.ulysses"), 4);
        let json = "{\n  \"strategy\": {\n    \"ulysses\": 3\n  }\n}";
        assert_eq!(line_of_field(json, "strategy.ulysses"), 3);
        assert_eq!(line_of_field(json, "missing"), 0);
        // A key that several sections share is found in the named section.
        let both = "[model]\npreset = \"llama3-8b\"\n[stack]\npreset = \"nemo\"\n";
        assert_eq!(line_of_field(both, "stack.preset"), 4);
        assert_eq!(line_of_field(both, "model.preset"), 2);
    }
}
