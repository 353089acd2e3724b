//! Building a group's stage program from its scheme and layout, and evaluating it in isolation.

use super::comm::{self, Transfer};
use super::compute::{attention_time_s, gemm_time_s, Pass};
use super::memory::{kept_bytes_per_token_layer, layer_activation_bytes_per_token, Checkpointing};
use super::pairs::{slot_work, SlotWork};
use super::{CommCost, CostModel, GroupCost};
use crate::cluster::{Cluster, Collective};
use crate::model::{Mlp, ModelShape};
use crate::scheme::{layout, GroupLayout, GroupShape, Scheme};
use serde::{Deserialize, Serialize};

/// Which part of the model a stage belongs to (`predict`'s scopes select by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Attention core and its SP communication.
    Attention,
    /// The layer's GEMMs and tensor-parallel communication.
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
    /// The transfer runs alongside the compute (ring attention) rather than before it.
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
    pub memory_bytes: f64,
    pub flops_per_gpu: f64,
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
            flops_per_gpu: self.flops_per_gpu,
        }
    }
}

/// GEMM work of one token in one layer, in attention (query, key) pairs of the same FLOPs:
/// 2 x layer parameters against 4 x heads x head_dim per pair.
pub fn linear_weight(model: &ModelShape) -> f64 {
    2.0 * model.layer_params() as f64 / (4.0 * f64::from(model.heads * model.head_dim))
}

/// Everything about the group that the stages are built from.
struct Ctx<'a> {
    cm: &'a CostModel,
    shape: GroupShape,
    layout: GroupLayout,
    work: SlotWork,
    /// Tokens each rank holds (padded slot length / ulysses).
    tokens: f64,
    nodes: u32,
    heads: f64,
    kv_heads: f64,
    stages: Vec<Stage>,
    flops: f64,
}

pub fn build(cm: &CostModel, shape: &GroupShape, docs: &[u32]) -> Program {
    let layout = layout(shape, docs, &cm.hsap_params());
    let work = slot_work(&layout);
    let rank0 = &layout.ranks[0];
    let tp = f64::from(cm.train.tp);
    let mut ctx = Ctx {
        cm,
        shape: *shape,
        tokens: rank0.real_tokens() as f64 + f64::from(rank0.padding),
        nodes: shape.nodes(cm.cluster.gpus_per_node),
        heads: f64::from(cm.model.heads) / f64::from(shape.ulysses) / tp,
        kv_heads: f64::from(shape.kv_heads_per_rank(&cm.model)) / tp,
        layout,
        work,
        stages: Vec::new(),
        flops: 0.0,
    };
    let layers = cm.model.layers;
    ctx.forward_layer(layers, "");
    if cm.train.backward {
        match cm.train.checkpointing {
            Checkpointing::Full => ctx.forward_layer(layers, RECOMPUTE),
            Checkpointing::Selective => ctx.attention_compute_only(layers, Pass::Fwd, RECOMPUTE),
            Checkpointing::None => {}
        }
        ctx.backward_layer(layers);
    }
    ctx.head();
    let memory_bytes = ctx.memory_bytes();
    Program {
        shape: *shape,
        stages: ctx.stages,
        memory_bytes,
        flops_per_gpu: ctx.flops,
    }
}

impl Ctx<'_> {
    fn model(&self) -> &ModelShape {
        &self.cm.model
    }

    fn cluster(&self) -> &Cluster {
        &self.cm.cluster
    }

    fn push(&mut self, stage: Stage) {
        self.stages.push(stage);
    }

    fn compute_stage(&mut self, label: String, part: Part, pass: Pass, repeat: u32, max_s: f64, mean_s: f64) {
        self.push(Stage {
            label,
            part,
            pass,
            repeat,
            compute_s: max_s,
            mean_compute_s: mean_s,
            transfer: None,
            transfer_s: 0.0,
            overlapped: false,
        });
    }

    fn transfer_stage(&mut self, label: String, part: Part, pass: Pass, repeat: u32, t: Transfer) {
        let transfer_s = comm::time_s(self.cluster(), &t);
        self.push(Stage {
            label,
            part,
            pass,
            repeat,
            compute_s: 0.0,
            mean_compute_s: 0.0,
            transfer: Some(t),
            transfer_s,
            overlapped: false,
        });
    }

    /// GEMMs of one layer for this rank's tokens: (m, n, k) of QKV, output, MLP up and down.
    fn gemms(&self) -> [(f64, f64, f64); 4] {
        let m = self.model();
        let tp = f64::from(self.cm.train.tp);
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

    fn linear(&mut self, repeat: u32, pass: Pass, prefix: &str) {
        // Backward runs two GEMMs (input and weight gradients) of the forward's size.
        let factor = match pass {
            Pass::Fwd => 1.0,
            Pass::Bwd => 2.0,
        };
        let (c, dtype) = (self.cluster(), self.cm.train.dtype);
        let time: f64 = self.gemms().iter().map(|&(m, n, k)| factor * gemm_time_s(c, dtype, m, n, k)).sum();
        let flops: f64 = self.gemms().iter().map(|&(m, n, k)| factor * 2.0 * m * n * k).sum();
        self.flops += f64::from(repeat) * flops;
        self.compute_stage(format!("{prefix}linear {}", pass_name(pass)), Part::Linear, pass, repeat, time, time);
        self.tensor_parallel(repeat, pass, prefix);
    }

    /// Megatron sequence parallelism inside a TP group: all-gather before and reduce-scatter
    /// after the attention and the MLP blocks (two of each per layer and pass).
    fn tensor_parallel(&mut self, repeat: u32, pass: Pass, prefix: &str) {
        let tp = self.cm.train.tp;
        if tp <= 1 {
            return;
        }
        let bytes = self.tokens * f64::from(self.model().hidden) * 2.0;
        for collective in [Collective::AllGather, Collective::ReduceScatter] {
            let t = Transfer::new(collective, tp, 1, bytes);
            self.transfer_stage(format!("{prefix}tp {}", collective.name()), Part::Linear, pass, 2 * repeat, t);
        }
    }

    /// Bytes per token of `heads` attention heads' worth of head_dim vectors (bf16).
    fn head_bytes(&self, heads: f64) -> f64 {
        heads * f64::from(self.model().head_dim) * 2.0
    }

    /// The Ulysses all-to-all over the `ulysses` ranks of each slot, carrying `heads` heads in all.
    fn ulysses_a2a(&mut self, repeat: u32, pass: Pass, label: String, heads: f64) {
        let u = self.shape.ulysses;
        if u <= 1 {
            return;
        }
        let gpn = self.cluster().gpus_per_node;
        let nodes = u.div_ceil(gpn);
        // Each rank's send buffer: its tokens for all `heads` heads (nccl-tests' all-to-all size).
        let bytes = self.tokens * self.head_bytes(heads);
        let t = Transfer::new(Collective::AllToAll, u, nodes, bytes);
        self.transfer_stage(label, Part::Attention, pass, repeat, t);
    }

    /// Heads moved by the Q/K/V all-to-all over all `ulysses` ranks: query heads plus key and value
    /// heads, replicated up to the degree when there are fewer KV heads than ranks.
    fn qkv_heads_total(&self) -> f64 {
        let m = self.model();
        let u = self.shape.ulysses;
        f64::from(m.heads + 2 * m.kv_heads.max(u)) / f64::from(self.cm.train.tp)
    }

    fn attention_time(&self, pass: Pass, i: usize, j: usize) -> f64 {
        let len = self.work.block_len[i][j];
        attention_time_s(
            self.cluster(),
            self.cm.train.dtype,
            pass,
            self.heads,
            f64::from(self.model().head_dim),
            self.work.pairs[i][j],
            len,
            len,
        )
    }

    fn attention_flops(&self, pass: Pass, pairs: f64) -> f64 {
        let factor = match pass {
            Pass::Fwd => 1.0,
            Pass::Bwd => 2.5,
        };
        4.0 * pairs * self.heads * f64::from(self.model().head_dim) * factor
    }

    fn forward_layer(&mut self, layers: u32, prefix: &str) {
        self.linear_and_attention(layers, Pass::Fwd, prefix);
    }

    fn backward_layer(&mut self, layers: u32) {
        self.linear_and_attention(layers, Pass::Bwd, "");
    }

    fn linear_and_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let qkv_heads = self.qkv_heads_total();
        let out_heads = f64::from(self.model().heads) / f64::from(self.cm.train.tp);
        let p = pass_name(pass);
        // Forward: QKV shards to head shards, attention, output back. Backward: the output
        // gradient first, then the Q/K/V gradients back.
        let (first, second) = match pass {
            Pass::Fwd => (qkv_heads, out_heads),
            Pass::Bwd => (out_heads, qkv_heads),
        };
        self.linear(layers, pass, prefix);
        self.ulysses_a2a(layers, pass, format!("{prefix}ulysses all_to_all in {p}"), first);
        self.attention(layers, pass, prefix);
        self.ulysses_a2a(layers, pass, format!("{prefix}ulysses all_to_all out {p}"), second);
    }

    /// Bytes of the K/V block one rank passes along the ring (K and V, forward; K, V and their
    /// gradients, backward), for the tokens that travel.
    fn ring_block_bytes(&self, pass: Pass) -> f64 {
        let travelling = match self.shape.scheme {
            // Only split documents' pieces (and their padding) circulate.
            Scheme::Hsap => self.split_tokens_per_rank(),
            _ => self.tokens,
        };
        let tensors = match pass {
            Pass::Fwd => 2.0,
            Pass::Bwd => 4.0,
        };
        travelling * tensors * self.head_bytes(self.kv_heads)
    }

    /// Tokens of split documents one rank holds (the largest over slots, padding included).
    fn split_tokens_per_rank(&self) -> f64 {
        let u = f64::from(self.shape.ulysses);
        self.layout
            .slots
            .iter()
            .map(|slot| {
                slot.pieces
                    .iter()
                    .zip(&slot.pad_after)
                    .filter(|(p, _)| self.layout.split[p.doc as usize])
                    .map(|(p, pad)| f64::from(p.len + pad))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
            / u
    }

    fn attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        if r == 1 {
            return self.attention_compute_only(layers, pass, prefix);
        }
        match self.shape.scheme {
            Scheme::Allgather => self.allgather_attention(layers, pass, prefix),
            Scheme::DoubleRing => self.double_ring_attention(layers, pass, prefix),
            _ => self.ring_attention(layers, pass, prefix),
        }
    }

    /// Attention with no SP traffic: every slot's queries against every key it holds or receives.
    fn attention_compute_only(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let per_slot: Vec<f64> = (0..r).map(|i| (0..r).map(|j| self.attention_time(pass, i, j)).sum()).collect();
        let pairs: Vec<f64> = (0..r).map(|i| self.work.pairs[i].iter().sum()).collect();
        let max = per_slot.iter().copied().fold(0.0, f64::max);
        let mean = per_slot.iter().sum::<f64>() / r as f64;
        self.flops += f64::from(layers) * self.attention_flops(pass, pairs.iter().copied().fold(0.0, f64::max));
        self.compute_stage(format!("{prefix}attention {}", pass_name(pass)), Part::Attention, pass, layers, max, mean);
    }

    /// Step `j`'s compute on every slot: queries of slot i against keys of slot i - j.
    fn step_times(&self, pass: Pass, j: usize) -> (f64, f64) {
        let r = self.shape.ring as usize;
        let times: Vec<f64> = (0..r).map(|i| self.attention_time(pass, i, (i + r - j) % r)).collect();
        (times.iter().copied().fold(0.0, f64::max), times.iter().sum::<f64>() / r as f64)
    }

    /// A ring hop: at a node's edge only the `ulysses` ranks of one slot send across.
    fn ring_transfer(&self, pass: Pass, ranks: u32, nodes: u32) -> Transfer {
        Transfer::new(Collective::SendRecv, ranks, nodes, self.ring_block_bytes(pass))
            .with_network_senders(self.shape.ulysses)
    }

    fn ring_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let transfer = self.ring_transfer(pass, self.shape.ring, self.nodes);
        let p = pass_name(pass);
        let flops = self.attention_flops(pass, self.max_slot_pairs());
        self.flops += f64::from(layers) * flops;
        for j in 0..r {
            let (max, mean) = self.step_times(pass, j);
            // The block for step j + 1 travels while step j computes; the last step sends nothing.
            let sends = j + 1 < r && transfer.bytes > 0.0;
            let transfer_s = if sends { comm::time_s(self.cluster(), &transfer) } else { 0.0 };
            self.push(Stage {
                label: format!("{prefix}ring step {j} {p}"),
                part: Part::Attention,
                pass,
                repeat: layers,
                compute_s: max,
                mean_compute_s: mean,
                transfer: sends.then_some(transfer),
                transfer_s,
                overlapped: true,
            });
        }
    }

    fn max_slot_pairs(&self) -> f64 {
        self.work.pairs.iter().map(|row| row.iter().sum::<f64>()).fold(0.0, f64::max)
    }

    /// Double ring: the inner ring runs over the slots of one node, its transfers inside the node;
    /// each round's hop to the next node overlaps the whole round.
    fn double_ring_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let gpn = self.cluster().gpus_per_node;
        let inner = ((gpn / self.shape.ulysses).max(1) as usize).min(r);
        if inner >= r || self.nodes <= 1 {
            return self.ring_attention(layers, pass, prefix);
        }
        let outer = r / inner;
        let inner_t = self.ring_transfer(pass, inner as u32, 1);
        let inner_s = comm::time_s(self.cluster(), &inner_t);
        let outer_t = self.ring_transfer(pass, self.shape.ring, self.nodes);
        let p = pass_name(pass);
        self.flops += f64::from(layers) * self.attention_flops(pass, self.max_slot_pairs());
        for round in 0..outer {
            let (mut max, mut mean) = (0.0, 0.0);
            for k in 0..inner {
                let (step_max, step_mean) = self.step_times(pass, round * inner + k);
                let hop = if k + 1 < inner { inner_s } else { 0.0 };
                max += step_max.max(hop);
                mean += step_mean;
            }
            let sends = round + 1 < outer;
            let transfer_s = if sends { comm::time_s(self.cluster(), &outer_t) } else { 0.0 };
            self.push(Stage {
                label: format!("{prefix}double ring round {round} {p}"),
                part: Part::Attention,
                pass,
                repeat: layers,
                compute_s: max,
                mean_compute_s: mean,
                transfer: sends.then_some(outer_t),
                transfer_s,
                overlapped: true,
            });
        }
    }

    /// All-gather K and V over the ring dimension (gradients reduce-scattered in the backward),
    /// then each slot's queries against all keys.
    fn allgather_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring;
        let gathered = f64::from(r) * self.tokens * 2.0 * self.head_bytes(self.kv_heads);
        let collective = match pass {
            Pass::Fwd => Collective::AllGather,
            Pass::Bwd => Collective::ReduceScatter,
        };
        let t = Transfer::new(collective, r, self.nodes, gathered);
        let p = pass_name(pass);
        if pass == Pass::Fwd {
            self.transfer_stage(format!("{prefix}allgather kv {p}"), Part::Attention, pass, layers, t);
        }
        self.attention_compute_only(layers, pass, prefix);
        if pass == Pass::Bwd {
            self.transfer_stage(format!("{prefix}reduce_scatter dkv {p}"), Part::Attention, pass, layers, t);
        }
    }

    /// Output projection and loss, once per micro-batch.
    fn head(&mut self) {
        let m = self.model();
        let (t, h, v) = (self.tokens, f64::from(m.hidden), f64::from(m.vocab) / f64::from(self.cm.train.tp));
        let (c, dtype) = (self.cluster(), self.cm.train.dtype);
        let fwd = gemm_time_s(c, dtype, t, v, h);
        self.flops += 2.0 * t * v * h;
        self.compute_stage("lm head fwd".into(), Part::Head, Pass::Fwd, 1, fwd, fwd);
        if self.cm.train.backward {
            self.flops += 4.0 * t * v * h;
            self.compute_stage("lm head bwd".into(), Part::Head, Pass::Bwd, 1, 2.0 * fwd, 2.0 * fwd);
        }
    }

    /// Peak memory of a rank: model states, kept activations of every layer, the working layer's
    /// full activations, fp32 logits, and the scheme's communication buffers.
    fn memory_bytes(&self) -> f64 {
        let m = self.model();
        let cm = self.cm;
        let tp = f64::from(cm.train.tp);
        let layers = f64::from(m.layers);
        let states = cm.static_memory_bytes(cm.cluster.gpus());
        let policy = if cm.train.backward { cm.train.checkpointing } else { Checkpointing::Full };
        let kept = self.tokens * layers * kept_bytes_per_token_layer(m, policy) / tp;
        let working = self.tokens * layer_activation_bytes_per_token(m) / tp;
        let logits = self.tokens * f64::from(m.vocab) / tp * 4.0;
        states + kept + working + logits + self.scheme_buffer_bytes()
    }

    fn scheme_buffer_bytes(&self) -> f64 {
        let u = f64::from(self.shape.ulysses);
        // Send and receive buffers of the Q/K/V all-to-all.
        let a2a = if u > 1.0 { 2.0 * self.tokens * self.head_bytes(self.qkv_heads_total()) } else { 0.0 };
        let ring = match (self.shape.scheme, self.shape.ring) {
            (_, 1) => 0.0,
            (Scheme::Allgather, r) => f64::from(r) * self.tokens * 2.0 * self.head_bytes(self.kv_heads),
            // Double buffering: the block being used and the one arriving (K, V and gradients).
            _ => 2.0 * self.ring_block_bytes(Pass::Bwd),
        };
        a2a + ring
    }
}

fn pass_name(pass: Pass) -> &'static str {
    match pass {
        Pass::Fwd => "fwd",
        Pass::Bwd => "bwd",
    }
}
