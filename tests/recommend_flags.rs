//! The launch configuration's settings pinned against the frameworks' own argument definitions.
//! Each table below is what one release's file defines, quoted with the file and the release; a
//! setting the recommendation emits must be defined there with a value the definition accepts.
//! When a framework renames a flag, update the table from the new release's file and the release
//! constant in src/recommend.rs together.

use hsap::cost::memory::Checkpointing;
use hsap::formats::recommendation::{FrameworkLaunch, Launch};
use hsap::model::ModelShape;
use hsap::recommend::{frameworks, DEEPSPEED_VERSION, MEGATRON_CORE_VERSION, TORCHTITAN_VERSION, TRANSFORMER_ENGINE_VERSION, YUNCHANG_VERSION};
use hsap::scheme::{RingVariant, Scheme};
use serde_json::Value;

/// What a definition accepts.
#[derive(Debug)]
enum Accepts {
    /// `action='store_true'`: no value.
    Flag,
    /// `type=int` (a positive integer where the framework asserts one).
    Int,
    /// `choices=[...]` or a `Literal[...]`.
    OneOf(&'static [&'static str]),
    Bool,
}

/// Megatron-Core 0.15.3 (tag core_v0.15.3), megatron/training/arguments.py:
///   group.add_argument('--tensor-model-parallel-size', type=int, default=1, ...)
///   group.add_argument('--sequence-parallel', action='store_true', ...)
///   group.add_argument('--context-parallel-size', type=int, default=1, ...)
///   group.add_argument('--cp-comm-type', nargs='+', type=str, default=["p2p"], help='... p2p, a2a, allgather or a2a+p2p ...')
///   group.add_argument('--hierarchical-context-parallel-sizes', nargs='+', type=int, default=None, ...)
///   group.add_argument('--recompute-granularity', type=str, default=None, choices=['full', 'selective'], ...)
///   group.add_argument('--recompute-method', type=str, default=None, choices=['uniform', 'block'], ...)
///   group.add_argument('--recompute-num-layers', type=int, default=None, ...)
///   group.add_argument('--use-distributed-optimizer', action='store_true', ...)
///   group.add_argument('--use-megatron-fsdp', action='store_true', ...)
///   group.add_argument('--data-parallel-sharding-strategy', type=str, default='no_shard',
///                      choices=['no_shard', 'optim', 'optim_grads', 'optim_grads_params'], ...)
///   group.add_argument('--ckpt-format', default='torch_dist', choices=['torch', 'torch_dist', 'zarr', 'torch_dcp', 'fsdp_dtensor'], ...)
///   group.add_argument('--micro-batch-size', type=int, default=None, ...)
///   group.add_argument('--seq-length', type=int, default=None, ...)
/// --cp-comm-type is passed to Transformer Engine unchanged (megatron/core/extensions/
/// transformer_engine.py: extra_kwargs["cp_comm_type"] = cp_comm_type), whose
/// attn_forward_func_with_cp (transformer_engine/pytorch/attention/dot_product_attention/
/// context_parallel.py, v2.12) compares it with "p2p", "a2a+p2p", "all_gather" and "a2a": the
/// help text's "allgather" would match none of them, so the accepted values are TE's.
const MEGATRON: &[(&str, Accepts)] = &[
    ("--tensor-model-parallel-size", Accepts::Int),
    ("--sequence-parallel", Accepts::Flag),
    ("--context-parallel-size", Accepts::Int),
    ("--cp-comm-type", Accepts::OneOf(&["p2p", "a2a", "all_gather", "a2a+p2p"])),
    ("--hierarchical-context-parallel-sizes", Accepts::Int),
    ("--recompute-granularity", Accepts::OneOf(&["full", "selective"])),
    ("--recompute-method", Accepts::OneOf(&["uniform", "block"])),
    ("--recompute-num-layers", Accepts::Int),
    ("--use-distributed-optimizer", Accepts::Flag),
    ("--use-megatron-fsdp", Accepts::Flag),
    ("--data-parallel-sharding-strategy", Accepts::OneOf(&["no_shard", "optim", "optim_grads", "optim_grads_params"])),
    ("--ckpt-format", Accepts::OneOf(&["torch", "torch_dist", "zarr", "torch_dcp", "fsdp_dtensor"])),
    ("--micro-batch-size", Accepts::Int),
    ("--seq-length", Accepts::Int),
];

/// DeepSpeed 0.16.4 (tag v0.16.4):
///   deepspeed/runtime/zero/config.py, class DeepSpeedZeroConfig: `stage: ZeroStageEnum = 0`
///     (ZeroStageEnum: disabled 0, optimizer_states 1, gradients 2, weights 3), the ds_config key
///     "zero_optimization" -> "stage";
///   deepspeed/runtime/constants.py: TRAIN_MICRO_BATCH_SIZE_PER_GPU = "train_micro_batch_size_per_gpu";
///   deepspeed/runtime/engine.py: `self.sequence_parallel_size = groups._get_sequence_parallel_world_size()`,
///     the size of the sequence-parallel group deepspeed/sequence/layer.py's DistributedAttention
///     runs its all-to-all over.
const DEEPSPEED: &[(&str, Accepts)] = &[
    ("sequence_parallel_size", Accepts::Int),
    ("zero_optimization.stage", Accepts::OneOf(&["0", "1", "2", "3"])),
    ("train_micro_batch_size_per_gpu", Accepts::Int),
];

/// TorchTitan 0.2.2 (tag v0.2.2), torchtitan/config/job_config.py:
///   class Parallelism:
///     data_parallel_replicate_degree: int = 1
///     data_parallel_shard_degree: int = -1
///     fsdp_reshard_after_forward: Literal["default", "always", "never"] = "default"
///     tensor_parallel_degree: int = 1
///     context_parallel_degree: int = 1
///     context_parallel_rotate_method: Literal["allgather", "alltoall"] = "allgather"
///   class ActivationCheckpoint:
///     mode: Literal["selective", "full", "memory_budget", "none"] = "selective"
const TORCHTITAN: &[(&str, Accepts)] = &[
    ("parallelism.data_parallel_replicate_degree", Accepts::Int),
    ("parallelism.data_parallel_shard_degree", Accepts::Int),
    ("parallelism.fsdp_reshard_after_forward", Accepts::OneOf(&["default", "always", "never"])),
    ("parallelism.tensor_parallel_degree", Accepts::Int),
    ("parallelism.context_parallel_degree", Accepts::Int),
    ("parallelism.context_parallel_rotate_method", Accepts::OneOf(&["allgather", "alltoall"])),
    ("activation_checkpoint.mode", Accepts::OneOf(&["selective", "full", "memory_budget", "none"])),
];

/// yunchang 0.3.1 (tag v0.3.1):
///   yunchang/globals.py: def set_seq_parallel_pg(sp_ulysses_degree, sp_ring_degree, rank, world_size, use_ulysses_low=True)
///   yunchang/hybrid/attn_layer.py: class LongContextAttention.__init__(..., ring_impl_type: str = "basic", ...)
///   yunchang/hybrid/utils.py: RING_IMPL_DICT = {"basic": ..., "zigzag": ..., "strip": ...}
const YUNCHANG: &[(&str, Accepts)] = &[
    ("set_seq_parallel_pg.sp_ulysses_degree", Accepts::Int),
    ("set_seq_parallel_pg.sp_ring_degree", Accepts::Int),
    ("set_seq_parallel_pg.use_ulysses_low", Accepts::Bool),
    ("LongContextAttention.ring_impl_type", Accepts::OneOf(&["basic", "zigzag", "strip"])),
];

fn definitions(framework: &str) -> &'static [(&'static str, Accepts)] {
    match framework {
        "megatron-core" => MEGATRON,
        "deepspeed" => DEEPSPEED,
        "torchtitan" => TORCHTITAN,
        "yunchang" => YUNCHANG,
        other => panic!("no pinned definitions for {other}"),
    }
}

fn accepted(accepts: &Accepts, value: &Value) -> bool {
    match (accepts, value) {
        (Accepts::Flag, Value::Null) => true,
        (Accepts::Int, Value::Number(n)) => n.as_u64().is_some_and(|v| v >= 1),
        (Accepts::Bool, Value::Bool(_)) => true,
        (Accepts::OneOf(choices), Value::String(s)) => choices.contains(&s.as_str()),
        (Accepts::OneOf(choices), Value::Number(n)) => choices.contains(&n.to_string().as_str()),
        _ => false,
    }
}

fn launch(scheme: Scheme, ulysses: u32, ring: u32) -> Launch {
    let gpus = 64;
    Launch {
        strategy: "static-test".into(),
        scheme,
        ulysses,
        ring,
        variant: RingVariant::Zigzag,
        sp_degree: ulysses * ring,
        tensor_parallel: 1,
        data_parallel: gpus / (ulysses * ring),
        gpus,
        gpus_per_node: 8,
        zero: 3,
        checkpointing: Checkpointing::Full,
        sequence_parallel: true,
        max_group_tokens: 100_001,
        microbatches_min: 1,
        microbatches_max: 3,
    }
}

fn model(name: &str) -> ModelShape {
    ModelShape::resolve(name).unwrap()
}

fn entry<'a>(all: &'a [FrameworkLaunch], name: &str) -> &'a FrameworkLaunch {
    all.iter().find(|f| f.framework == name).unwrap()
}

fn value<'a>(f: &'a FrameworkLaunch, key: &str) -> Option<&'a Value> {
    f.settings.iter().find(|s| s.key == key).map(|s| &s.value)
}

/// Every launch the static families produce, under every ZeRO stage and recomputation policy.
fn every_launch() -> Vec<Launch> {
    let mut out = Vec::new();
    for (scheme, u, r) in [
        (Scheme::Ulysses, 1, 1),
        (Scheme::Ulysses, 8, 1),
        (Scheme::Ulysses, 16, 1),
        (Scheme::Ring, 1, 8),
        (Scheme::Ring, 1, 32),
        (Scheme::Allgather, 1, 4),
        (Scheme::Usp, 8, 4),
        (Scheme::Usp, 2, 2),
    ] {
        for zero in 0..=3 {
            for checkpointing in [Checkpointing::None, Checkpointing::Selective, Checkpointing::Full] {
                for tp in [1, 2] {
                    let mut l = launch(scheme, u, r);
                    l.zero = zero;
                    l.checkpointing = checkpointing;
                    l.tensor_parallel = tp;
                    l.data_parallel = l.gpus / (l.sp_degree * tp);
                    out.push(l);
                }
            }
        }
    }
    out
}

#[test]
fn every_emitted_setting_is_defined_by_the_pinned_release_with_an_accepted_value() {
    for model in [model("gpt-7b"), model("llama3-8b")] {
        for l in every_launch() {
            let all = frameworks(&l, &model);
            assert_eq!(all.iter().map(|f| f.framework.as_str()).collect::<Vec<_>>(), ["megatron-core", "deepspeed", "torchtitan", "yunchang"]);
            for f in &all {
                assert!(f.expressible || (f.settings.is_empty() && !f.notes.is_empty()), "{} for {l:?}", f.framework);
                for s in &f.settings {
                    let (_, accepts) = definitions(&f.framework)
                        .iter()
                        .find(|(key, _)| *key == s.key)
                        .unwrap_or_else(|| panic!("{} emits {}, which its pinned release does not define", f.framework, s.key));
                    assert!(accepted(accepts, &s.value), "{} {} = {} is not accepted ({accepts:?})", f.framework, s.key, s.value);
                }
            }
        }
    }
}

#[test]
fn each_entry_names_the_release_its_settings_follow() {
    let all = frameworks(&launch(Scheme::Ulysses, 8, 1), &model("gpt-7b"));
    let versions: Vec<&str> = all.iter().map(|f| f.version.as_str()).collect();
    assert_eq!(
        versions,
        [
            format!("Megatron-Core {MEGATRON_CORE_VERSION} with Transformer Engine {TRANSFORMER_ENGINE_VERSION}"),
            format!("DeepSpeed {DEEPSPEED_VERSION}"),
            format!("TorchTitan {TORCHTITAN_VERSION}"),
            format!("yunchang {YUNCHANG_VERSION}"),
        ]
    );
    assert_eq!((MEGATRON_CORE_VERSION, DEEPSPEED_VERSION, TORCHTITAN_VERSION, YUNCHANG_VERSION), ("0.15.3", "0.16.4", "0.2.2", "0.3.1"));
    assert!(all.iter().all(|f| !f.sources.is_empty()));
}

#[test]
fn ulysses_is_megatrons_a2a_deepspeeds_sequence_parallel_and_not_torchtitans() {
    let all = frameworks(&launch(Scheme::Ulysses, 8, 1), &model("gpt-7b"));
    let m = entry(&all, "megatron-core");
    assert_eq!(value(m, "--context-parallel-size"), Some(&Value::from(8)));
    assert_eq!(value(m, "--cp-comm-type"), Some(&Value::from("a2a")));
    // 100,001 tokens rounded up to a multiple of 2 x cp = 16 (Megatron asserts
    // seq_length % (2 * context_parallel_size) == 0).
    assert_eq!(value(m, "--seq-length"), Some(&Value::from(100_016)));
    assert_eq!(value(m, "--micro-batch-size"), Some(&Value::from(1)));
    assert_eq!(value(m, "--data-parallel-sharding-strategy"), Some(&Value::from("optim_grads_params")));
    assert_eq!(value(m, "--recompute-granularity"), Some(&Value::from("full")));
    assert!(m.snippet.contains("--cp-comm-type a2a"), "{}", m.snippet);
    let d = entry(&all, "deepspeed");
    assert_eq!(value(d, "sequence_parallel_size"), Some(&Value::from(8)));
    assert_eq!(value(d, "zero_optimization.stage"), Some(&Value::from(3)));
    assert!(!entry(&all, "torchtitan").expressible);
    let y = entry(&all, "yunchang");
    assert_eq!(value(y, "set_seq_parallel_pg.sp_ulysses_degree"), Some(&Value::from(8)));
    assert_eq!(value(y, "set_seq_parallel_pg.sp_ring_degree"), Some(&Value::from(1)));
}

#[test]
fn ring_is_megatrons_p2p_torchtitans_alltoall_rotation_and_not_deepspeeds() {
    let all = frameworks(&launch(Scheme::Ring, 1, 32), &model("llama3-8b"));
    let m = entry(&all, "megatron-core");
    assert_eq!(value(m, "--cp-comm-type"), Some(&Value::from("p2p")));
    assert_eq!(value(m, "--context-parallel-size"), Some(&Value::from(32)));
    // A multiple of 64.
    assert_eq!(value(m, "--seq-length"), Some(&Value::from(100_032)));
    assert!(!entry(&all, "deepspeed").expressible);
    let t = entry(&all, "torchtitan");
    assert_eq!(value(t, "parallelism.context_parallel_degree"), Some(&Value::from(32)));
    assert_eq!(value(t, "parallelism.context_parallel_rotate_method"), Some(&Value::from("alltoall")));
    assert!(t.snippet.contains("[parallelism]\n") && t.snippet.contains("context_parallel_degree = 32"), "{}", t.snippet);
    let y = entry(&all, "yunchang");
    assert_eq!(value(y, "LongContextAttention.ring_impl_type"), Some(&Value::from("zigzag")));
    assert_eq!(value(y, "set_seq_parallel_pg.sp_ring_degree"), Some(&Value::from(32)));
}

#[test]
fn usp_is_yunchangs_grid_and_megatron_says_why_it_cannot_run_it_packed() {
    let all = frameworks(&launch(Scheme::Usp, 8, 4), &model("gpt-7b"));
    let m = entry(&all, "megatron-core");
    assert!(!m.expressible);
    // transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py (v2.12 to
    // v2.18), attn_forward_func_with_cp: for cp_comm_type == "a2a+p2p",
    // `assert qkv_format != "thd", "... not supported with hierarchical CP implementation yet!"`.
    assert!(m.notes[0].contains("a2a+p2p") && m.notes[0].contains("--hierarchical-context-parallel-sizes 8 4") && m.notes[0].contains("THD"), "{}", m.notes[0]);
    assert!(!entry(&all, "deepspeed").expressible);
    assert!(!entry(&all, "torchtitan").expressible);
    let y = entry(&all, "yunchang");
    assert!(y.expressible);
    assert_eq!(value(y, "set_seq_parallel_pg.sp_ulysses_degree"), Some(&Value::from(8)));
    assert_eq!(value(y, "set_seq_parallel_pg.sp_ring_degree"), Some(&Value::from(4)));
    assert_eq!(value(y, "set_seq_parallel_pg.use_ulysses_low"), Some(&Value::from(true)));
}

#[test]
fn megatron_a2a_needs_heads_divisible_by_the_cp_size_where_hsap_replicates_kv_heads() {
    // Llama-3-8B has 8 KV heads: Ulysses 16 replicates them in hsap's model; Transformer Engine
    // asserts `q.shape[-2] % cp_size == 0 and k.shape[-2] % cp_size == 0`.
    let all = frameworks(&launch(Scheme::Ulysses, 16, 1), &model("llama3-8b"));
    let m = entry(&all, "megatron-core");
    assert!(!m.expressible);
    assert!(m.notes[0].contains("divisible by the CP size 16"), "{}", m.notes[0]);
    assert!(entry(&all, "deepspeed").expressible);
    // 8 x 1 divides both.
    assert!(entry(&frameworks(&launch(Scheme::Ulysses, 8, 1), &model("llama3-8b")), "megatron-core").expressible);
}

#[test]
fn zero_stages_and_recomputation_map_to_each_frameworks_terms() {
    let mut l = launch(Scheme::Ring, 1, 8);
    l.zero = 1;
    l.checkpointing = Checkpointing::Selective;
    l.tensor_parallel = 2;
    l.data_parallel = 4;
    let all = frameworks(&l, &model("gpt-7b"));
    let m = entry(&all, "megatron-core");
    assert_eq!(value(m, "--use-distributed-optimizer"), Some(&Value::Null));
    assert_eq!(value(m, "--use-megatron-fsdp"), None);
    assert_eq!(value(m, "--recompute-granularity"), Some(&Value::from("selective")));
    assert_eq!(value(m, "--recompute-method"), None, "Megatron asserts selective has no --recompute-method");
    assert_eq!(value(m, "--sequence-parallel"), Some(&Value::Null));
    assert_eq!(value(m, "--tensor-model-parallel-size"), Some(&Value::from(2)));
    let t = entry(&all, "torchtitan");
    assert_eq!(value(t, "parallelism.data_parallel_replicate_degree"), Some(&Value::from(4)));
    assert_eq!(value(t, "activation_checkpoint.mode"), Some(&Value::from("selective")));
    assert!(t.notes.iter().any(|n| n.contains("no ZeRO-1")));
    l.zero = 2;
    let all = frameworks(&l, &model("gpt-7b"));
    assert_eq!(value(entry(&all, "megatron-core"), "--data-parallel-sharding-strategy"), Some(&Value::from("optim_grads")));
    assert_eq!(value(entry(&all, "torchtitan"), "parallelism.fsdp_reshard_after_forward"), Some(&Value::from("never")));
    assert_eq!(value(entry(&all, "deepspeed"), "zero_optimization.stage"), None, "DeepSpeed has no ring");
}
