//! What to launch, and whether per-batch planning is worth adopting (docs/recommendation.md).
//!
//! The verdict is drawn from the run directory alone (`RunData`), so the report and `tune` say
//! the same thing. The launch configuration translates the best static plan's layout into each
//! framework's own settings, following one pinned release of each; where a framework cannot run
//! the layout it says why instead of emitting flags that would run something else.

use crate::cost::memory::Checkpointing;
use crate::cost::TrainConfig;
use crate::formats::recommendation::{Decision, FrameworkLaunch, Launch, Recommendation, Setting, Verdict, RECOMMENDATION_FORMAT_VERSION};
use crate::formats::run::{BatchRow, RunData, HSAP, STATIC_PREFIX};
use crate::model::ModelShape;
use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::units::{percent, signed_percent};
use serde_json::{json, Value};
use std::fmt::Write;

/// Below this whole-run gain the cost model cannot rank the two choices: the split the model
/// ranks fastest was within 5% of the measured fastest in every row group of the USP validation
/// (docs/cost-model.md section 9).
pub const RANKING_TOLERANCE: f64 = 0.05;

/// The run's recommendation: the verdict, and the best static plan's launch in each framework.
/// `shape` is the best static plan's group shape (None without a static plan).
pub fn recommend(run: &RunData, shape: Option<GroupShape>, model: &ModelShape, train: &TrainConfig) -> Recommendation {
    let verdict = verdict(run);
    let launch = shape.and_then(|s| launch(run, s, train));
    let frameworks = launch.as_ref().map_or_else(Vec::new, |l| frameworks(l, model));
    Recommendation { format_version: RECOMMENDATION_FORMAT_VERSION, verdict, launch, frameworks }
}

/// The best static plan's layout, from the run's groups and batches.
fn launch(run: &RunData, shape: GroupShape, train: &TrainConfig) -> Option<Launch> {
    let name = &run.summary.best_static;
    let rows: Vec<&BatchRow> = run.batches.iter().filter(|r| &r.strategy == name).collect();
    let microbatches = rows.iter().map(|r| r.microbatches);
    let gpus = run.summary.gpus();
    let sp = shape.size();
    let tp = train.tp.max(1);
    Some(Launch {
        strategy: name.clone(),
        scheme: shape.scheme,
        ulysses: shape.ulysses,
        ring: shape.ring,
        variant: shape.variant,
        sp_degree: sp,
        tensor_parallel: tp,
        data_parallel: gpus / (sp * tp).max(1),
        gpus,
        gpus_per_node: run.summary.gpus_per_node,
        zero: train.zero,
        checkpointing: train.checkpointing,
        sequence_parallel: train.sequence_parallel,
        max_group_tokens: run.groups.iter().filter(|g| &g.strategy == name).map(|g| g.tokens).max()?,
        microbatches_min: microbatches.clone().min()?,
        microbatches_max: microbatches.max()?,
    })
}

/// The verdict on per-batch planning against the best static plan.
pub fn verdict(run: &RunData) -> Verdict {
    let s = &run.summary;
    let hsap: Vec<&BatchRow> = run.batches.iter().filter(|r| r.strategy == HSAP).collect();
    let hsap_headroom = headroom(&hsap);
    let mut configuration = s.strategies.iter().find(|st| st.name == s.best_static).map_or_else(String::new, |st| st.detail.clone());
    let mut static_groups = run.groups.iter().filter(|g| g.strategy == s.best_static).peekable();
    if static_groups.peek().is_some() && static_groups.all(|g| g.size == 1) {
        configuration = format!("{configuration}: data parallelism alone, no sequence parallelism").trim_start_matches(": ").to_string();
    }
    let statics: Vec<&BatchRow> = run.batches.iter().filter(|r| r.strategy == s.best_static).collect();
    if s.best_static.is_empty() || statics.is_empty() {
        let skipped = s.planner.skipped.iter().any(|(name, _)| name.starts_with(STATIC_PREFIX));
        let (decision, paragraph) = if skipped {
            let p = format!(
                "No static configuration holds every document within the memory limit: only per-batch plans run this trace (hsap's highest peak memory leaves {} of the limit free).",
                percent(hsap_headroom)
            );
            (Decision::NoStatic, p)
        } else {
            let p = format!(
                "No static baseline ran, so there is nothing to weigh per-batch planning against (rerun with --baselines static-ulysses,static-ring,static-usp); hsap's highest peak memory leaves {} of the limit free.",
                percent(hsap_headroom)
            );
            (Decision::NoBaseline, p)
        };
        return Verdict {
            decision,
            best_static: String::new(),
            configuration,
            median_gain: None,
            whole_run_gain: None,
            error_bar: s.error_bar,
            intervals_overlap: None,
            hsap_memory_headroom: hsap_headroom,
            static_memory_headroom: None,
            paragraph,
        };
    }
    let per_batch: Vec<f64> = hsap
        .iter()
        .filter_map(|h| statics.iter().find(|r| r.batch == h.batch).map(|r| r.predicted_step_s / h.predicted_step_s))
        .collect();
    let median_gain = crate::stats::median(&per_batch).map(|m| m - 1.0);
    let hsap_total: f64 = hsap.iter().map(|r| r.predicted_step_s).sum();
    let static_total: f64 = statics.iter().map(|r| r.predicted_step_s).sum();
    let whole_run_gain = static_total / hsap_total - 1.0;
    let overlap = s.error_bar.map(|bar| bar.overlap(hsap_total, static_total));
    let decision = if whole_run_gain < RANKING_TOLERANCE {
        Decision::KeepStatic
    } else if overlap == Some(true) {
        Decision::Measure
    } else {
        Decision::Adopt
    };
    let mut v = Verdict {
        decision,
        best_static: s.best_static.clone(),
        configuration,
        median_gain,
        whole_run_gain: Some(whole_run_gain),
        error_bar: s.error_bar,
        intervals_overlap: overlap,
        hsap_memory_headroom: hsap_headroom,
        static_memory_headroom: Some(headroom(&statics)),
        paragraph: String::new(),
    };
    v.paragraph = paragraph(&v);
    v
}

/// 1 - the highest peak memory over the limit, over the rows (1 when there are none).
fn headroom(rows: &[&BatchRow]) -> f64 {
    rows.iter().map(|r| 1.0 - r.peak_memory_bytes / r.memory_limit_bytes).fold(1.0, f64::min)
}

fn paragraph(v: &Verdict) -> String {
    let gain = v.whole_run_gain.unwrap_or(0.0);
    let median = v.median_gain.map_or_else(|| "-".to_string(), signed_percent);
    let config = if v.configuration.is_empty() { String::new() } else { format!(" ({})", v.configuration) };
    let mut p = format!(
        "Best static configuration: {}{config}. Per-batch planning (hsap) is {} faster over the whole run (median batch {median})",
        v.best_static,
        signed_percent(gain)
    );
    match (v.error_bar, v.intervals_overlap) {
        (Some(bar), Some(overlap)) => {
            let _ = write!(
                p,
                "; with the stack's error bar ({} to {}) the two totals' intervals {}",
                signed_percent(bar.low),
                signed_percent(bar.high),
                if overlap { "overlap" } else { "are apart" }
            );
        }
        _ => p.push_str("; the stack has no error bar"),
    }
    let _ = write!(
        p,
        ". Memory headroom at the highest peak: {} with hsap, {} with {}. ",
        percent(v.hsap_memory_headroom),
        percent(v.static_memory_headroom.unwrap_or(0.0)),
        v.best_static
    );
    let tolerance = percent(RANKING_TOLERANCE);
    p.push_str(&match v.decision {
        Decision::Adopt => format!("Per-batch planning gains {}: worth adopting on this data.", percent(gain)),
        Decision::Measure => format!(
            "Per-batch planning gains {}, more than the model's {tolerance} ranking tolerance but within the stack's error bar: measure both before adopting.",
            percent(gain)
        ),
        Decision::KeepStatic => format!(
            "Per-batch planning gains {}, within the model's uncertainty ({tolerance} ranking tolerance): keep the static configuration.",
            percent(gain)
        ),
        Decision::NoStatic | Decision::NoBaseline => String::new(),
    });
    p
}

/// Megatron-Core's release the flags follow (megatron/training/arguments.py at core_v0.15.3).
pub const MEGATRON_CORE_VERSION: &str = "0.15.3";
/// The Transformer Engine release whose context-parallel attention the Megatron entry assumes
/// (transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py): its `a2a`
/// takes packed (THD) sequences from 2.10 on, `all_gather` from 2.17; `a2a+p2p` does not (still
/// asserted in 2.18).
pub const TRANSFORMER_ENGINE_VERSION: &str = "2.12";
/// DeepSpeed's release (deepspeed/sequence/layer.py, deepspeed/runtime/zero/config.py at v0.16.4).
pub const DEEPSPEED_VERSION: &str = "0.16.4";
/// TorchTitan's release (torchtitan/config/job_config.py at v0.2.2).
pub const TORCHTITAN_VERSION: &str = "0.2.2";
/// yunchang's release (yunchang/globals.py, yunchang/hybrid/attn_layer.py at v0.3.1).
pub const YUNCHANG_VERSION: &str = "0.3.1";

/// The launch in each framework, in the order Megatron-Core, DeepSpeed, TorchTitan, yunchang.
pub fn frameworks(l: &Launch, model: &ModelShape) -> Vec<FrameworkLaunch> {
    vec![megatron(l, model), deepspeed(l), torchtitan(l), yunchang(l)]
}

fn setting(key: &str, value: Value) -> Setting {
    Setting { key: key.to_string(), value }
}

fn expressible(framework: &str, version: String, sources: &[&str], settings: Vec<Setting>, snippet: String, notes: Vec<String>) -> FrameworkLaunch {
    FrameworkLaunch {
        framework: framework.to_string(),
        version,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        expressible: true,
        settings,
        snippet,
        notes,
    }
}

fn unexpressible(framework: &str, version: String, sources: &[&str], why: String) -> FrameworkLaunch {
    FrameworkLaunch { expressible: false, ..expressible(framework, version, sources, Vec::new(), String::new(), vec![why]) }
}

/// The longest packed sequence rounded up to what Megatron asserts: a multiple of 2 x cp (and of
/// tp under sequence parallelism, which splits the sequence over the tensor-parallel ranks).
fn megatron_seq_length(l: &Launch) -> u64 {
    let mut multiple = if l.sp_degree > 1 { 2 * u64::from(l.sp_degree) } else { 1 };
    if l.sequence_parallel && l.tensor_parallel > 1 {
        multiple = lcm(multiple, u64::from(l.tensor_parallel));
    }
    l.max_group_tokens.div_ceil(multiple) * multiple
}

fn lcm(a: u64, b: u64) -> u64 {
    let gcd = |mut x: u64, mut y: u64| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

/// Megatron-Core: context parallelism through Transformer Engine's attention.
fn megatron(l: &Launch, model: &ModelShape) -> FrameworkLaunch {
    let version = format!("Megatron-Core {MEGATRON_CORE_VERSION} with Transformer Engine {TRANSFORMER_ENGINE_VERSION}");
    let sources = ["megatron/training/arguments.py", "transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py"];
    let (tp, u, cp) = (l.tensor_parallel, l.ulysses, l.sp_degree);
    let cp_comm = match (l.scheme, cp) {
        (_, 1) => None,
        (Scheme::Ulysses, _) => Some("a2a"),
        (Scheme::Ring, _) => Some("p2p"),
        (Scheme::Allgather, _) => Some("all_gather"),
        (Scheme::Usp, _) => {
            return unexpressible(
                "megatron-core",
                version,
                &sources,
                format!(
                    "{u} x {} is Megatron's --cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes {u} {}, but Transformer Engine (through 2.18) refuses packed THD sequences in a2a+p2p; Megatron runs this layout only without document packing",
                    l.ring, l.ring
                ),
            )
        }
        (scheme, _) => {
            return unexpressible(
                "megatron-core",
                version,
                &sources,
                format!("hsap's {} scheme has no Megatron --cp-comm-type", scheme.name()),
            )
        }
    };
    if cp_comm == Some("a2a") && (model.heads % (tp * u) != 0 || model.kv_heads % (tp * u) != 0) {
        return unexpressible(
            "megatron-core",
            version,
            &sources,
            format!(
                "a2a needs the query ({}) and key/value ({}) heads of each tensor-parallel rank divisible by the CP size {u} (Transformer Engine asserts it); hsap's plan replicates key/value heads instead",
                model.heads / tp,
                model.kv_heads / tp
            ),
        );
    }
    let mut settings = vec![setting("--tensor-model-parallel-size", json!(tp))];
    if l.sequence_parallel && tp > 1 {
        settings.push(setting("--sequence-parallel", Value::Null));
    }
    if let Some(comm) = cp_comm {
        settings.push(setting("--context-parallel-size", json!(cp)));
        settings.push(setting("--cp-comm-type", json!(comm)));
    }
    match l.checkpointing {
        Checkpointing::Full => {
            settings.push(setting("--recompute-granularity", json!("full")));
            settings.push(setting("--recompute-method", json!("uniform")));
            settings.push(setting("--recompute-num-layers", json!(1)));
        }
        Checkpointing::Selective => settings.push(setting("--recompute-granularity", json!("selective"))),
        Checkpointing::None => {}
    }
    match l.zero {
        0 => {}
        1 => settings.push(setting("--use-distributed-optimizer", Value::Null)),
        stage => {
            settings.push(setting("--use-megatron-fsdp", Value::Null));
            let strategy = if stage == 2 { "optim_grads" } else { "optim_grads_params" };
            settings.push(setting("--data-parallel-sharding-strategy", json!(strategy)));
            // Megatron asserts it: "Megatron FSDP only supports fsdp_dtensor checkpoint format".
            settings.push(setting("--ckpt-format", json!("fsdp_dtensor")));
        }
    }
    settings.push(setting("--micro-batch-size", json!(1)));
    settings.push(setting("--seq-length", json!(megatron_seq_length(l))));
    let mut notes = vec![format!(
        "one micro-batch is one packed sequence per CP group (THD, documents masked apart through packed_seq_params), {} tokens at most; hsap's static plan used {} to {} micro-batches per global batch, so --global-batch-size is {} x that count",
        megatron_seq_length(l),
        l.microbatches_min,
        l.microbatches_max,
        l.data_parallel
    )];
    match cp_comm {
        Some("a2a") => notes.push("packed sequences with --cp-comm-type a2a need Transformer Engine 2.10 or later".into()),
        Some("all_gather") => notes.push("packed sequences with --cp-comm-type all_gather need Transformer Engine 2.17 or later".into()),
        Some("p2p") if l.variant != RingVariant::Zigzag => notes.push(format!(
            "Transformer Engine's p2p lays each document out zigzag; hsap priced the {} layout",
            l.variant.name()
        )),
        _ => {}
    }
    if l.checkpointing == Checkpointing::Selective {
        notes.push("Megatron's selective recomputation recomputes core attention (its default --recompute-modules core_attn); hsap also priced recomputing the MLP activation".into());
    }
    let snippet = settings
        .iter()
        .map(|s| match &s.value {
            Value::Null => s.key.clone(),
            Value::String(v) => format!("{} {v}", s.key),
            v => format!("{} {v}", s.key),
        })
        .collect::<Vec<_>>()
        .join(" \\\n  ");
    expressible("megatron-core", version, &sources, settings, snippet, notes)
}

/// DeepSpeed: Ulysses (`DistributedAttention` over a sequence-parallel group) and ZeRO.
fn deepspeed(l: &Launch) -> FrameworkLaunch {
    let version = format!("DeepSpeed {DEEPSPEED_VERSION}");
    let sources = ["deepspeed/sequence/layer.py", "deepspeed/runtime/zero/config.py"];
    if l.sp_degree > 1 && l.scheme != Scheme::Ulysses {
        return unexpressible(
            "deepspeed",
            version,
            &sources,
            format!(
                "DeepSpeed's sequence parallelism (DistributedAttention) is the Ulysses all-to-all only; it has no ring, so {} x {} ({}) cannot run on it",
                l.ulysses,
                l.ring,
                l.scheme.name()
            ),
        );
    }
    let settings = vec![
        setting("sequence_parallel_size", json!(l.sp_degree)),
        setting("zero_optimization.stage", json!(l.zero)),
        setting("train_micro_batch_size_per_gpu", json!(1)),
    ];
    let snippet = serde_json::to_string_pretty(&json!({
        "zero_optimization": { "stage": l.zero },
        "train_micro_batch_size_per_gpu": 1,
    }))
    .unwrap_or_default();
    let mut notes = vec![format!(
        "sequence_parallel_size {} is the size of the process group DistributedAttention runs over (Megatron-DeepSpeed: --ds-sequence-parallel-size {}); the JSON is the ds_config fragment",
        l.sp_degree, l.sp_degree
    )];
    if l.tensor_parallel > 1 {
        notes.push(format!("tensor parallelism ({}) comes from the model code (Megatron-DeepSpeed --tensor-model-parallel-size), not from ds_config", l.tensor_parallel));
    }
    if l.checkpointing != Checkpointing::None {
        notes.push(format!("{} activation recomputation is applied in the model code (deepspeed.checkpointing)", l.checkpointing.name()));
    }
    expressible("deepspeed", version, &sources, settings, format!("{snippet}\n"), notes)
}

/// TorchTitan: PyTorch's context parallel (ring attention over SDPA), FSDP2 and activation
/// checkpointing, in the job's TOML.
fn torchtitan(l: &Launch) -> FrameworkLaunch {
    let version = format!("TorchTitan {TORCHTITAN_VERSION}");
    let sources = ["torchtitan/config/job_config.py"];
    let rotate = match (l.scheme, l.sp_degree) {
        (_, 1) => None,
        (Scheme::Ring, _) => Some("alltoall"),
        (Scheme::Allgather, _) => Some("allgather"),
        (scheme, _) => {
            return unexpressible(
                "torchtitan",
                version,
                &sources,
                format!(
                    "TorchTitan's context parallelism rotates key/value shards around a ring (allgather or alltoall); it has no Ulysses all-to-all over heads, so {} x {} ({}) cannot run on it",
                    l.ulysses,
                    l.ring,
                    scheme.name()
                ),
            )
        }
    };
    let mut settings = vec![setting("parallelism.tensor_parallel_degree", json!(l.tensor_parallel))];
    if let Some(rotate) = rotate {
        settings.push(setting("parallelism.context_parallel_degree", json!(l.sp_degree)));
        settings.push(setting("parallelism.context_parallel_rotate_method", json!(rotate)));
    }
    let mut notes = Vec::new();
    match l.zero {
        3 => {
            settings.push(setting("parallelism.data_parallel_shard_degree", json!(l.data_parallel)));
            settings.push(setting("parallelism.fsdp_reshard_after_forward", json!("always")));
        }
        2 => {
            settings.push(setting("parallelism.data_parallel_shard_degree", json!(l.data_parallel)));
            settings.push(setting("parallelism.fsdp_reshard_after_forward", json!("never")));
        }
        stage => {
            settings.push(setting("parallelism.data_parallel_replicate_degree", json!(l.data_parallel)));
            settings.push(setting("parallelism.data_parallel_shard_degree", json!(1)));
            notes.push(format!(
                "TorchTitan has no ZeRO-{stage}: this replicates the model over data-parallel ranks (DDP){}",
                if l.sp_degree > 1 { ", and FSDP still shards it over the context-parallel ranks" } else { "" }
            ));
        }
    }
    settings.push(setting("activation_checkpoint.mode", json!(l.checkpointing.name())));
    let snippet = toml_snippet(&settings);
    if rotate.is_some() {
        notes.push("the default context_parallel_load_balancer \"headtail\" is the zigzag layout hsap priced".into());
    }
    expressible("torchtitan", version, &sources, settings, snippet, notes)
}

/// Dotted keys as TOML tables, in the order the settings first name them.
fn toml_snippet(settings: &[Setting]) -> String {
    let mut tables: Vec<(&str, Vec<String>)> = Vec::new();
    for s in settings {
        let (table, key) = s.key.split_once('.').unwrap_or(("", &s.key));
        let line = format!("{key} = {}", s.value);
        match tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, lines)) => lines.push(line),
            None => tables.push((table, vec![line])),
        }
    }
    let mut out = String::new();
    for (table, lines) in tables {
        let _ = writeln!(out, "[{table}]");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// yunchang (USP): `set_seq_parallel_pg` builds the Ulysses and ring groups, `LongContextAttention`
/// runs them with a ring implementation.
fn yunchang(l: &Launch) -> FrameworkLaunch {
    let version = format!("yunchang {YUNCHANG_VERSION}");
    let sources = ["yunchang/globals.py", "yunchang/hybrid/attn_layer.py", "yunchang/hybrid/utils.py"];
    let ring_impl = match l.variant {
        RingVariant::Basic => "basic",
        RingVariant::Zigzag => "zigzag",
        RingVariant::Stripe => "strip",
    };
    if !matches!(l.scheme, Scheme::Ulysses | Scheme::Ring | Scheme::Usp) {
        return unexpressible(
            "yunchang",
            version,
            &sources,
            format!("hsap's {} scheme is not one of yunchang's Ulysses x ring attentions", l.scheme.name()),
        );
    }
    let settings = vec![
        setting("set_seq_parallel_pg.sp_ulysses_degree", json!(l.ulysses)),
        setting("set_seq_parallel_pg.sp_ring_degree", json!(l.ring)),
        setting("set_seq_parallel_pg.use_ulysses_low", json!(true)),
        setting("LongContextAttention.ring_impl_type", json!(ring_impl)),
    ];
    let snippet = format!(
        "set_seq_parallel_pg(sp_ulysses_degree={}, sp_ring_degree={}, rank=rank, world_size=world_size, use_ulysses_low=True)\nattn = LongContextAttention(ring_impl_type=\"{ring_impl}\")\n",
        l.ulysses, l.ring
    );
    let mut notes = vec![
        "use_ulysses_low puts each Ulysses group on consecutive ranks, inside a node, as hsap lays groups out".to_string(),
        "LongContextAttention takes one sequence per call (no cu_seqlens): packed documents need the varlen ring functions of yunchang/ring".to_string(),
    ];
    if l.tensor_parallel > 1 || l.zero > 0 {
        notes.push(format!(
            "yunchang is an attention layer: tensor parallelism ({}) and ZeRO-{} come from the training framework around it",
            l.tensor_parallel, l.zero
        ));
    }
    expressible("yunchang", version, &sources, settings, snippet, notes)
}
