//! The analytic cost model: what one SP group's micro-batch costs in time and memory on a cluster.
//!
//! A group's work is described once, as a [`crate::workload::Workload`]: steps of kernels and
//! collectives, each step either exposed (transfer, then compute) or overlapped (transfer
//! alongside compute, as ring attention does). The cost model prices it into a [`Program`] and
//! evaluates that on an idle cluster; the simulator replays the same programs with several groups
//! sharing links. docs/cost-model.md states the formulas.

pub mod attention;
pub mod comm;
pub mod compute;
pub mod devset;
pub mod flops;
pub mod links;
pub mod memory;
pub mod pairs;
pub mod pipeline;
pub mod scenario;
mod program;
pub mod sources;
pub mod validate;

pub use attention::{AttentionKernel, AttentionModel};
pub use comm::Transfer;
pub use compute::{Dtype, Pass};
pub use memory::{Checkpointing, MemoryBreakdown};
pub use crate::workload::batch_layout;
pub use program::{kernel_s, OverlapSplit, Part, Program, Stage};
#[cfg(test)]
pub(crate) use program::one_transfer;

use crate::cluster::{Cluster, Collective};
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::scheme::{GroupShape, HsapParams};
use crate::stack::Stack;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How training runs, beyond the parallel scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub dtype: Dtype,
    /// ZeRO stage 0-3, sharding over all data-parallel ranks (data and sequence parallel ranks,
    /// `gpus / tp` of them).
    pub zero: u8,
    pub checkpointing: Checkpointing,
    /// Tensor-parallel degree inside each SP rank (1: none).
    pub tp: u32,
    /// Whether the data-parallel gradient reduction overlaps the backward pass.
    pub overlap_grad_sync: bool,
    /// Run the backward pass too (false: forward only).
    pub backward: bool,
    /// Q, K and V cross the Ulysses all-to-all as one packed tensor (one collective) rather than
    /// three (DeepSpeed-Ulysses and USP's default).
    pub qkv_packed: bool,
    /// The attention kernel; None: the stack's for the GPU's architecture.
    pub attention_kernel: Option<AttentionKernel>,
    /// GPUs that hold the model states: ZeRO shards over them (divided by tp) and the per-layer
    /// ZeRO collectives span them. None: every GPU of the cluster.
    pub data_parallel_gpus: Option<u32>,
    /// Megatron sequence parallelism in the tensor-parallel group: norms and elementwise work
    /// split over tp, all-gather and reduce-scatter around each block; false: all-reduce and
    /// the elementwise work repeated on every tp rank.
    pub sequence_parallel: bool,
    /// The software stack: attention kernel, elementwise traffic, overlaps, precision costs and
    /// host time (`stack::Stack`; the default prices the kernels alone).
    pub stack: Stack,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dtype: Dtype::Bf16,
            zero: 3,
            checkpointing: Checkpointing::Full,
            tp: 1,
            overlap_grad_sync: true,
            backward: true,
            qkv_packed: false,
            attention_kernel: None,
            data_parallel_gpus: None,
            sequence_parallel: true,
            stack: Stack::default(),
        }
    }
}

/// How much of the model a program covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One attention layer alone: the SP communication and the attention kernels.
    Attention,
    /// One transformer layer.
    Layer,
    /// A whole micro-batch: every layer, the LM head and loss, and ZeRO traffic.
    #[default]
    Step,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Attention => "attention",
            Scope::Layer => "layer",
            Scope::Step => "step",
        }
    }
}

/// A group's predicted cost for one micro-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupCost {
    pub time_s: f64,
    /// Busy compute time, averaged over the group's ranks.
    pub compute_s: f64,
    /// Time the average rank waits on slower ranks of its group (load imbalance).
    pub idle_s: f64,
    /// Per collective: total time and the part not hidden behind compute.
    pub comm: Vec<CommCost>,
    /// Peak memory of the group's most loaded GPU (`memory.total_bytes()`).
    pub memory_bytes: f64,
    pub memory: MemoryBreakdown,
    /// FLOPs one GPU executes (including recomputation and padding).
    pub flops_per_gpu: f64,
    /// Model FLOPs of the real tokens per GPU (what MFU counts).
    pub model_flops_per_gpu: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommCost {
    pub collective: Collective,
    pub total_s: f64,
    pub exposed_s: f64,
}

impl GroupCost {
    pub fn exposed_comm_s(&self) -> f64 {
        self.comm.iter().map(|c| c.exposed_s).sum()
    }
}

/// What a training step adds after its micro-batches: the data-parallel gradient and parameter
/// synchronisation not already inside the programs, and the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SyncCost {
    /// The step-level collectives' time on an idle cluster.
    pub time_s: f64,
    /// What the step waits for: the collectives' part not hidden behind the last micro-batch's
    /// backward pass, plus the optimizer step.
    pub exposed_s: f64,
    /// The optimizer step (memory-bound Adam over this GPU's shard), included in `exposed_s`.
    pub optimizer_s: f64,
}

#[derive(Debug, Clone)]
pub struct CostModel {
    pub model: ModelShape,
    pub cluster: Cluster,
    pub train: TrainConfig,
    /// The attention kernel's tile model for this cluster's GPU (from the published tables and
    /// the cluster's calibration).
    pub attention: Arc<AttentionModel>,
}

/// Bytes Adam moves per parameter of a shard: reads fp32 master weight, momentum, variance
/// (12) and the bf16 gradient (2), writes the three fp32 states (12) and the bf16 weight (2).
pub const ADAM_BYTES_PER_PARAM: f64 = 28.0;

/// Bytes gradient-norm clipping moves per parameter of a shard (every stack of the development
/// set clips at norm 1.0): the norm reads each fp32 gradient (4), the scaling reads and writes
/// it (8) (torch.nn.utils.clip_grad_norm_, Megatron's clip_grad_norm_fp32).
pub const GRAD_CLIP_BYTES_PER_PARAM: f64 = 12.0;

/// Tokens per GPU of the homogeneous batches `doc_linear` is measured on: enough that GEMM tiles
/// and collective latencies are amortised as in a real micro-batch.
pub const DOC_TIME_REFERENCE_TOKENS_PER_GPU: u32 = 4096;

/// Most documents in one of `doc_linear`'s reference batches (short documents would otherwise
/// need tens of thousands).
pub const DOC_TIME_MAX_DOCS: usize = 4096;

/// A linear model of a group's micro-batch time for the planner's MILP. ZeRO's per-layer
/// parameter and gradient traffic runs alongside the layer's GEMMs, so a group is either
/// compute-bound or bound by that traffic:
/// `time ~ max(fixed_s + sum doc_s, floor_s + sum doc_comm_bound_s)` (two epigraph constraints).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupLinear {
    /// Intercept of the compute-bound line.
    pub fixed_s: f64,
    /// Intercept of the traffic-bound line: the overlapped ZeRO traffic plus the fixed rest.
    pub floor_s: f64,
}

/// One document's slopes in [`GroupLinear`]'s two lines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DocLinear {
    /// Marginal time when compute hides the ZeRO traffic.
    pub doc_s: f64,
    /// Marginal time when the ZeRO traffic hides the GEMMs it overlaps.
    pub doc_comm_bound_s: f64,
}

impl CostModel {
    pub fn new(model: ModelShape, cluster: Cluster, train: TrainConfig) -> Result<CostModel> {
        if train.zero > 3 {
            return Err(Error::invalid(format!("ZeRO stage {} does not exist", train.zero), "use 0, 1, 2 or 3"));
        }
        if train.tp == 0 || model.heads % train.tp != 0 {
            return Err(Error::invalid(
                format!("tensor-parallel degree {} must divide the {} heads", train.tp, model.heads),
                "choose a tp that divides the number of heads",
            ));
        }
        let gpd = cluster.gpus_per_domain();
        if train.tp > gpd && train.tp % gpd != 0 {
            return Err(Error::invalid(
                format!("tensor-parallel degree {} spans part of an NVLink domain of {gpd} GPUs", train.tp),
                "tensor parallelism across domains must span whole domains (nodes, or racks on NVL72)",
            ));
        }
        let kernel = train.attention_kernel.unwrap_or_else(|| train.stack.attention.kernel(cluster.gpu.arch));
        let attention = Arc::new(AttentionModel::for_cluster(&cluster, Some(kernel))?);
        Ok(CostModel { model, cluster, train, attention })
    }

    /// The stack's fitted time factor (docs/cost-model.md section 12: measured over priced step
    /// time on the development set), read here only. It multiplies every time of a whole step as
    /// the step is priced: the stages of step-scope workloads as `Program::price` prices them, the gradient
    /// synchronisation and the optimizer ([`Self::step_transfer_s`], [`Self::optimizer_s`]) and
    /// the host and pipeline terms of `predict`. So `predict`, the planner's pricing, `tune`'s
    /// error bars and the simulator all use one stack-adjusted model; attention and layer scopes
    /// (the kernel and collective validations) are priced without it.
    pub fn step_factor(&self) -> f64 {
        self.train.stack.fitted.time_factor
    }

    /// A collective's time on an idle cluster as part of a whole step (the stack's factor applied).
    pub fn step_transfer_s(&self, t: &Transfer) -> f64 {
        comm::time_s(&self.cluster, t) * self.step_factor()
    }

    /// The parameters the sequence-aware layout balances with.
    pub fn hsap_params(&self) -> HsapParams {
        HsapParams {
            split_threshold: None,
            linear_weight: crate::workload::linear_weight(&self.model),
        }
    }

    /// The stage program of one group running `docs` (lengths, packing order) as one micro-batch.
    pub fn program(&self, shape: &GroupShape, docs: &[u32]) -> Program {
        self.program_batch(shape, &[docs.to_vec()], Scope::Step)
    }

    /// What one group running a micro-batch of `sequences` does, unpriced (`crate::workload`).
    pub fn workload(&self, shape: &GroupShape, sequences: &[Vec<u32>], scope: Scope) -> crate::workload::Workload {
        crate::workload::build(self, shape, sequences, scope)
    }

    /// The stage program of one group running a micro-batch of independent sequences (each a
    /// packed list of document lengths, laid out over the group on its own), for `scope`.
    pub fn program_batch(&self, shape: &GroupShape, sequences: &[Vec<u32>], scope: Scope) -> Program {
        Program::price(self, self.workload(shape, sequences, scope))
    }

    /// Cost of one group's micro-batch on an idle cluster.
    pub fn group(&self, shape: &GroupShape, docs: &[u32]) -> GroupCost {
        let program = self.program(shape, docs);
        program.cost(&self.cluster)
    }

    /// Each group's time in a micro-batch of `groups` (programs with their global ranks) running
    /// at once, the NICs shared between their network traffic (`links`, docs/cost-model.md
    /// section "Shared links"). Groups that share no NIC keep their isolated `Program::time_s`.
    pub fn shared_times_s(&self, groups: &[(&Program, &[u32])]) -> Vec<f64> {
        let gpd = self.cluster.gpus_per_domain().max(1);
        let domains: Vec<Vec<u32>> = groups
            .iter()
            .map(|(_, ranks)| {
                let mut d: Vec<u32> = ranks.iter().map(|r| r / gpd).collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        let placed: Vec<links::Placed> = groups
            .iter()
            .zip(&domains)
            .map(|((program, ranks), domains)| links::Placed { program, domains, gpus: ranks.len() as u32 })
            .collect();
        links::shared_times_s(self, &placed)
    }

    /// Peak memory of one group's micro-batch (what [`Self::group`] reports), from its layout
    /// alone: no steps are built or priced.
    pub fn group_memory_bytes(&self, shape: &GroupShape, docs: &[u32]) -> f64 {
        crate::workload::memory(self, shape, &[docs.to_vec()], Scope::Step).total_bytes()
    }

    /// The group's time that does not grow with its documents (kernel launches, collective
    /// latencies) when its compute hides the ZeRO traffic: `group_linear(shape).fixed_s`.
    pub fn group_fixed_s(&self, shape: &GroupShape) -> f64 {
        self.group_linear(shape).fixed_s
    }

    /// The marginal time one document of `len` tokens adds to a group's micro-batch when the
    /// group's compute hides its ZeRO traffic: `doc_linear(shape, len).doc_s`.
    pub fn doc_time(&self, shape: &GroupShape, len: u32) -> f64 {
        self.doc_linear(shape, len).doc_s
    }

    /// The intercepts of the group's two-line linear model (see [`GroupLinear`]): measured on
    /// homogeneous batches of 1024-token documents filling the group to
    /// [`DOC_TIME_REFERENCE_TOKENS_PER_GPU`] and twice that, `2 f(k) - f(2k)`.
    pub fn group_linear(&self, shape: &GroupShape) -> GroupLinear {
        let len = 1024;
        let k = self.reference_count(shape, len);
        let one = self.program(shape, &vec![len; k]).overlap_split();
        let two = self.program(shape, &vec![len; 2 * k]).overlap_split();
        let intercept = |a: f64, b: f64| (2.0 * a - b).max(0.0);
        let rest = intercept(one.rest_s, two.rest_s);
        GroupLinear {
            fixed_s: rest + intercept(one.overlapped_compute_s, two.overlapped_compute_s),
            floor_s: rest + one.overlapped_transfer_s,
        }
    }

    /// The slopes of the two-line linear model for one document of `len` tokens, measured on
    /// homogeneous batches of such documents (k and 2k of them, k filling the group to
    /// [`DOC_TIME_REFERENCE_TOKENS_PER_GPU`], at most [`DOC_TIME_MAX_DOCS`]). Each call prices two
    /// batches: cache it per (shape, length bucket).
    pub fn doc_linear(&self, shape: &GroupShape, len: u32) -> DocLinear {
        if len == 0 {
            return DocLinear { doc_s: 0.0, doc_comm_bound_s: 0.0 };
        }
        let k = self.reference_count(shape, len);
        let one = self.program(shape, &vec![len; k]).overlap_split();
        let two = self.program(shape, &vec![len; 2 * k]).overlap_split();
        let slope = |a: f64, b: f64| ((b - a) / k as f64).max(0.0);
        let rest = slope(one.rest_s, two.rest_s);
        DocLinear {
            doc_s: rest + slope(one.overlapped_compute_s, two.overlapped_compute_s),
            doc_comm_bound_s: rest,
        }
    }

    /// The two-line linear model's estimate of `group(shape, docs).time_s` from the documents'
    /// slopes (the planner's cache of [`CostModel::doc_linear`]).
    pub fn linear_estimate_s(&self, group: &GroupLinear, docs: impl Iterator<Item = DocLinear>) -> f64 {
        let (mut compute, mut comm) = (group.fixed_s, group.floor_s);
        for d in docs {
            compute += d.doc_s;
            comm += d.doc_comm_bound_s;
        }
        compute.max(comm)
    }

    fn reference_count(&self, shape: &GroupShape, len: u32) -> usize {
        let tokens = u64::from(DOC_TIME_REFERENCE_TOKENS_PER_GPU) * u64::from(shape.size());
        (tokens.div_ceil(u64::from(len.max(1))) as usize).clamp(1, DOC_TIME_MAX_DOCS)
    }

    /// GPUs that hold the model states (`TrainConfig::data_parallel_gpus`, else the cluster's).
    pub fn data_parallel_gpus(&self) -> u32 {
        self.train.data_parallel_gpus.unwrap_or_else(|| self.cluster.gpus()).max(1)
    }

    /// Memory the model states take per GPU when all `gpus` GPUs hold the model: the
    /// tensor-parallel slice, ZeRO-sharded over the `gpus / tp` data-parallel ranks.
    pub fn static_memory_bytes(&self, gpus: u32) -> f64 {
        memory::model_state_bytes(&self.model, &self.train, (gpus / self.train.tp).max(1))
    }

    /// Usable memory per GPU: HBM less what the CUDA context, NCCL and allocator fragmentation
    /// take (a fixed 10%, as PyTorch's caching allocator typically loses).
    pub fn memory_limit_bytes(&self) -> f64 {
        self.cluster.hbm_bytes() * 0.9
    }

    /// What the step-level synchronisation over `gpus` GPUs moves after the last micro-batch:
    /// the part frameworks overlap with its backward pass, and the part that runs after it.
    /// - ZeRO 0: all-reduce of the bf16 gradients, overlapped with the backward (DDP buckets);
    /// - ZeRO 1: reduce-scatter of the gradients (overlapped), then all-gather of the updated
    ///   weights after the optimizer (exposed), as Megatron's distributed optimizer does;
    /// - ZeRO 2: the gradients were reduce-scattered during every micro-batch's backward (in the
    ///   programs); the updated weights are all-gathered (exposed);
    /// - ZeRO 3: everything is in the programs (weights gathered per layer and pass).
    pub fn sync_transfers(&self, gpus: u32) -> (Option<Transfer>, Option<Transfer>) {
        let tp = self.train.tp;
        let ranks = (gpus / tp).max(1);
        let nodes = gpus.div_ceil(self.cluster.gpus_per_domain());
        let params = self.model.params() as f64 / f64::from(tp);
        let grads = params * self.train.stack.precision.grad_reduce_bytes;
        let weights = params * 2.0;
        let t = |collective, bytes| Some(Transfer::new(collective, ranks, nodes, bytes));
        match self.train.zero {
            0 => (t(Collective::AllReduce, grads), None),
            1 => (t(Collective::ReduceScatter, grads), t(Collective::AllGather, weights)),
            2 => (None, t(Collective::AllGather, weights)),
            _ => (None, None),
        }
    }

    /// Whether the overlappable part of the step's synchronisation runs beside the last
    /// micro-batch's backward: the run asks for it and the stack reduces in buckets.
    pub fn grad_sync_overlaps(&self) -> bool {
        self.train.overlap_grad_sync && self.train.stack.overlap.grad_reduce
    }

    /// Whether the weights' all-gather after the optimizer (ZeRO 1 and 2) runs during the next
    /// step's forward (the stack's `overlap.param_gather`) instead of after the optimizer.
    pub fn param_gather_overlaps(&self) -> bool {
        self.train.stack.overlap.param_gather
    }

    /// The optimizer step over this GPU's shard of the weights, gradient clipping included
    /// (memory-bound).
    pub fn optimizer_s(&self, gpus: u32) -> f64 {
        compute::memory_time_s(&self.cluster, self.optimizer_bytes(gpus)) * self.step_factor()
    }

    /// Bytes the optimizer step moves through HBM on one GPU (Adam and gradient clipping over
    /// its shard).
    pub fn optimizer_bytes(&self, gpus: u32) -> f64 {
        let tp = self.train.tp;
        let shard = if self.train.zero >= 1 { f64::from((gpus / tp).max(1)) } else { 1.0 };
        let params = self.model.params() as f64 / f64::from(tp) / shard;
        params * (ADAM_BYTES_PER_PARAM + GRAD_CLIP_BYTES_PER_PARAM)
    }

    /// The step-level synchronisation and optimizer step after the last micro-batch, whose
    /// backward pass of `last_backward_s` hides the overlappable part (see [`Self::sync_transfers`]).
    pub fn grad_sync(&self, gpus: u32, last_backward_s: f64) -> SyncCost {
        let (overlapped, after) = self.sync_transfers(gpus);
        let time = |t: Option<Transfer>| t.map_or(0.0, |t| self.step_transfer_s(&t));
        self.sync_cost(time(overlapped), time(after), self.optimizer_s(gpus), last_backward_s)
    }

    /// The synchronisation's cost from its parts' times: the reduction that may overlap the last
    /// backward pass of `last_backward_s`, the weights' gather after the optimizer, the optimizer.
    pub fn sync_cost(&self, overlappable: f64, gather: f64, optimizer_s: f64, last_backward_s: f64) -> SyncCost {
        let exposed = if self.param_gather_overlaps() { 0.0 } else { gather };
        let hidden = if self.grad_sync_overlaps() { last_backward_s } else { 0.0 };
        SyncCost {
            time_s: overlappable + gather,
            exposed_s: (overlappable - hidden).max(0.0) + exposed + optimizer_s,
            optimizer_s,
        }
    }

    /// [`Self::grad_sync`] after a last micro-batch of groups running `last`: gradients of the
    /// shared weights are complete once every group has reached the backward pass, so what hides
    /// the reduction is the time from the last group entering its backward to the micro-batch's end.
    pub fn grad_sync_after(&self, gpus: u32, last: &[&Program]) -> SyncCost {
        let start = last.iter().map(|p| p.forward_s()).fold(0.0, f64::max);
        let end = last.iter().map(|p| p.time_s()).fold(0.0, f64::max);
        self.grad_sync(gpus, end - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{RingVariant, Scheme};

    fn gpt7b() -> CostModel {
        CostModel::new(
            ModelShape::resolve("gpt-7b").unwrap(),
            Cluster::resolve("a100-40g-ib400").unwrap(),
            TrainConfig::default(),
        )
        .unwrap()
    }

    fn shape(scheme: Scheme, u: u32, r: u32) -> GroupShape {
        GroupShape { scheme, ulysses: u, ring: r, variant: RingVariant::Zigzag }
    }

    proptest::proptest! {
        /// The memory-only path reads what the full workload would: the same layout, the same
        /// breakdown, for every scheme, degree, checkpointing policy and document mix.
        #[test]
        fn memory_from_the_layout_is_the_workloads_memory(
            scheme in proptest::sample::select(vec![Scheme::Ulysses, Scheme::Ring, Scheme::Usp, Scheme::Hsap, Scheme::Allgather, Scheme::DoubleRing]),
            u in proptest::sample::select(vec![1u32, 2, 4, 8]),
            r in 1u32..20,
            zero in proptest::sample::select(vec![0u8, 1, 3]),
            checkpointing in proptest::sample::select(vec![Checkpointing::None, Checkpointing::Selective, Checkpointing::Full]),
            docs in proptest::collection::vec(1u32..40_000, 1..40),
        ) {
            let scheme = if r == 1 { Scheme::Ulysses } else if scheme == Scheme::Ulysses { Scheme::Hsap } else { scheme };
            let cluster = Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(4).unwrap();
            let train = TrainConfig { zero, checkpointing, ..TrainConfig::default() };
            let cm = CostModel::new(ModelShape::resolve("gpt-7b").unwrap(), cluster, train).unwrap();
            let s = shape(scheme, u, r);
            proptest::prop_assert_eq!(cm.group_memory_bytes(&s, &docs), cm.group(&s, &docs).memory_bytes);
        }
    }

    #[test]
    fn ulysses_all_to_all_volume_per_layer() {
        // gpt-7b, u = 8 over 8192 tokens: each rank holds 1024 tokens; Q, K and V of 64 heads x 64
        // dims in bf16 are 1024 x 64 x 64 x 2 = 8,388,608 bytes each per rank, the output as much.
        let cm = gpt7b();
        let p = cm.program(&shape(Scheme::Ulysses, 8, 1), &[8192]);
        let a2a: Vec<(String, f64)> = p
            .stages
            .iter()
            .filter(|s| s.label.starts_with("ulysses all_to_all") && s.label.ends_with("fwd"))
            .map(|s| (s.label.clone(), s.transfer.unwrap().bytes))
            .collect();
        let names: Vec<&str> = a2a.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            names,
            ["ulysses all_to_all in q fwd", "ulysses all_to_all in k fwd", "ulysses all_to_all in v fwd", "ulysses all_to_all out out fwd"]
        );
        assert!(a2a.iter().all(|(_, b)| *b == 8_388_608.0));
        // Packed, Q, K and V go as one 25,165,824-byte buffer.
        let packed = CostModel::new(cm.model.clone(), cm.cluster.clone(), TrainConfig { qkv_packed: true, ..TrainConfig::default() }).unwrap();
        let p = packed.program(&shape(Scheme::Ulysses, 8, 1), &[8192]);
        let qkv = p.stages.iter().find(|s| s.label == "ulysses all_to_all in qkv fwd").unwrap();
        assert_eq!(qkv.transfer.unwrap().bytes, 25_165_824.0);
    }
}
