//! Building a group's stage program from its scheme and layout, and evaluating it in isolation.
//! docs/cost-model.md states every formula used here.

use super::attention::{flops_per_pair, AttentionKernel};
use super::comm::{self, Transfer};
use super::compute::{gemm_time_s, launch_s, memory_time_s, Pass};
use super::memory::{
    kept_bytes_per_token_layer, layer_activation_bytes_per_token, logits_bytes_per_token, model_state_bytes, Checkpointing,
    MemoryBreakdown,
};
use super::pairs::{slot_work, SlotWork};
use super::{CommCost, CostModel, GroupCost, Scope};
use crate::cluster::{Cluster, Collective};
use crate::model::{Mlp, ModelShape};
use crate::scheme::{layout, GroupLayout, GroupShape, HsapParams, Piece, RankShard, Run, Scheme, Slot};
use serde::{Deserialize, Serialize};

/// Which part of the model a stage belongs to (`predict`'s scopes select by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Attention core and its SP communication.
    Attention,
    /// The layer's GEMMs, norms, activation, rotary and tensor-parallel communication.
    Linear,
    /// Output projection and loss, once per micro-batch.
    Head,
}

/// A unit of work every rank of the group runs in lock step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub label: String,
    pub part: Part,
    pub pass: Pass,
    /// How many times the stage runs (layers).
    pub repeat: u32,
    /// Compute time of the slowest rank, and of the average rank.
    pub compute_s: f64,
    pub mean_compute_s: f64,
    pub transfer: Option<Transfer>,
    /// The transfer's time on an idle cluster.
    pub transfer_s: f64,
    /// The transfer runs alongside the compute (ring attention, ZeRO-3 prefetch) rather than
    /// before it.
    pub overlapped: bool,
}

impl Stage {
    /// Time of one repetition given the transfer's time.
    pub fn time_with(&self, transfer_s: f64) -> f64 {
        if self.overlapped {
            self.compute_s.max(transfer_s)
        } else {
            self.compute_s + transfer_s
        }
    }

    pub fn time_s(&self) -> f64 {
        self.time_with(self.transfer_s)
    }

    /// Whether the stage runs in the backward pass (recomputation included): from here on a
    /// group's gradients are being produced.
    pub fn in_backward(&self) -> bool {
        self.pass == Pass::Bwd || self.label.starts_with(RECOMPUTE)
    }
}

/// Label prefix of recomputed forward stages.
pub const RECOMPUTE: &str = "recompute ";

/// A group's micro-batch as stages, with its memory peak and FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub shape: GroupShape,
    pub stages: Vec<Stage>,
    /// Peak memory of the group's most loaded GPU (`memory.total_bytes()`).
    pub memory_bytes: f64,
    pub memory: MemoryBreakdown,
    /// FLOPs the most loaded GPU executes (padding and recomputation included).
    pub flops_per_gpu: f64,
    /// FLOPs of the model's work on the group's real tokens, per GPU of the group (no padding,
    /// no recomputation): what model FLOPs utilisation counts.
    pub model_flops_per_gpu: f64,
    /// Tokens (padding included) each GPU holds outside attention.
    pub tokens_per_gpu: f64,
}

/// A program's time split by what ZeRO's overlapped traffic does to it:
/// `time = rest + sum over the overlapped linear stages of max(compute, transfer)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OverlapSplit {
    /// Every stage but the linear stages that carry ZeRO traffic.
    pub rest_s: f64,
    pub overlapped_compute_s: f64,
    pub overlapped_transfer_s: f64,
}

impl Program {
    pub fn time_s(&self) -> f64 {
        self.stages.iter().map(|s| f64::from(s.repeat) * s.time_s()).sum()
    }

    /// Time until the backward pass begins, on an idle cluster.
    pub fn forward_s(&self) -> f64 {
        self.stages
            .iter()
            .take_while(|s| !s.in_backward())
            .map(|s| f64::from(s.repeat) * s.time_s())
            .sum()
    }

    /// The split behind the planner's two-line linear model (`CostModel::group_linear`).
    pub fn overlap_split(&self) -> OverlapSplit {
        let mut split = OverlapSplit { rest_s: 0.0, overlapped_compute_s: 0.0, overlapped_transfer_s: 0.0 };
        for s in &self.stages {
            let n = f64::from(s.repeat);
            if s.part == Part::Linear && s.overlapped && s.transfer.is_some() {
                split.overlapped_compute_s += n * s.compute_s;
                split.overlapped_transfer_s += n * s.transfer_s;
            } else {
                split.rest_s += n * s.time_s();
            }
        }
        split
    }

    /// The isolated cost: compute, idle, and each collective's exposed part.
    pub fn cost(&self, _cluster: &Cluster) -> GroupCost {
        let mut comm: Vec<CommCost> = Vec::new();
        let (mut compute_s, mut idle_s) = (0.0, 0.0);
        for s in &self.stages {
            let n = f64::from(s.repeat);
            compute_s += n * s.mean_compute_s;
            idle_s += n * (s.compute_s - s.mean_compute_s);
            let Some(t) = &s.transfer else { continue };
            let exposed = s.time_s() - s.compute_s;
            match comm.iter_mut().find(|c| c.collective == t.collective) {
                Some(c) => {
                    c.total_s += n * s.transfer_s;
                    c.exposed_s += n * exposed;
                }
                None => comm.push(CommCost {
                    collective: t.collective,
                    total_s: n * s.transfer_s,
                    exposed_s: n * exposed,
                }),
            }
        }
        GroupCost {
            time_s: self.time_s(),
            compute_s,
            idle_s,
            comm,
            memory_bytes: self.memory_bytes,
            memory: self.memory,
            flops_per_gpu: self.flops_per_gpu,
            model_flops_per_gpu: self.model_flops_per_gpu,
        }
    }
}

/// GEMM work of one token in one layer, in attention (query, key) pairs of the same FLOPs:
/// 2 x layer parameters against 4 x heads x head_dim per pair.
pub fn linear_weight(model: &ModelShape) -> f64 {
    2.0 * model.layer_params() as f64 / (4.0 * f64::from(model.heads * model.head_dim))
}

/// The layout of a micro-batch of independent sequences (each a packed list of documents): each
/// sequence is laid out over the group on its own, as the batch dimension of a kernel keeps them
/// apart, and rank q holds the concatenation of its shards. One sequence is `scheme::layout`.
pub fn batch_layout(shape: &GroupShape, sequences: &[Vec<u32>], params: &HsapParams) -> GroupLayout {
    if sequences.len() == 1 {
        return layout(shape, &sequences[0], params);
    }
    let mut merged = GroupLayout {
        shape: *shape,
        docs: Vec::new(),
        slots: (0..shape.ring).map(|_| Slot { pieces: Vec::new(), pad_after: Vec::new(), padding: 0 }).collect(),
        ranks: (0..shape.size())
            .map(|q| RankShard { slot: q / shape.ulysses.max(1), pieces: Vec::new(), runs: Vec::new(), padding: 0 })
            .collect(),
        split: Vec::new(),
    };
    for seq in sequences {
        let one = layout(shape, seq, params);
        let offset = merged.docs.len() as u32;
        let shift = |p: &Piece| Piece { doc: p.doc + offset, ..*p };
        for (to, from) in merged.slots.iter_mut().zip(&one.slots) {
            to.pieces.extend(from.pieces.iter().map(shift));
            to.pad_after.extend(&from.pad_after);
            // This sequence's end padding stays between it and the next sequence.
            if from.padding > 0 {
                to.pieces.push(Piece { doc: offset, start: 0, len: 0, stride: 1 });
                to.pad_after.push(from.padding);
            }
        }
        for (to, from) in merged.ranks.iter_mut().zip(&one.ranks) {
            to.pieces.extend(from.pieces.iter().map(shift));
            to.runs.extend(from.runs.iter().map(|r| Run { doc: r.doc + offset, ..*r }));
            to.padding += from.padding;
        }
        merged.docs.extend(&one.docs);
        merged.split.extend(&one.split);
    }
    merged
}

/// A GEMM's `(m, n, k)`: an `m x k` by `k x n` product.
type GemmShape = (f64, f64, f64);

/// Everything about the group that the stages are built from.
struct Ctx<'a> {
    cm: &'a CostModel,
    shape: GroupShape,
    layout: GroupLayout,
    work: SlotWork,
    scope: Scope,
    /// Tokens each rank holds (padded slot length / ulysses).
    tokens: f64,
    /// Nodes the group spans, tensor-parallel ranks included.
    nodes: u32,
    /// Query and key/value heads each rank computes attention for (after the all-to-all).
    heads: f64,
    kv_heads: f64,
    stages: Vec<Stage>,
    flops: f64,
}

/// Builds the program of one group running `sequences` (each a packed list of document lengths)
/// as one micro-batch, for `scope`.
pub fn build(cm: &CostModel, shape: &GroupShape, sequences: &[Vec<u32>], scope: Scope) -> Program {
    let layout = batch_layout(shape, sequences, &cm.hsap_params());
    let work = slot_work(&layout);
    let tp = f64::from(cm.train.tp);
    let slot_len = layout.slots.iter().map(Slot::len).max().unwrap_or(0) as f64;
    let gpus = shape.size() * cm.train.tp;
    let mut ctx = Ctx {
        cm,
        shape: *shape,
        tokens: slot_len / f64::from(shape.ulysses.max(1)),
        nodes: gpus.div_ceil(cm.cluster.gpus_per_node),
        heads: f64::from(cm.model.heads) / f64::from(shape.ulysses) / tp,
        kv_heads: f64::from(shape.kv_heads_per_rank(&cm.model)) / tp,
        layout,
        work,
        scope,
        stages: Vec::new(),
        flops: 0.0,
    };
    let layers = match scope {
        Scope::Step => cm.model.layers,
        Scope::Layer | Scope::Attention => 1,
    };
    ctx.layer(layers, Pass::Fwd, "");
    if cm.train.backward {
        match cm.train.checkpointing {
            Checkpointing::Full => ctx.layer(layers, Pass::Fwd, RECOMPUTE),
            Checkpointing::Selective => {
                ctx.attention_compute(layers, Pass::Fwd, RECOMPUTE);
                if scope != Scope::Attention {
                    ctx.activation_recompute(layers);
                }
            }
            Checkpointing::None => {}
        }
        ctx.layer(layers, Pass::Bwd, "");
    }
    if scope == Scope::Step {
        ctx.head();
    }
    let memory = ctx.memory();
    let model_flops_per_gpu = ctx.model_flops_per_gpu();
    Program {
        shape: *shape,
        memory_bytes: memory.total_bytes(),
        memory,
        flops_per_gpu: ctx.flops,
        model_flops_per_gpu,
        tokens_per_gpu: ctx.tokens / tp,
        stages: ctx.stages,
    }
}

fn pass_name(pass: Pass) -> &'static str {
    match pass {
        Pass::Fwd => "fwd",
        Pass::Bwd => "bwd",
    }
}

/// Backward GEMMs compute the input and the weight gradient: twice the forward's work.
fn pass_factor(pass: Pass) -> f64 {
    match pass {
        Pass::Fwd => 1.0,
        Pass::Bwd => 2.0,
    }
}

impl Ctx<'_> {
    fn model(&self) -> &ModelShape {
        &self.cm.model
    }

    fn cluster(&self) -> &Cluster {
        &self.cm.cluster
    }

    fn tp(&self) -> f64 {
        f64::from(self.cm.train.tp)
    }

    fn head_dim(&self) -> f64 {
        f64::from(self.model().head_dim)
    }

    #[allow(clippy::too_many_arguments)]
    fn stage(&mut self, label: String, part: Part, pass: Pass, repeat: u32, max_s: f64, mean_s: f64, transfer: Option<(Transfer, bool)>) {
        // A whole step's stages carry the stack's fitted factor (`CostModel::step_factor`).
        let factor = if self.scope == Scope::Step { self.cm.step_factor() } else { 1.0 };
        let (transfer, transfer_s, overlapped) = match transfer {
            Some((t, overlapped)) => (Some(t), factor * comm::time_s(self.cluster(), &t), overlapped),
            None => (None, 0.0, false),
        };
        let (max_s, mean_s) = (factor * max_s, factor * mean_s);
        self.stages.push(Stage {
            label,
            part,
            pass,
            repeat,
            compute_s: max_s,
            mean_compute_s: mean_s,
            transfer,
            transfer_s,
            overlapped,
        });
    }

    /// One transformer layer's pass (the attention block alone at attention scope).
    fn layer(&mut self, layers: u32, pass: Pass, prefix: &str) {
        if self.scope == Scope::Attention {
            return self.attention_block(layers, pass, prefix);
        }
        match pass {
            Pass::Fwd => {
                self.linear(layers, pass, prefix);
                self.attention_block(layers, pass, prefix);
            }
            // The backward runs the layer in reverse: the MLP and output projection first.
            Pass::Bwd => {
                self.linear(layers, pass, prefix);
                self.attention_block(layers, pass, prefix);
            }
        }
    }

    /// GEMMs of one layer for this rank's tokens: (m, n, k) of QKV, output, MLP up and down.
    fn gemms(&self) -> [GemmShape; 4] {
        let m = self.model();
        let tp = self.tp();
        let (h, f) = (f64::from(m.hidden), f64::from(m.ffn));
        let q = f64::from(m.heads * m.head_dim);
        let kv = f64::from(m.kv_heads * m.head_dim);
        let up = match m.mlp {
            Mlp::Gated => 2.0 * f,
            Mlp::Plain => f,
        };
        let t = self.tokens;
        [(t, (q + 2.0 * kv) / tp, h), (t, h, q / tp), (t, up / tp, h), (t, h, f / tp)]
    }

    /// Bytes the memory-bound operations of one layer's forward move per token (per GPU): two
    /// norms (read and write h), two residual adds (read 2h, write h), rotary on Q and K (read and
    /// write), and the MLP activation (gated: read 2f, write f; plain: read and write f), each as
    /// one fused kernel would move it times the stack's traffic for that operation.
    fn elementwise_ops(&self) -> [f64; 6] {
        let m = self.model();
        let (h, f) = (f64::from(m.hidden), f64::from(m.ffn));
        let qk = f64::from((m.heads + m.kv_heads) * m.head_dim);
        let act = match m.mlp {
            Mlp::Gated => 3.0 * f,
            Mlp::Plain => 2.0 * f,
        };
        // Under sequence parallelism each tp rank holds 1/tp of the tokens outside the GEMMs;
        // without it every tp rank repeats the elementwise work on all of them.
        let b = if self.cm.train.sequence_parallel { 2.0 / self.tp() } else { 2.0 };
        let e = &self.cm.train.stack.elementwise;
        let norm = 2.0 * h * b * e.norm;
        [norm, norm, 3.0 * h * b, 3.0 * h * b, 2.0 * qk * b * e.rotary, act * b * e.activation]
    }

    /// The FP8 recipe's scaling and casts for one layer's pass: every GEMM operand it quantises
    /// (forward: the input and the weight; backward: the output gradient, the forward's casts
    /// being kept), times the stack's bytes per element.
    fn fp8_cast_s(&self, pass: Pass) -> f64 {
        if self.cm.train.dtype != super::Dtype::Fp8 {
            return 0.0;
        }
        let elements: f64 = self
            .gemms()
            .iter()
            .map(|&(m, n, k)| match pass {
                Pass::Fwd => m * k + n * k,
                Pass::Bwd => m * n,
            })
            .sum();
        memory_time_s(self.cluster(), elements * self.cm.train.stack.precision.fp8_cast_bytes_per_element)
    }

    /// The GEMMs of one layer's pass, each priced by its own shape: the forward `(m, n, k)`; the
    /// backward's input gradient `(m, k, n)` (returned first) and weight gradient `(k, n, m)`,
    /// whose inner dimension is the tokens (second).
    fn gemm_times(&self, pass: Pass) -> (Vec<f64>, Vec<f64>) {
        let (c, dtype) = (self.cluster(), self.cm.train.dtype);
        let time = |shape: fn(GemmShape) -> GemmShape| -> Vec<f64> {
            self.gemms().iter().map(|&g| shape(g)).map(|(m, n, k)| gemm_time_s(c, dtype, m, n, k)).collect()
        };
        match pass {
            Pass::Fwd => (time(|g| g), Vec::new()),
            Pass::Bwd => (time(|(m, n, k)| (m, k, n)), time(|(m, n, k)| (k, n, m))),
        }
    }

    fn linear(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let c = self.cluster();
        // Forward: the four GEMMs; backward: their input gradients (the weight gradients below).
        let (gemm_times, wgrad_times) = self.gemm_times(pass);
        let gemm_s: f64 = gemm_times.iter().sum();
        let wgrad_s: f64 = wgrad_times.iter().sum();
        let gemm_flops: f64 = self.gemms().iter().map(|&(m, n, k)| 2.0 * m * n * k).sum();
        // Backward elementwise kernels read the gradient and the saved input and write one
        // gradient: about twice the forward's bytes.
        let elementwise_s: f64 = self
            .elementwise_ops()
            .iter()
            .map(|&bytes| memory_time_s(c, bytes * self.tokens * pass_factor(pass)))
            .sum::<f64>()
            + self.fp8_cast_s(pass);
        self.flops += f64::from(layers) * gemm_flops * pass_factor(pass);
        // With tensor-parallel communication overlap, each TP collective runs inside the GEMM
        // next to it (forward: QKV, output, MLP up, down; backward: their input-gradient GEMMs),
        // so those GEMMs leave the linear stage for the collectives' stages.
        let tp_overlap = self.cm.train.tp > 1 && self.cm.train.stack.overlap.tp_comm;
        let inner_gemm_s = if tp_overlap { 0.0 } else { gemm_s };
        let prefetch = self.cm.train.stack.overlap.zero3_prefetch;
        let p = pass_name(pass);
        match pass {
            Pass::Fwd => {
                let time = inner_gemm_s + elementwise_s;
                // ZeRO-3 gathers the layer's weights before each use (prefetched during the layer
                // before); with full checkpointing the recomputation's gather serves the backward.
                let gather = self.zero3_transfer(Collective::AllGather);
                self.stage(format!("{prefix}linear {p}"), Part::Linear, pass, layers, time, time, gather.map(|t| (t, prefetch)));
            }
            Pass::Bwd => {
                let dgrad = inner_gemm_s + elementwise_s;
                let gather = if self.cm.train.checkpointing == Checkpointing::Full {
                    None
                } else {
                    self.zero3_transfer(Collective::AllGather)
                };
                self.stage(format!("linear {p} dgrad"), Part::Linear, pass, layers, dgrad, dgrad, gather.map(|t| (t, prefetch)));
                // Gradients are reduce-scattered as they are produced under ZeRO 2 and 3.
                let reduce = self.zero_grad_transfer();
                self.stage(format!("linear {p} wgrad"), Part::Linear, pass, layers, wgrad_s, wgrad_s, reduce.map(|t| (t, true)));
            }
        }
        self.tensor_parallel(layers, pass, prefix, tp_overlap.then_some(&gemm_times[..]));
    }

    /// The selective policy recomputes the MLP activation in the backward pass.
    fn activation_recompute(&mut self, layers: u32) {
        let bytes = self.elementwise_ops()[5] * self.tokens;
        let time = memory_time_s(self.cluster(), bytes);
        self.stage("recompute activation fwd".into(), Part::Linear, Pass::Fwd, layers, time, time, None);
    }

    /// A collective over every data-parallel rank of the cluster (ZeRO's parameter and gradient
    /// traffic) of one layer's weights: in bf16 (gathers), or gradients at the stack's reduction
    /// precision (reduce-scatters).
    fn data_parallel_transfer(&self, collective: Collective) -> Transfer {
        let c = self.cluster();
        let tp = self.cm.train.tp;
        let gpus = self.cm.data_parallel_gpus();
        let ranks = (gpus / tp).max(1);
        let bytes_per_param = match collective {
            Collective::ReduceScatter | Collective::AllReduce => self.cm.train.stack.precision.grad_reduce_bytes,
            _ => 2.0,
        };
        let bytes = bytes_per_param * self.model().layer_params() as f64 / f64::from(tp);
        Transfer::new(collective, ranks, gpus.div_ceil(c.gpus_per_node), bytes)
    }

    fn zero3_transfer(&self, collective: Collective) -> Option<Transfer> {
        (self.scope == Scope::Step && self.cm.train.zero >= 3).then(|| self.data_parallel_transfer(collective))
    }

    fn zero_grad_transfer(&self) -> Option<Transfer> {
        (self.scope == Scope::Step && self.cm.train.zero >= 2).then(|| self.data_parallel_transfer(Collective::ReduceScatter))
    }

    /// Megatron sequence parallelism inside a TP group: all-gather before and reduce-scatter
    /// after the attention and the MLP blocks (two of each per layer and pass); without sequence
    /// parallelism, one all-reduce after each block (two per layer and pass). Exposed, unless
    /// `overlap_gemms` gives the GEMMs (QKV, output, MLP up, down) the collectives run inside:
    /// then each collective's stage takes its GEMM as compute.
    fn tensor_parallel(&mut self, layers: u32, pass: Pass, prefix: &str, overlap_gemms: Option<&[f64]>) {
        let tp = self.cm.train.tp;
        if tp <= 1 {
            return;
        }
        let bytes = self.tokens * f64::from(self.model().hidden) * 2.0;
        // Tensor parallelism may cross nodes (whole nodes): its collectives then use the network.
        let tp_nodes = tp.div_ceil(self.cluster().gpus_per_node);
        let p = pass_name(pass);
        if let Some(gemms) = overlap_gemms {
            // Per block: the all-gather beside the block's first GEMM, the reduce-scatter beside
            // its last (without sequence parallelism, the all-reduce beside the last).
            let pairs: Vec<(Collective, f64)> = if self.cm.train.sequence_parallel {
                vec![
                    (Collective::AllGather, gemms[0]),
                    (Collective::ReduceScatter, gemms[1]),
                    (Collective::AllGather, gemms[2]),
                    (Collective::ReduceScatter, gemms[3]),
                ]
            } else {
                vec![(Collective::AllReduce, gemms[0] + gemms[1]), (Collective::AllReduce, gemms[2] + gemms[3])]
            };
            for (collective, gemm_s) in pairs {
                let t = Transfer::new(collective, tp, tp_nodes, bytes);
                let label = format!("{prefix}tp {} {p} overlapped", collective.name());
                self.stage(label, Part::Linear, pass, layers, gemm_s, gemm_s, Some((t, true)));
            }
            return;
        }
        let collectives: &[Collective] = if self.cm.train.sequence_parallel {
            &[Collective::AllGather, Collective::ReduceScatter]
        } else {
            &[Collective::AllReduce]
        };
        for &collective in collectives {
            let t = Transfer::new(collective, tp, tp_nodes, bytes);
            let label = format!("{prefix}tp {} {p}", collective.name());
            self.stage(label, Part::Linear, pass, 2 * layers, 0.0, 0.0, Some((t, false)));
        }
    }

    /// Bytes per token of `heads` attention heads' worth of head_dim vectors (bf16).
    fn head_bytes(&self, heads: f64) -> f64 {
        heads * self.head_dim() * 2.0
    }

    /// Heads moved by the Q/K/V all-to-all over all `ulysses` ranks: query heads plus key and
    /// value heads, replicated up to the degree when there are fewer KV heads than ranks.
    fn qkv_heads_total(&self) -> f64 {
        let (q, kv) = self.qkv_heads_split();
        q + 2.0 * kv
    }

    /// (query heads, key/value heads) the Q/K/V all-to-all moves over the Ulysses ranks.
    fn qkv_heads_split(&self) -> (f64, f64) {
        let m = self.model();
        let u = self.shape.ulysses;
        let tp = self.tp();
        (f64::from(m.heads) / tp, f64::from(m.kv_heads.max(u)) / tp)
    }

    /// The Ulysses all-to-alls of one attention pass, in order: each tensor is permuted into a
    /// contiguous send buffer, exchanged, and permuted back (two memory-bound copies around the
    /// collective, 4 bytes of HBM traffic per byte sent). `into_heads` is the sequence-to-head
    /// direction.
    fn ulysses_all_to_all(&mut self, layers: u32, pass: Pass, prefix: &str, into_heads: bool) {
        let u = self.shape.ulysses;
        if u <= 1 {
            return;
        }
        let (q_heads, kv_heads) = self.qkv_heads_split();
        // Forward: Q, K, V into heads, the output back. Backward: the output's gradient into
        // heads, the Q, K, V gradients back.
        let qkv_side = matches!((pass, into_heads), (Pass::Fwd, true) | (Pass::Bwd, false));
        let tensors: Vec<(&str, f64)> = if !qkv_side {
            vec![("out", q_heads)]
        } else if self.cm.train.qkv_packed {
            vec![("qkv", q_heads + 2.0 * kv_heads)]
        } else {
            vec![("q", q_heads), ("k", kv_heads), ("v", kv_heads)]
        };
        let gpn = self.cluster().gpus_per_node;
        let span = u * self.cm.train.tp;
        let nodes = span.div_ceil(gpn);
        let direction = if into_heads { "in" } else { "out" };
        for (name, heads) in tensors {
            // Each rank's send buffer: its tokens for all `heads` heads (nccl-tests' all-to-all size).
            let bytes = self.tokens * self.head_bytes(heads);
            let copies = 2.0 * memory_time_s(self.cluster(), 2.0 * bytes);
            let t = Transfer::new(Collective::AllToAll, u, nodes, bytes).with_network_senders(span.div_ceil(nodes));
            let label = format!("{prefix}ulysses all_to_all {direction} {name} {}", pass_name(pass));
            self.stage(label, Part::Attention, pass, layers, copies, copies, Some((t, false)));
        }
    }

    fn attention_block(&mut self, layers: u32, pass: Pass, prefix: &str) {
        self.ulysses_all_to_all(layers, pass, prefix, true);
        self.attention(layers, pass, prefix);
        self.ulysses_all_to_all(layers, pass, prefix, false);
    }

    fn attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        if self.shape.ring <= 1 {
            return self.attention_compute(layers, pass, prefix);
        }
        match self.shape.scheme {
            Scheme::Allgather => self.allgather_attention(layers, pass, prefix),
            Scheme::DoubleRing => self.double_ring_attention(layers, pass, prefix),
            _ => self.ring_attention(layers, pass, prefix),
        }
    }

    /// One attention kernel call's time: the tile model for `tiles` tiles led by `lead` blocks.
    fn kernel_s(&self, pass: Pass, tiles: f64, lead: f64, causal: bool) -> f64 {
        if tiles <= 0.0 {
            return 0.0;
        }
        let model = self.cm.attention.pass(pass);
        model.time_s(self.head_dim(), self.heads, tiles, lead, causal).max(launch_s(self.cluster()))
    }

    /// Kernel time at ring step (query slot i, key slot j).
    fn block_s(&self, pass: Pass, i: usize, j: usize) -> f64 {
        let lead = match pass {
            Pass::Fwd => self.work.q_tiles[i][j],
            Pass::Bwd => self.work.k_tiles[i][j],
        };
        self.kernel_s(pass, self.work.tiles[i][j], lead, self.work.causal[i][j])
    }

    /// Attention FLOPs of the slot with the most pairs (counted as FlashAttention counts them).
    fn attention_flops(&self, pass: Pass) -> f64 {
        let pairs = self.work.pairs.iter().map(|row| row.iter().sum::<f64>()).fold(0.0, f64::max);
        pairs * self.heads * flops_per_pair(pass, self.head_dim())
    }

    /// Attention with no SP traffic: every slot's queries against every key it holds (one kernel;
    /// with ring = 1 the only slot holds everything).
    fn attention_compute(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let per_slot: Vec<f64> = (0..r)
            .map(|i| {
                let tiles: f64 = self.work.tiles[i].iter().sum();
                let lead = match pass {
                    Pass::Fwd => self.work.q_tiles_any[i],
                    Pass::Bwd => self.work.k_tiles[i].iter().sum(),
                };
                let kernel = self.kernel_s(pass, tiles, lead, self.work.causal[i].iter().any(|&c| c));
                let keys: f64 = self.work.k_rows[i].iter().sum();
                kernel + self.gqa_reduction_s(pass, keys)
            })
            .collect();
        self.flops += f64::from(layers) * self.attention_flops(pass);
        let (max, mean) = max_mean(&per_slot);
        self.stage(format!("{prefix}attention {}", pass_name(pass)), Part::Attention, pass, layers, max, mean, None);
    }

    /// FlashAttention-2's backward under grouped-query attention (csrc/flash_attn/flash_api.cpp,
    /// `mha_bwd` and `mha_varlen_bwd`): the kernel writes dK and dV per query head into
    /// `dk_expanded` and `dv_expanded` (keys x heads x head_dim, in the inputs' bf16), then
    /// `at::sum_out` sums each group of heads / kv_heads query heads into its KV head: two
    /// reductions, each reading keys x heads x d and writing keys x kv_heads x d elements of 2
    /// bytes, for every kernel call (every ring step's call too; ring-flash-attention and USP call
    /// the same entry point). The kernel itself does what it does without GQA, per query head
    /// (the tile model prices `heads` heads), so GQA adds no FLOPs. Only FlashAttention-2 works
    /// this way; FlashAttention-3 and cuDNN handle the group inside their kernels (not checked
    /// against their source, nothing added for them).
    fn gqa_reduction_s(&self, pass: Pass, keys: f64) -> f64 {
        let grouped = self.heads > self.kv_heads + 1e-9;
        if pass != Pass::Bwd || !grouped || keys <= 0.0 || self.cm.attention.kernel != AttentionKernel::Fa2 {
            return 0.0;
        }
        let bytes = keys * (self.heads + self.kv_heads) * self.head_dim() * 2.0;
        2.0 * memory_time_s(self.cluster(), bytes)
    }

    /// Bytes of the K/V block one rank passes along the ring, for the tokens that travel:
    /// forward K and V (bf16); backward K and V (bf16) and the dK, dV accumulators, which travel
    /// in fp32 (ring-flash-attention, USP and Transformer Engine all accumulate them in fp32).
    fn ring_block_bytes(&self, pass: Pass) -> f64 {
        // After the all-to-all a rank holds its slot's every token for its share of the heads.
        let travelling = match self.shape.scheme {
            // Only split documents' pieces (and their padding) circulate.
            Scheme::Hsap => self.split_tokens_per_slot(),
            _ => self.slot_tokens(),
        };
        let bytes_per_element = match pass {
            Pass::Fwd => 2.0 * 2.0,
            Pass::Bwd => 2.0 * 2.0 + 2.0 * 4.0,
        };
        travelling * bytes_per_element * self.kv_heads * self.head_dim()
    }

    /// Tokens of split documents a slot holds (the largest over slots, padding included).
    fn split_tokens_per_slot(&self) -> f64 {
        self.layout
            .slots
            .iter()
            .map(|slot| {
                slot.pieces
                    .iter()
                    .zip(&slot.pad_after)
                    .filter(|(p, _)| self.layout.split.get(p.doc as usize).copied().unwrap_or(false))
                    .map(|(p, pad)| f64::from(p.len + pad))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
    }

    /// The running-softmax merge a ring step adds after its kernel, as the open-source ring
    /// implementations (ring-flash-attention, USP) write it in PyTorch, one elementwise kernel per
    /// operation. Forward, per output element of the rows that got work: the block output cast to
    /// fp32 (read 2, write 4), `out - block_out` (read 8, write 4), times the sigmoid of the
    /// log-sum-exp difference (read 4, write 4; the per-row factor is negligible) and `out - that`
    /// (read 8, write 4): 38 bytes; the log-sum-exp update, about 40 bytes per row and head; and
    /// when only part of the rows got work (zigzag's second half), the slice written back (8).
    /// Backward: `dq += dq_block` and `dk, dv += block` on fp32 accumulators (read 4 + 2, write 4).
    fn merge_s(&self, pass: Pass, i: usize, j: usize) -> f64 {
        let d = self.head_dim();
        let rows = self.work.q_rows[i][j];
        let bytes = match pass {
            Pass::Fwd => {
                let partial = rows + 0.5 < self.slot_real_tokens(i);
                let per_element = 38.0 + if partial { 8.0 } else { 0.0 };
                rows * self.heads * (per_element * d + 40.0)
            }
            Pass::Bwd => (rows * self.heads + 2.0 * self.work.k_rows[i][j] * self.kv_heads) * 10.0 * d,
        };
        memory_time_s(self.cluster(), bytes)
    }

    /// Real tokens of slot i.
    fn slot_real_tokens(&self, i: usize) -> f64 {
        self.layout.slots.get(i).map_or(0.0, |s| s.real_tokens() as f64)
    }

    /// Converting the accumulators to fp32 at the first step and back to bf16 after the last
    /// (read 2 write 4, then read 4 write 2: 12 bytes per element).
    fn accumulator_conversion_s(&self, pass: Pass) -> f64 {
        let heads = match pass {
            Pass::Fwd => self.heads,
            Pass::Bwd => self.heads + 2.0 * self.kv_heads,
        };
        memory_time_s(self.cluster(), self.slot_tokens() * heads * self.head_dim() * 12.0)
    }

    /// Tokens of one slot: what each of its ranks computes attention over after the all-to-all.
    fn slot_tokens(&self) -> f64 {
        self.tokens * f64::from(self.shape.ulysses)
    }

    /// Step `j`'s compute on every slot (queries of slot i against keys of slot i - j): kernel
    /// plus the softmax merge, max and mean over slots.
    fn step_times(&self, pass: Pass, j: usize) -> (f64, f64) {
        let r = self.shape.ring as usize;
        let times: Vec<f64> = (0..r)
            .map(|i| {
                let k = (i + r - j) % r;
                let kernel = self.block_s(pass, i, k);
                if kernel == 0.0 {
                    return 0.0;
                }
                let kernel = kernel + self.gqa_reduction_s(pass, self.work.k_rows[i][k]);
                // The first step writes the accumulators; later ones merge into them.
                if j == 0 {
                    kernel
                } else {
                    kernel + self.merge_s(pass, i, k)
                }
            })
            .collect();
        max_mean(&times)
    }

    /// A ring hop: at a node's edge the `ulysses` x `tp` ranks of one slot send across together.
    fn ring_transfer(&self, pass: Pass, ranks: u32, nodes: u32) -> Transfer {
        Transfer::new(Collective::SendRecv, ranks, nodes, self.ring_block_bytes(pass))
            .with_network_senders(self.shape.ulysses * self.cm.train.tp)
    }

    fn ring_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let transfer = self.ring_transfer(pass, self.shape.ring, self.nodes);
        let p = pass_name(pass);
        self.flops += f64::from(layers) * self.attention_flops(pass);
        let conversion = self.accumulator_conversion_s(pass);
        for j in 0..r {
            let (mut max, mut mean) = self.step_times(pass, j);
            if j + 1 == r {
                max += conversion;
                mean += conversion;
            }
            // The block for step j + 1 travels while step j computes; the last step sends nothing.
            let sends = j + 1 < r && transfer.bytes > 0.0;
            if !sends && max == 0.0 {
                continue;
            }
            let label = format!("{prefix}ring step {j} {p}");
            self.stage(label, Part::Attention, pass, layers, max, mean, sends.then_some((transfer, true)));
        }
    }

    /// Double ring: the inner ring runs over the slots of one node, its transfers inside the node;
    /// each round's hop to the next node overlaps the whole round.
    fn double_ring_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let gpn = self.cluster().gpus_per_node;
        let inner = ((gpn / (self.shape.ulysses * self.cm.train.tp)).max(1) as usize).min(r);
        if inner >= r || self.nodes <= 1 {
            return self.ring_attention(layers, pass, prefix);
        }
        let outer = r / inner;
        let inner_t = self.ring_transfer(pass, inner as u32, 1);
        let inner_s = comm::time_s(self.cluster(), &inner_t);
        let outer_t = self.ring_transfer(pass, self.shape.ring, self.nodes);
        let p = pass_name(pass);
        self.flops += f64::from(layers) * self.attention_flops(pass);
        let conversion = self.accumulator_conversion_s(pass);
        for round in 0..outer {
            let (mut max, mut mean) = (0.0, 0.0);
            for k in 0..inner {
                let (step_max, step_mean) = self.step_times(pass, round * inner + k);
                let hop = if k + 1 < inner { inner_s } else { 0.0 };
                max += step_max.max(hop);
                mean += step_mean;
            }
            if round + 1 == outer {
                max += conversion;
                mean += conversion;
            }
            let sends = round + 1 < outer && outer_t.bytes > 0.0;
            let label = format!("{prefix}double ring round {round} {p}");
            self.stage(label, Part::Attention, pass, layers, max, mean, sends.then_some((outer_t, true)));
        }
    }

    /// All-gather K and V over the ring dimension (gradients reduce-scattered in the backward),
    /// then each slot's queries against all keys in one kernel.
    fn allgather_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring;
        // The gathered K and V of every slot, for this rank's share of the KV heads.
        let gathered = f64::from(r) * self.slot_tokens() * 2.0 * self.head_bytes(self.kv_heads);
        let collective = match pass {
            Pass::Fwd => Collective::AllGather,
            Pass::Bwd => Collective::ReduceScatter,
        };
        let t = Transfer::new(collective, r, self.nodes, gathered).with_network_senders(self.shape.ulysses * self.cm.train.tp);
        let p = pass_name(pass);
        if pass == Pass::Fwd {
            self.stage(format!("{prefix}allgather kv {p}"), Part::Attention, pass, layers, 0.0, 0.0, Some((t, false)));
        }
        self.attention_compute(layers, pass, prefix);
        if pass == Pass::Bwd {
            self.stage(format!("{prefix}reduce_scatter dkv {p}"), Part::Attention, pass, layers, 0.0, 0.0, Some((t, false)));
        }
    }

    /// Output projection and loss, once per micro-batch: the LM head GEMM and the cross-entropy
    /// over the logits (memory-bound: the stack's bytes per logit, each pass).
    fn head(&mut self) {
        let cm = self.cm;
        let m = &cm.model;
        let (t, h, v) = (self.tokens, f64::from(m.hidden), f64::from(m.vocab) / self.tp());
        let (c, dtype) = (&cm.cluster, cm.train.dtype);
        let loss_s = memory_time_s(c, t * v * cm.train.stack.elementwise.loss_bytes_per_logit);
        let fwd = gemm_time_s(c, dtype, t, v, h) + loss_s;
        self.flops += 2.0 * t * v * h;
        self.stage("lm head fwd".into(), Part::Head, Pass::Fwd, 1, fwd, fwd, None);
        if self.cm.train.backward {
            // The input gradient (t x h from t x v) and the weight gradient (v x h over t tokens).
            let bwd = gemm_time_s(c, dtype, t, h, v) + gemm_time_s(c, dtype, v, h, t) + loss_s;
            self.flops += 4.0 * t * v * h;
            self.stage("lm head bwd".into(), Part::Head, Pass::Bwd, 1, bwd, bwd, None);
        }
    }

    /// Model FLOPs of the group's real tokens spread over its GPUs: GEMMs of every real token
    /// (forward 2 x params, backward twice that), attention pairs (FlashAttention's count), LM head.
    fn model_flops_per_gpu(&self) -> f64 {
        let m = self.model();
        let real: f64 = self.layout.docs.iter().map(|&d| f64::from(d)).sum();
        let pairs: f64 = self.work.pairs.iter().flatten().sum();
        let passes = if self.cm.train.backward { 3.0 } else { 1.0 };
        let d = f64::from(m.head_dim);
        let attention_passes = if self.cm.train.backward { 3.5 } else { 1.0 };
        let layers = match self.scope {
            Scope::Step => f64::from(m.layers),
            _ => 1.0,
        };
        let linear = match self.scope {
            Scope::Attention => 0.0,
            _ => 2.0 * m.layer_params() as f64 * real * passes,
        };
        let attention = pairs * f64::from(m.heads) * 4.0 * d * attention_passes;
        let head = match self.scope {
            Scope::Step => 2.0 * f64::from(m.vocab) * f64::from(m.hidden) * real * passes,
            _ => 0.0,
        };
        let gpus = f64::from(self.shape.size() * self.cm.train.tp);
        (layers * (linear + attention) + head) / gpus
    }

    /// Peak memory of the most loaded rank for the scope: model states, kept activations of every
    /// layer, the working layer's full activations, logits, and the scheme's buffers.
    fn memory(&self) -> MemoryBreakdown {
        let m = self.model();
        let cm = self.cm;
        let tp = self.tp();
        let buffers_bytes = self.scheme_buffer_bytes();
        match self.scope {
            Scope::Attention => {
                // Q, K, V, the output and the log-sum-exp of the rank's tokens.
                let q = f64::from(m.heads * m.head_dim);
                let kv = f64::from(m.kv_heads * m.head_dim);
                let per_token = 2.0 * (2.0 * q + 2.0 * kv) + 4.0 * f64::from(m.heads);
                MemoryBreakdown {
                    activations_bytes: self.tokens * per_token / tp,
                    buffers_bytes,
                    ..MemoryBreakdown::default()
                }
            }
            Scope::Layer => {
                let states = model_state_bytes(m, &cm.train, (cm.data_parallel_gpus() / cm.train.tp).max(1));
                MemoryBreakdown {
                    model_states_bytes: states * m.layer_params() as f64 / m.params().max(1) as f64,
                    activations_bytes: self.tokens * layer_activation_bytes_per_token(m) / tp,
                    buffers_bytes,
                    ..MemoryBreakdown::default()
                }
            }
            Scope::Step => {
                let layers = f64::from(m.layers);
                let policy = if cm.train.backward { cm.train.checkpointing } else { Checkpointing::Full };
                let kept = self.tokens * layers * kept_bytes_per_token_layer(m, policy) / tp;
                let working = self.tokens * layer_activation_bytes_per_token(m) / tp;
                MemoryBreakdown {
                    model_states_bytes: cm.static_memory_bytes(cm.data_parallel_gpus()),
                    activations_bytes: kept + working,
                    logits_bytes: self.tokens * logits_bytes_per_token(m, cm.train.tp),
                    buffers_bytes,
                }
            }
        }
    }

    fn scheme_buffer_bytes(&self) -> f64 {
        let u = f64::from(self.shape.ulysses);
        // Send and receive buffers of the Q/K/V all-to-all.
        let a2a = if u > 1.0 { 2.0 * self.tokens * self.head_bytes(self.qkv_heads_total()) } else { 0.0 };
        let d = self.head_dim();
        let ring = match (self.shape.scheme, self.shape.ring) {
            (_, 1) => 0.0,
            (Scheme::Allgather, r) => f64::from(r) * self.slot_tokens() * 2.0 * self.head_bytes(self.kv_heads),
            // Double buffering (the block in use and the one arriving: K, V and, backward, their
            // gradients), and the fp32 accumulators of the output (forward) or of dQ, dK, dV.
            _ => {
                let accumulators = self.slot_tokens() * (self.heads + 2.0 * self.kv_heads) * d * 4.0;
                2.0 * self.ring_block_bytes(Pass::Bwd) + accumulators
            }
        };
        a2a + ring
    }
}

fn max_mean(times: &[f64]) -> (f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0);
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    (max, times.iter().sum::<f64>() / times.len() as f64)
}
