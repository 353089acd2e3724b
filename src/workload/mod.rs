//! The work of one SP group's micro-batch, described once: its steps, each with the kernels every
//! rank runs (GEMMs with their shapes, memory-bound passes with their bytes, attention calls with
//! their tiles) and the collective it carries (group, nodes, bytes), and whether that collective
//! runs beside the step's compute or before it. Built from the scheme, the layout of the
//! documents, the training configuration (ZeRO stage, checkpointing, tensor parallelism) and the
//! stack; nothing here is a time.
//!
//! The cost model prices a workload (`cost::Program::price`); the simulator replays the priced
//! program with shared links; the validator (`gpu::schedule`) lays each rank's ops out from it.
//! docs/cost-model.md states every formula used here.

use crate::cluster::{Cluster, Collective};
use crate::cost::attention::{flops_per_pair, AttentionKernel};
use crate::cost::memory::{
    kept_bytes_per_token_layer, layer_activation_bytes_per_token, logits_bytes_per_token, model_state_bytes, Checkpointing,
    MemoryBreakdown,
};
use crate::cost::pairs::{slot_work, SlotWork};
use crate::cost::{CostModel, Dtype, Pass, Scope, Transfer};
use crate::model::{LayerKind, LinearAttention, LinearVariant, Mlp, ModelShape};
use crate::scheme::{layout, GroupLayout, GroupShape, HsapParams, Piece, RankShard, Run, Scheme, Slot};
use serde::{Deserialize, Serialize};

/// Which part of the model a step belongs to (`predict`'s scopes select by it).
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

/// The linear layer a GEMM belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Linear {
    QkvProj,
    OProj,
    MlpUp,
    MlpDown,
    LmHead,
    /// Linear attention's intra-chunk scores, `Q K^T` inside each chunk.
    ChunkScores,
    /// The masked scores times `V` inside each chunk.
    ChunkOutput,
    /// Each chunk's queries against the memory state before it, `Q M`.
    ChunkInter,
    /// Each chunk's contribution to the memory state, `K^T V`.
    ChunkState,
    /// Gated DeltaNet's WY representation inside each chunk (`K K^T`, `T K`, `T V`, `W M`).
    ChunkDelta,
}

impl Linear {
    /// A layer's linear layers in forward order.
    pub const LAYER: [Linear; 4] = [Linear::QkvProj, Linear::OProj, Linear::MlpUp, Linear::MlpDown];

    pub fn name(self) -> &'static str {
        match self {
            Linear::QkvProj => "qkv_proj",
            Linear::OProj => "o_proj",
            Linear::MlpUp => "mlp_up",
            Linear::MlpDown => "mlp_down",
            Linear::LmHead => "lm_head",
            Linear::ChunkScores => "chunk_scores",
            Linear::ChunkOutput => "chunk_output",
            Linear::ChunkInter => "chunk_inter",
            Linear::ChunkState => "chunk_state",
            Linear::ChunkDelta => "chunk_delta",
        }
    }
}

/// What a memory-bound pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    Norm,
    Residual,
    Rotary,
    Activation,
    Fp8Cast,
    Loss,
    /// The permutes around a Ulysses all-to-all.
    LayoutCopy,
    /// A ring step's softmax merge (forward) or query-gradient merge (backward).
    Merge,
    /// A ring step's key/value gradients added to the travelling ones (backward).
    KvGradMerge,
    /// Attention accumulators converted to fp32 and back.
    Conversion,
    /// FlashAttention-2's backward under grouped-query attention: the per-query-head key and
    /// value gradients summed into their KV heads.
    GqaReduction,
    /// Linear attention's per-chunk memory states, written by the inter-chunk scan and read
    /// by the inter-chunk products.
    StateScan,
    /// Memory states received from other ranks summed into the one a shard starts from.
    StateMerge,
    Optimizer,
}

impl Traffic {
    pub fn name(self) -> &'static str {
        match self {
            Traffic::Norm => "norm",
            Traffic::Residual => "residual",
            Traffic::Rotary => "rotary",
            Traffic::Activation => "activation",
            Traffic::Fp8Cast => "fp8_cast",
            Traffic::Loss => "loss",
            Traffic::LayoutCopy => "layout_copy",
            Traffic::Merge => "merge",
            Traffic::KvGradMerge => "kv_grad_merge",
            Traffic::Conversion => "conversion",
            Traffic::GqaReduction => "gqa_reduction",
            Traffic::StateScan => "state_scan",
            Traffic::StateMerge => "state_merge",
            Traffic::Optimizer => "optimizer",
        }
    }
}

/// One kernel a rank runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum Kernel {
    /// `[m, k] x [k, n]` in the training dtype, of `linear`.
    Gemm { linear: Linear, m: f64, n: f64, k: f64 },
    /// A memory-bound pass that reads and writes `bytes` in all.
    Memory { traffic: Traffic, bytes: f64 },
    /// A FlashAttention call: `tiles` tiles of `ATTENTION_TILE_TOKENS` a side with work, led by
    /// `lead` thread blocks (query tiles forward, key tiles backward), for `heads` heads;
    /// `causal` when a diagonal block is part of it.
    Attention { pass: Pass, heads: f64, head_dim: f64, tiles: f64, lead: f64, causal: bool },
}

impl Kernel {
    /// Whether the kernel has nothing to do (it is not launched).
    pub fn is_empty(&self) -> bool {
        match *self {
            Kernel::Gemm { m, n, k, .. } => m <= 0.0 || n <= 0.0 || k <= 0.0,
            Kernel::Memory { bytes, .. } => bytes <= 0.0,
            Kernel::Attention { tiles, .. } => tiles <= 0.0,
        }
    }
}

/// What the ranks of a group compute in one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compute {
    /// Each slot's kernels, in order (the ranks of a slot run alike); one list when every rank
    /// runs the same.
    Slots(Vec<Vec<Kernel>>),
    /// Steps in sequence inside this one (the double ring's inner ring within an outer round).
    Steps(Vec<Step>),
}

impl Compute {
    /// Every rank runs `kernels`.
    pub fn uniform(kernels: Vec<Kernel>) -> Compute {
        Compute::Slots(vec![kernels])
    }

    /// No compute: the step is its collective.
    pub fn idle() -> Compute {
        Compute::Slots(vec![Vec::new()])
    }

    /// The kernels slot `slot` runs, in order (inner steps flattened).
    pub fn kernels_of(&self, slot: usize) -> Vec<Kernel> {
        match self {
            Compute::Slots(slots) if slots.len() == 1 => slots[0].clone(),
            Compute::Slots(slots) => slots.get(slot).cloned().unwrap_or_default(),
            Compute::Steps(steps) => steps.iter().flat_map(|s| s.compute.kernels_of(slot)).collect(),
        }
    }
}

/// A unit of work every rank of the group runs in lock step, `repeat` times (layers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub label: String,
    pub part: Part,
    pub pass: Pass,
    pub repeat: u32,
    pub compute: Compute,
    pub transfer: Option<Transfer>,
    /// The transfer runs alongside the compute (ring attention, ZeRO-3 prefetch) rather than
    /// before it.
    pub overlapped: bool,
    /// The ring step whose key/value block this step's attention reads (ring and double ring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_step: Option<u32>,
}

/// A group's micro-batch: its steps, with its memory peak and FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub shape: GroupShape,
    /// What the workload covers: a whole step, one layer, or one attention block.
    pub scope: Scope,
    pub steps: Vec<Step>,
    /// Peak memory of the group's most loaded GPU.
    pub memory: MemoryBreakdown,
    /// FLOPs the most loaded GPU executes (padding and recomputation included).
    pub flops_per_gpu: f64,
    /// FLOPs of the model's work on the group's real tokens, per GPU of the group (no padding,
    /// no recomputation): what model FLOPs utilisation counts.
    pub model_flops_per_gpu: f64,
    /// Tokens (padding included) each GPU holds outside attention.
    pub tokens_per_gpu: f64,
}

/// What each of `elementwise_ops`' passes is.
const ELEMENTWISE: [Traffic; 6] = [Traffic::Norm, Traffic::Norm, Traffic::Residual, Traffic::Residual, Traffic::Rotary, Traffic::Activation];

/// Label prefix of recomputed forward steps.
pub const RECOMPUTE: &str = "recompute ";

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
pub type GemmShape = (f64, f64, f64);

/// GEMMs of one layer of `kind`'s forward on `tokens` tokens per GPU under tensor parallelism
/// `tp`: (m, n, k) of the mixer's input projections (QKV), its output, MLP up and down, in
/// [`Linear::LAYER`]'s order. The backward runs each as its input gradient `(m, k, n)` and weight
/// gradient `(k, n, m)` ([`pass_shapes`]). Calibration measures these shapes
/// (`gpu::cuda::MicrobenchPlan`).
pub fn layer_gemms(m: &ModelShape, kind: LayerKind, tokens: f64, tp: f64) -> [GemmShape; 4] {
    let (h, f) = (f64::from(m.hidden), f64::from(m.ffn));
    let (qkv, o) = m.mixer_widths(kind);
    let (qkv, o) = (qkv as f64, o as f64);
    let up = match m.mlp {
        Mlp::Gated => 2.0 * f,
        Mlp::Plain => f,
    };
    let t = tokens;
    [(t, qkv / tp, h), (t, h, o / tp), (t, up / tp, h), (t, h, f / tp)]
}

/// The three GEMMs a forward GEMM `(m, n, k)` brings to a training step: itself, its input
/// gradient and its weight gradient (whose inner dimension is the tokens).
pub fn pass_shapes((m, n, k): GemmShape) -> [GemmShape; 3] {
    [(m, n, k), (m, k, n), (k, n, m)]
}

/// Everything about the group that the stages are built from.
struct Ctx<'a> {
    cm: &'a CostModel,
    shape: GroupShape,
    layout: GroupLayout,
    work: SlotWork,
    /// Real tokens of each slot, summed once: a ring step's merge reads them for every pair of
    /// slots, and a slot of a large ring holds a piece of every document split across it.
    slot_real_tokens: Vec<f64>,
    scope: Scope,
    /// Tokens each rank holds (padded slot length / ulysses).
    tokens: f64,
    /// NVLink domains the group spans, tensor-parallel ranks included.
    nodes: u32,
    /// Query and key/value heads each rank computes attention for (after the all-to-all).
    heads: f64,
    kv_heads: f64,
    steps: Vec<Step>,
    flops: f64,
    /// The token mixer of the layers being built.
    kind: LayerKind,
}

/// Builds the workload of one group running `sequences` (each a packed list of document
/// lengths) as one micro-batch, for `scope`: the model and training configuration of `cm`
/// (its pricing is not used).
pub fn build(cm: &CostModel, shape: &GroupShape, sequences: &[Vec<u32>], scope: Scope) -> Workload {
    let mut ctx = context(cm, shape, sequences, scope);
    // A hybrid's layers of each kind run as one repeated step each; a one-layer scope prices a
    // layer of the model's more frequent kind.
    let kinds = match scope {
        Scope::Step => cm.model.kind_counts(),
        Scope::Layer | Scope::Attention => vec![(cm.model.dominant_kind(), 1)],
    };
    for &(kind, layers) in &kinds {
        ctx.kind = kind;
        ctx.layer(layers, Pass::Fwd, "");
    }
    if cm.train.backward {
        for &(kind, layers) in &kinds {
            ctx.kind = kind;
            match cm.train.checkpointing {
                Checkpointing::Full => ctx.layer(layers, Pass::Fwd, RECOMPUTE),
                Checkpointing::Selective => {
                    // The attention core is what is recomputed, its ring or gather included
                    // (Transformer Engine's context-parallel attention sits inside Megatron's
                    // recomputed core attention); the Ulysses all-to-alls around it are not.
                    ctx.attention(layers, Pass::Fwd, RECOMPUTE);
                    if scope != Scope::Attention {
                        ctx.activation_recompute(layers);
                    }
                }
                Checkpointing::None => {}
            }
        }
        for &(kind, layers) in kinds.iter().rev() {
            ctx.kind = kind;
            ctx.layer(layers, Pass::Bwd, "");
        }
    }
    if scope == Scope::Step {
        ctx.head();
    }
    let memory = ctx.memory();
    let model_flops_per_gpu = ctx.model_flops_per_gpu();
    Workload {
        shape: *shape,
        scope,
        memory,
        flops_per_gpu: ctx.flops,
        model_flops_per_gpu,
        tokens_per_gpu: ctx.tokens / f64::from(cm.train.tp),
        steps: ctx.steps,
    }
}

/// The peak memory of what [`build`] builds, without its steps: a group's memory follows from
/// its layout alone, and the planner bisects the longest document a shape holds with it.
pub fn memory(cm: &CostModel, shape: &GroupShape, sequences: &[Vec<u32>], scope: Scope) -> MemoryBreakdown {
    context(cm, shape, sequences, scope).memory()
}

/// The group laid out, with no steps yet.
fn context<'a>(cm: &'a CostModel, shape: &GroupShape, sequences: &[Vec<u32>], scope: Scope) -> Ctx<'a> {
    let layout = batch_layout(shape, sequences, &cm.hsap_params());
    let work = slot_work(&layout);
    let tp = f64::from(cm.train.tp);
    let slot_len = layout.slots.iter().map(Slot::len).max().unwrap_or(0) as f64;
    let gpus = shape.size() * cm.train.tp;
    Ctx {
        cm,
        shape: *shape,
        tokens: slot_len / f64::from(shape.ulysses.max(1)),
        nodes: gpus.div_ceil(cm.cluster.gpus_per_domain()),
        heads: f64::from(cm.model.heads) / f64::from(shape.ulysses) / tp,
        kv_heads: f64::from(shape.kv_heads_per_rank(&cm.model)) / tp,
        slot_real_tokens: layout.slots.iter().map(|s| s.real_tokens() as f64).collect(),
        layout,
        work,
        scope,
        steps: Vec::new(),
        flops: 0.0,
        kind: cm.model.dominant_kind(),
    }
}

fn pass_name(pass: Pass) -> &'static str {
    match pass {
        Pass::Fwd => "fwd",
        Pass::Bwd => "bwd",
    }
}

/// Which products of the chunked algorithm a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Each chunk's contribution to the state (`K^T V`; Gated DeltaNet's WY products with it);
    /// backward, the state's gradient from the output's (`Q^T dO`).
    State,
    /// The quadratic block inside each chunk.
    Intra,
    /// Each chunk against the state before it; backward, the query gradient through the state
    /// and the key and value gradients of the state's contribution.
    Inter,
}

/// A product every chunk of every head runs, `(a x b) . (b x c)`, as one batched GEMM of
/// `m = batch x a`.
#[derive(Debug, Clone, Copy)]
struct ChunkProduct {
    linear: Linear,
    a: f64,
    b: f64,
    c: f64,
}

impl ChunkProduct {
    fn forward(&self, batch: f64) -> Kernel {
        Kernel::Gemm { linear: self.linear, m: batch * self.a, n: self.c, k: self.b }
    }

    /// The gradients of its two operands: `dA = dY B^T` (a x c by c x b) and `dB = A^T dY`
    /// (b x a by a x c).
    fn gradients(&self, batch: f64) -> [Kernel; 2] {
        [
            Kernel::Gemm { linear: self.linear, m: batch * self.a, n: self.b, k: self.c },
            Kernel::Gemm { linear: self.linear, m: batch * self.b, n: self.c, k: self.a },
        ]
    }
}

/// The forward products of one chunk of `C` tokens and one head (docs/cost-model.md section
/// 2b): scores `Q K^T` (C x d_k by d_k x C), output `S V` (C x C by C x d_v), inter-chunk
/// `Q M` (C x d_k by d_k x d_v), state `K^T V` (d_k x C by C x d_v); Gated DeltaNet adds its WY
/// representation's `K K^T`, `T K`, `T V` and `W M` (arXiv 2412.06464, section 3.3; the
/// triangular solve for T, C^3 / 3 multiply-adds, is left out).
fn chunk_products(la: &LinearAttention) -> (Vec<ChunkProduct>, Vec<ChunkProduct>, Vec<ChunkProduct>) {
    let (c, k, v) = (f64::from(la.chunk), f64::from(la.key_dim), f64::from(la.value_dim));
    let product = |linear, a, b, c| ChunkProduct { linear, a, b, c };
    let mut state = vec![product(Linear::ChunkState, k, c, v)];
    if la.variant == LinearVariant::GatedDelta {
        state.extend([
            product(Linear::ChunkDelta, c, k, c),
            product(Linear::ChunkDelta, c, c, k),
            product(Linear::ChunkDelta, c, c, v),
            product(Linear::ChunkDelta, c, k, v),
        ]);
    }
    let intra = vec![product(Linear::ChunkScores, c, k, c), product(Linear::ChunkOutput, c, c, v)];
    let inter = vec![product(Linear::ChunkInter, c, k, v)];
    (state, intra, inter)
}

/// The kernels of `phase` for `batch` chunk-heads. Backward, the state phase is the inter
/// product's state gradient (`dM = Q^T dO`, what LASP sends), the inter phase its query
/// gradient and the state product's two gradients, and the intra phase its products' gradients.
fn chunk_kernels(la: &LinearAttention, batch: f64, pass: Pass, phase: Phase) -> Vec<Kernel> {
    if batch <= 0.0 {
        return Vec::new();
    }
    let (state, intra, inter) = chunk_products(la);
    match (pass, phase) {
        (Pass::Fwd, Phase::State) => state.iter().map(|p| p.forward(batch)).collect(),
        (Pass::Fwd, Phase::Intra) => intra.iter().map(|p| p.forward(batch)).collect(),
        (Pass::Fwd, Phase::Inter) => inter.iter().map(|p| p.forward(batch)).collect(),
        (Pass::Bwd, Phase::State) => inter.iter().map(|p| p.gradients(batch)[1]).collect(),
        (Pass::Bwd, Phase::Intra) => intra.iter().flat_map(|p| p.gradients(batch)).collect(),
        (Pass::Bwd, Phase::Inter) => {
            let dq = inter.iter().map(|p| p.gradients(batch)[0]);
            dq.chain(state.iter().flat_map(|p| p.gradients(batch))).collect()
        }
    }
}

/// FLOPs of one chunk of one head, forward (`factor` 1) or backward (2: each product's two
/// gradients): `2 C^2 (d_k + d_v) + 4 C d_k d_v` for basic and lightning attention.
pub fn chunk_flops_per_head(la: &LinearAttention, factor: f64) -> f64 {
    let (state, intra, inter) = chunk_products(la);
    factor * state.iter().chain(&intra).chain(&inter).map(|p| 2.0 * p.a * p.b * p.c).sum::<f64>()
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
    fn stage(&mut self, label: String, part: Part, pass: Pass, repeat: u32, compute: Compute, transfer: Option<(Transfer, bool)>) {
        let (transfer, overlapped) = match transfer {
            Some((t, overlapped)) => (Some(t), overlapped),
            None => (None, false),
        };
        self.steps.push(Step { label, part, pass, repeat, compute, transfer, overlapped, ring_step: None });
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

    /// GEMMs of one layer's forward for this rank's tokens: (m, n, k) of QKV, output, MLP up and
    /// down.
    fn gemms(&self) -> [GemmShape; 4] {
        layer_gemms(self.model(), self.kind, self.tokens, self.tp())
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
    fn fp8_cast(&self, pass: Pass) -> Option<Kernel> {
        if self.cm.train.dtype != Dtype::Fp8 {
            return None;
        }
        let elements: f64 = self
            .gemms()
            .iter()
            .map(|&(m, n, k)| match pass {
                Pass::Fwd => m * k + n * k,
                Pass::Bwd => m * n,
            })
            .sum();
        Some(Kernel::Memory { traffic: Traffic::Fp8Cast, bytes: elements * self.cm.train.stack.precision.fp8_cast_bytes_per_element })
    }

    /// The GEMMs of one layer's pass, each with its own shape: the forward `(m, n, k)`; the
    /// backward's input gradients `(m, k, n)` (returned first) and weight gradients `(k, n, m)`,
    /// whose inner dimension is the tokens (second).
    fn pass_gemms(&self, pass: Pass) -> (Vec<Kernel>, Vec<Kernel>) {
        let kernels = |shape: fn(GemmShape) -> GemmShape| -> Vec<Kernel> {
            Linear::LAYER
                .iter()
                .zip(self.gemms())
                .map(|(&linear, g)| {
                    let (m, n, k) = shape(g);
                    Kernel::Gemm { linear, m, n, k }
                })
                .collect()
        };
        match pass {
            Pass::Fwd => (kernels(|g| pass_shapes(g)[0]), Vec::new()),
            Pass::Bwd => (kernels(|g| pass_shapes(g)[1]), kernels(|g| pass_shapes(g)[2])),
        }
    }

    fn linear(&mut self, layers: u32, pass: Pass, prefix: &str) {
        // Forward: the four GEMMs; backward: their input gradients (the weight gradients below).
        let (gemms, wgrads) = self.pass_gemms(pass);
        let gemm_flops: f64 = self.gemms().iter().map(|&(m, n, k)| 2.0 * m * n * k).sum();
        // Backward elementwise kernels read the gradient and the saved input and write one
        // gradient: about twice the forward's bytes.
        let mut elementwise: Vec<Kernel> =
            ELEMENTWISE.iter().zip(self.elementwise_ops()).map(|(&traffic, bytes)| Kernel::Memory { traffic, bytes: bytes * self.tokens * pass_factor(pass) }).collect();
        elementwise.extend(self.fp8_cast(pass));
        self.flops += f64::from(layers) * gemm_flops * pass_factor(pass);
        // With tensor-parallel communication overlap, each TP collective runs inside the GEMM
        // next to it (forward: QKV, output, MLP up, down; backward: their input-gradient GEMMs),
        // so those GEMMs leave the linear stage for the collectives' stages.
        let tp_overlap = self.cm.train.tp > 1 && self.cm.train.stack.overlap.tp_comm;
        let mut inner = if tp_overlap { Vec::new() } else { gemms.clone() };
        inner.extend(elementwise);
        let prefetch = self.cm.train.stack.overlap.zero3_prefetch;
        let p = pass_name(pass);
        match pass {
            Pass::Fwd => {
                // ZeRO-3 gathers the layer's weights before each use (prefetched during the layer
                // before); with full checkpointing the recomputation's gather serves the backward.
                let gather = self.zero3_transfer(Collective::AllGather);
                self.stage(format!("{prefix}linear {p}"), Part::Linear, pass, layers, Compute::uniform(inner), gather.map(|t| (t, prefetch)));
            }
            Pass::Bwd => {
                let gather = if self.cm.train.checkpointing == Checkpointing::Full {
                    None
                } else {
                    self.zero3_transfer(Collective::AllGather)
                };
                self.stage(format!("linear {p} dgrad"), Part::Linear, pass, layers, Compute::uniform(inner), gather.map(|t| (t, prefetch)));
                // Gradients are reduce-scattered as they are produced under ZeRO 2 and 3.
                let reduce = self.zero_grad_transfer();
                self.stage(format!("linear {p} wgrad"), Part::Linear, pass, layers, Compute::uniform(wgrads), reduce.map(|t| (t, true)));
            }
        }
        self.tensor_parallel(layers, pass, prefix, tp_overlap.then_some(&gemms[..]));
    }

    /// The selective policy recomputes the MLP activation in the backward pass.
    fn activation_recompute(&mut self, layers: u32) {
        let bytes = self.elementwise_ops()[5] * self.tokens;
        self.stage("recompute activation fwd".into(), Part::Linear, Pass::Fwd, layers, Compute::uniform(vec![Kernel::Memory { traffic: Traffic::Activation, bytes }]), None);
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
        Transfer::new(collective, ranks, gpus.div_ceil(c.gpus_per_domain()), bytes)
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
    fn tensor_parallel(&mut self, layers: u32, pass: Pass, prefix: &str, overlap_gemms: Option<&[Kernel]>) {
        let tp = self.cm.train.tp;
        if tp <= 1 {
            return;
        }
        let bytes = self.tokens * f64::from(self.model().hidden) * 2.0;
        // Tensor parallelism may cross nodes (whole nodes): its collectives then use the network.
        let tp_nodes = tp.div_ceil(self.cluster().gpus_per_domain());
        let p = pass_name(pass);
        if let Some(gemms) = overlap_gemms {
            // Per block: the all-gather beside the block's first GEMM, the reduce-scatter beside
            // its last (without sequence parallelism, the all-reduce beside the last).
            let pairs: Vec<(Collective, &[Kernel])> = if self.cm.train.sequence_parallel {
                vec![
                    (Collective::AllGather, &gemms[0..1]),
                    (Collective::ReduceScatter, &gemms[1..2]),
                    (Collective::AllGather, &gemms[2..3]),
                    (Collective::ReduceScatter, &gemms[3..4]),
                ]
            } else {
                vec![(Collective::AllReduce, &gemms[0..2]), (Collective::AllReduce, &gemms[2..4])]
            };
            for (collective, inside) in pairs {
                let t = Transfer::new(collective, tp, tp_nodes, bytes);
                let label = format!("{prefix}tp {} {p} overlapped", collective.name());
                self.stage(label, Part::Linear, pass, layers, Compute::uniform(inside.to_vec()), Some((t, true)));
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
            self.stage(label, Part::Linear, pass, 2 * layers, Compute::idle(), Some((t, false)));
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
        let gpn = self.cluster().gpus_per_domain();
        let span = u * self.cm.train.tp;
        let nodes = span.div_ceil(gpn);
        let direction = if into_heads { "in" } else { "out" };
        for (name, heads) in tensors {
            // Each rank's send buffer: its tokens for all `heads` heads (nccl-tests' all-to-all size).
            let bytes = self.tokens * self.head_bytes(heads);
            let copy = Kernel::Memory { traffic: Traffic::LayoutCopy, bytes: 2.0 * bytes };
            let t = Transfer::new(Collective::AllToAll, u, nodes, bytes).with_network_senders(span.div_ceil(nodes));
            let label = format!("{prefix}ulysses all_to_all {direction} {name} {}", pass_name(pass));
            self.stage(label, Part::Attention, pass, layers, Compute::uniform(vec![copy, copy]), Some((t, false)));
        }
    }

    fn attention_block(&mut self, layers: u32, pass: Pass, prefix: &str) {
        self.ulysses_all_to_all(layers, pass, prefix, true);
        self.attention(layers, pass, prefix);
        self.ulysses_all_to_all(layers, pass, prefix, false);
    }

    fn attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        if self.kind == LayerKind::Linear {
            return self.linear_attention(layers, pass, prefix);
        }
        if self.shape.ring <= 1 {
            return self.attention_compute(layers, pass, prefix);
        }
        match self.shape.scheme {
            // LASP-2H runs its softmax layers as the all-gather scheme (arXiv 2502.07563, 3.4).
            Scheme::Allgather | Scheme::Lasp2h => self.allgather_attention(layers, pass, prefix),
            Scheme::DoubleRing => self.double_ring_attention(layers, pass, prefix),
            _ => self.ring_attention(layers, pass, prefix),
        }
    }

    /// One attention kernel call over `tiles` tiles led by `lead` blocks; none without tiles.
    fn kernel(&self, pass: Pass, tiles: f64, lead: f64, causal: bool) -> Option<Kernel> {
        (tiles > 0.0).then(|| Kernel::Attention { pass, heads: self.heads, head_dim: self.head_dim(), tiles, lead, causal })
    }

    /// The kernel at ring step (query slot i, key slot j).
    fn block(&self, pass: Pass, i: usize, j: usize) -> Option<Kernel> {
        let lead = match pass {
            Pass::Fwd => self.work.q_tiles[i][j],
            Pass::Bwd => self.work.k_tiles[i][j],
        };
        self.kernel(pass, self.work.tiles[i][j], lead, self.work.causal[i][j])
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
        let per_slot: Vec<Vec<Kernel>> = (0..r)
            .map(|i| {
                let tiles: f64 = self.work.tiles[i].iter().sum();
                let lead = match pass {
                    Pass::Fwd => self.work.q_tiles_any[i],
                    Pass::Bwd => self.work.k_tiles[i].iter().sum(),
                };
                let keys: f64 = self.work.k_rows[i].iter().sum();
                let kernel = self.kernel(pass, tiles, lead, self.work.causal[i].iter().any(|&c| c));
                let reduction = kernel.into_iter().flat_map(|_| self.gqa_reduction(pass, keys));
                kernel.into_iter().chain(reduction).collect()
            })
            .collect();
        self.flops += f64::from(layers) * self.attention_flops(pass);
        self.stage(format!("{prefix}attention {}", pass_name(pass)), Part::Attention, pass, layers, Compute::Slots(per_slot), None);
    }

    /// FlashAttention-2's backward under grouped-query attention (csrc/flash_attn/flash_api.cpp,
    /// `mha_bwd` and `mha_varlen_bwd`): the kernel writes dK and dV per query head into
    /// `dk_expanded` and `dv_expanded` (keys x heads x head_dim, in the inputs' bf16), then
    /// `at::sum_out` sums each group of heads / kv_heads query heads into its KV head: two
    /// reductions, each reading keys x heads x d and writing keys x kv_heads x d elements of 2
    /// bytes, after every kernel call (every ring step's call too; ring-flash-attention and USP
    /// call the same entry point). The kernel itself does what it does without GQA, per query
    /// head (the tile model prices `heads` heads), so GQA adds no FLOPs. Only FlashAttention-2
    /// works this way; FlashAttention-3 and cuDNN handle the group inside their kernels (not
    /// checked against their source, nothing added for them).
    fn gqa_reduction(&self, pass: Pass, keys: f64) -> impl Iterator<Item = Kernel> {
        let grouped = self.heads > self.kv_heads + 1e-9;
        let applies = pass == Pass::Bwd && grouped && keys > 0.0 && self.cm.attention.kernel == AttentionKernel::Fa2;
        let bytes = keys * (self.heads + self.kv_heads) * self.head_dim() * 2.0;
        std::iter::repeat_n(Kernel::Memory { traffic: Traffic::GqaReduction, bytes }, if applies { 2 } else { 0 })
    }

    /// Bytes of the K/V block one rank passes along the ring, for the tokens that travel: K and V
    /// (bf16), and in the backward the dK, dV accumulators, which travel in fp32
    /// (ring-flash-attention, USP and Transformer Engine all accumulate them in fp32).
    fn ring_block_bytes(&self, pass: Pass) -> f64 {
        self.kv_block_bytes() + if pass == Pass::Bwd { self.dkv_block_bytes() } else { 0.0 }
    }

    /// K and V of the travelling tokens, bf16.
    fn kv_block_bytes(&self) -> f64 {
        self.travelling_tokens() * 2.0 * 2.0 * self.kv_heads * self.head_dim()
    }

    /// dK and dV of the travelling tokens, fp32.
    fn dkv_block_bytes(&self) -> f64 {
        self.travelling_tokens() * 2.0 * 4.0 * self.kv_heads * self.head_dim()
    }

    /// Tokens whose keys and values travel around the ring: after the all-to-all a rank holds
    /// its slot's every token for its share of the heads; the sequence-aware layout circulates
    /// only split documents' pieces (and their padding).
    fn travelling_tokens(&self) -> f64 {
        match self.shape.scheme {
            Scheme::Hsap => self.split_tokens_per_slot(),
            _ => self.slot_tokens(),
        }
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
    /// Backward: `dq += dq_block`, then `dk, dv += block`, on fp32 accumulators (read 4 + 2,
    /// write 4), two kernels.
    fn merge(&self, pass: Pass, i: usize, j: usize) -> impl Iterator<Item = Kernel> {
        let d = self.head_dim();
        let rows = self.work.q_rows[i][j];
        let memory = |traffic, bytes| Kernel::Memory { traffic, bytes };
        let kernels = match pass {
            Pass::Fwd => {
                let partial = rows + 0.5 < self.slot_real_tokens.get(i).copied().unwrap_or(0.0);
                let per_element = 38.0 + if partial { 8.0 } else { 0.0 };
                [Some(memory(Traffic::Merge, rows * self.heads * (per_element * d + 40.0))), None]
            }
            Pass::Bwd => [
                Some(memory(Traffic::Merge, rows * self.heads * 10.0 * d)),
                Some(memory(Traffic::KvGradMerge, 2.0 * self.work.k_rows[i][j] * self.kv_heads * 10.0 * d)),
            ],
        };
        kernels.into_iter().flatten()
    }

    /// Converting the accumulators to fp32 at the first step and back to bf16 after the last
    /// (read 2 write 4, then read 4 write 2: 12 bytes per element).
    fn accumulator_conversion(&self, pass: Pass) -> Kernel {
        let heads = match pass {
            Pass::Fwd => self.heads,
            Pass::Bwd => self.heads + 2.0 * self.kv_heads,
        };
        Kernel::Memory { traffic: Traffic::Conversion, bytes: self.slot_tokens() * heads * self.head_dim() * 12.0 }
    }

    /// Tokens of one slot: what each of its ranks computes attention over after the all-to-all.
    fn slot_tokens(&self) -> f64 {
        self.tokens * f64::from(self.shape.ulysses)
    }

    /// Step `j`'s compute on every slot (queries of slot i against keys of slot i - j): the
    /// kernel and the softmax merge, and after the last step (`last`) the accumulators'
    /// conversion.
    fn step_kernels(&self, pass: Pass, j: usize, last: Option<Kernel>) -> Vec<Vec<Kernel>> {
        let r = self.shape.ring as usize;
        (0..r)
            .map(|i| {
                let k = (i + r - j) % r;
                // At most the block, two reductions, two merges and the conversion: one allocation.
                let mut kernels: Vec<Kernel> = Vec::with_capacity(6);
                kernels.extend(self.block(pass, i, k));
                if !kernels.is_empty() {
                    kernels.extend(self.gqa_reduction(pass, self.work.k_rows[i][k]));
                }
                // The first step writes the accumulators; later ones merge into them.
                if j > 0 && !kernels.is_empty() {
                    kernels.extend(self.merge(pass, i, k));
                }
                kernels.extend(last);
                kernels
            })
            .collect()
    }

    /// A ring hop of `bytes`: at a node's edge the `ulysses` x `tp` ranks of one slot send across
    /// together.
    fn ring_transfer(&self, bytes: f64, ranks: u32, nodes: u32) -> Transfer {
        let slot = self.shape.ulysses * self.cm.train.tp;
        Transfer::new(Collective::SendRecv, ranks, nodes, bytes).with_network_senders(slot).with_gpus_per_rank(slot)
    }

    /// What travels at ring step `j` of `steps`, and whether it runs beside the step's compute:
    /// the block for step j + 1 (K and V) and, backward, the dK and dV of step j - 1 (ring-flash-
    /// attention sends each step's gradients on after computing them, beside the next step). The
    /// last step's dK and dV return home after it, exposed; the last forward step sends nothing.
    fn ring_hop(&self, pass: Pass, j: usize, steps: usize, ranks: u32, nodes: u32) -> Option<(Transfer, bool)> {
        let last = j + 1 == steps;
        let kv = if last { 0.0 } else { self.kv_block_bytes() };
        let dkv = if pass == Pass::Bwd && j >= 1 { self.dkv_block_bytes() } else { 0.0 };
        let bytes = kv + dkv;
        let messages = u32::from(kv > 0.0) + u32::from(dkv > 0.0);
        (bytes > 0.0).then(|| (self.ring_transfer(bytes, ranks, nodes).in_messages(messages), !last))
    }

    fn ring_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let p = pass_name(pass);
        self.flops += f64::from(layers) * self.attention_flops(pass);
        let conversion = self.accumulator_conversion(pass);
        for j in 0..r {
            let slots = self.step_kernels(pass, j, (j + 1 == r).then_some(conversion));
            let hop = self.ring_hop(pass, j, r, self.shape.ring, self.nodes);
            if hop.is_none() && slots.iter().flatten().all(Kernel::is_empty) {
                continue;
            }
            let label = format!("{prefix}ring step {j} {p}");
            self.stage(label, Part::Attention, pass, layers, Compute::Slots(slots), hop);
            if let Some(step) = self.steps.last_mut() {
                step.ring_step = Some(j as u32);
            }
        }
    }

    /// Double ring: the inner ring runs over the slots of one node, its transfers inside the node;
    /// each round's hop to the next node overlaps the whole round. Backward, gradients travel as
    /// in [`Self::ring_hop`] on both rings: each round's last inner hop and the last round's outer
    /// hop return them home, exposed.
    fn double_ring_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring as usize;
        let gpn = self.cluster().gpus_per_domain();
        let inner = ((gpn / (self.shape.ulysses * self.cm.train.tp)).max(1) as usize).min(r);
        if inner >= r || self.nodes <= 1 {
            return self.ring_attention(layers, pass, prefix);
        }
        let outer = r / inner;
        let p = pass_name(pass);
        self.flops += f64::from(layers) * self.attention_flops(pass);
        let conversion = self.accumulator_conversion(pass);
        for round in 0..outer {
            // Each inner step overlaps the inner hop that brings the next block (none after the
            // last inner step).
            let mut steps: Vec<Step> = (0..inner)
                .map(|k| {
                    let hop = self.ring_hop(pass, k, inner, inner as u32, 1);
                    Step {
                        label: format!("{prefix}double ring round {round} inner step {k} {p}"),
                        part: Part::Attention,
                        pass,
                        repeat: 1,
                        compute: Compute::Slots(self.step_kernels(pass, round * inner + k, None)),
                        transfer: hop.map(|h| h.0),
                        overlapped: hop.is_some_and(|h| h.1),
                        ring_step: Some((round * inner + k) as u32),
                    }
                })
                .collect();
            if round + 1 == outer {
                steps.push(Step {
                    label: format!("{prefix}double ring accumulators {p}"),
                    part: Part::Attention,
                    pass,
                    repeat: 1,
                    compute: Compute::uniform(vec![conversion]),
                    transfer: None,
                    overlapped: false,
                    ring_step: None,
                });
            }
            let hop = self.ring_hop(pass, round, outer, self.shape.ring, self.nodes);
            let label = format!("{prefix}double ring round {round} {p}");
            self.stage(label, Part::Attention, pass, layers, Compute::Steps(steps), hop);
        }
    }

    /// All-gather K and V over the ring dimension, then each slot's queries against all keys in
    /// one kernel. The backward gathers them again (Llama 3 keeps no gathered copy, to save
    /// memory) and reduce-scatters the dK, dV accumulators (fp32, as the ring sends them).
    fn allgather_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let r = self.shape.ring;
        // The gathered K and V of every slot, for this rank's share of the KV heads.
        let gathered = f64::from(r) * self.slot_tokens() * 2.0 * self.head_bytes(self.kv_heads);
        let (nodes, senders) = (self.nodes, self.shape.ulysses * self.cm.train.tp);
        let group = |collective, bytes| Transfer::new(collective, r, nodes, bytes).with_network_senders(senders);
        let p = pass_name(pass);
        let gather = group(Collective::AllGather, gathered);
        self.stage(format!("{prefix}allgather kv {p}"), Part::Attention, pass, layers, Compute::idle(), Some((gather, false)));
        self.attention_compute(layers, pass, prefix);
        if pass == Pass::Bwd {
            let scatter = group(Collective::ReduceScatter, 2.0 * gathered);
            self.stage(format!("{prefix}reduce_scatter dkv {p}"), Part::Attention, pass, layers, Compute::idle(), Some((scatter, false)));
        }
    }

    /// Chunks of `chunk` tokens the linear-attention kernels run on each slot. A document's state
    /// starts at zero at its first token (varlen: packed documents never mix) and a shard of a
    /// split document starts from the state that arrives, so every piece starts a chunk; padding
    /// is in no sequence (cu_seqlens exclude it, as for softmax attention).
    fn slot_chunks(&self, chunk: u32) -> Vec<f64> {
        let chunks = |len: u32| u64::from(len.div_ceil(chunk.max(1)));
        self.layout.slots.iter().map(|slot| slot.pieces.iter().map(|p| chunks(p.len)).sum::<u64>() as f64).collect()
    }

    /// Linear-attention heads each rank computes (tensor parallelism splits them).
    fn linear_heads(&self, la: &LinearAttention) -> f64 {
        f64::from(la.heads) / self.tp()
    }

    /// Bytes of the memory states of one rank's heads: `key_dim x value_dim` per head, in fp32
    /// (the chunk kernels accumulate the state in fp32, and LASP and LASP-2 send it as kept).
    fn state_bytes(&self, la: &LinearAttention) -> f64 {
        self.linear_heads(la) * la.state_elements_per_head() * 4.0
    }

    /// A linear-attention layer's pass: the chunked algorithm on each rank's shard, and the
    /// scheme's exchange of memory states (none on one slot).
    fn linear_attention(&mut self, layers: u32, pass: Pass, prefix: &str) {
        let Some(la) = self.model().linear_attention.clone() else { return };
        let heads = self.linear_heads(&la);
        let chunks = self.slot_chunks(la.chunk);
        let per_slot = |phase: Phase| -> Vec<Vec<Kernel>> { chunks.iter().map(|&n| chunk_kernels(&la, n * heads, pass, phase)).collect() };
        let busiest = chunks.iter().copied().fold(0.0, f64::max);
        self.flops += f64::from(layers) * chunk_flops_per_head(&la, pass_factor(pass)) * busiest * heads;
        let state = self.state_bytes(&la);
        // The scan writes each chunk's state and the inter-chunk products read it back.
        let scan = |n: f64| Kernel::Memory { traffic: Traffic::StateScan, bytes: 2.0 * n * state };
        let with_scan = |mut slots: Vec<Vec<Kernel>>| -> Vec<Vec<Kernel>> {
            for (kernels, &n) in slots.iter_mut().zip(&chunks) {
                kernels.push(scan(n));
            }
            slots
        };
        let r = self.shape.ring;
        let p = pass_name(pass);
        if r <= 1 || !self.shape.scheme.is_lasp() {
            let mut slots = per_slot(Phase::State);
            for (all, (intra, inter)) in slots.iter_mut().zip(per_slot(Phase::Intra).into_iter().zip(per_slot(Phase::Inter))) {
                all.extend(intra);
                all.extend(inter);
            }
            let label = format!("{prefix}linear attention {p}");
            return self.stage(label, Part::Attention, pass, layers, Compute::Slots(with_scan(slots)), None);
        }
        let name = self.shape.scheme.name();
        let (nodes, senders) = (self.nodes, self.cm.train.tp);
        // Received states summed into the one the shard starts from (read two, write one each).
        let merge = |states: f64| Kernel::Memory { traffic: Traffic::StateMerge, bytes: 3.0 * states * state };
        match self.shape.scheme {
            Scheme::Lasp1 => {
                // LASP's algorithms 2 and 3: the intra-chunk work and the local state first; then
                // each rank waits for its predecessor's state, adds its own and sends the sum on,
                // r - 1 hops one after another (backward: the state gradients, the other way).
                let mut first = per_slot(Phase::State);
                for (all, intra) in first.iter_mut().zip(per_slot(Phase::Intra)) {
                    all.extend(intra);
                }
                self.stage(format!("{prefix}{name} intra {p}"), Part::Attention, pass, layers, Compute::Slots(first), None);
                let hops = r - 1;
                let chain = self.ring_transfer(f64::from(hops) * state, r, nodes).in_messages(hops);
                let adds = Compute::uniform(vec![merge(f64::from(hops))]);
                self.stage(format!("{prefix}{name} state chain {p}"), Part::Attention, pass, layers, adds, Some((chain, false)));
            }
            _ => {
                // LASP-2's algorithms 1 and 2: each rank's local state, then one all-gather of
                // every rank's state beside the intra-chunk work.
                self.stage(format!("{prefix}{name} local state {p}"), Part::Attention, pass, layers, Compute::Slots(per_slot(Phase::State)), None);
                let gather = Transfer::new(Collective::AllGather, r, nodes, f64::from(r) * state).with_network_senders(senders);
                let intra = Compute::Slots(per_slot(Phase::Intra));
                self.stage(format!("{prefix}{name} allgather states {p}"), Part::Attention, pass, layers, intra, Some((gather, true)));
            }
        }
        let mut last = with_scan(per_slot(Phase::Inter));
        if self.shape.scheme != Scheme::Lasp1 {
            // The prefix of the gathered states a shard needs, summed.
            for kernels in &mut last {
                kernels.push(merge(f64::from(r - 1)));
            }
        }
        self.stage(format!("{prefix}{name} inter {p}"), Part::Attention, pass, layers, Compute::Slots(last), None);
    }

    /// Output projection and loss, once per micro-batch: the LM head GEMM and the cross-entropy
    /// over the logits (memory-bound: the stack's bytes per logit, each pass).
    fn head(&mut self) {
        let cm = self.cm;
        let m = &cm.model;
        let (t, h, v) = (self.tokens, f64::from(m.hidden), f64::from(m.vocab) / self.tp());
        let logits = Kernel::Gemm { linear: Linear::LmHead, m: t, n: v, k: h };
        let loss = Kernel::Memory { traffic: Traffic::Loss, bytes: t * v * cm.train.stack.elementwise.loss_bytes_per_logit };
        self.flops += 2.0 * t * v * h;
        self.stage("lm head fwd".into(), Part::Head, Pass::Fwd, 1, Compute::uniform(vec![logits, loss]), None);
        if self.cm.train.backward {
            self.flops += 4.0 * t * v * h;
            // The input gradient (t x h from t x v) and the weight gradient (v x h over t tokens).
            let dgrad = Kernel::Gemm { linear: Linear::LmHead, m: t, n: h, k: v };
            let wgrad = Kernel::Gemm { linear: Linear::LmHead, m: v, n: h, k: t };
            self.stage("lm head bwd".into(), Part::Head, Pass::Bwd, 1, Compute::uniform(vec![dgrad, wgrad, loss]), None);
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
        let kinds = match self.scope {
            Scope::Step => m.kind_counts(),
            _ => vec![(m.dominant_kind(), 1)],
        };
        let head = match self.scope {
            Scope::Step => 2.0 * f64::from(m.vocab) * f64::from(m.hidden) * real * passes,
            _ => 0.0,
        };
        let layers_flops: f64 = kinds
            .iter()
            .map(|&(kind, n)| {
                let linear = match self.scope {
                    Scope::Attention => 0.0,
                    _ => 2.0 * m.kind_layer_params(kind) as f64 * real * passes,
                };
                let attention = match (kind, &m.linear_attention) {
                    (LayerKind::Linear, Some(la)) => {
                        // Every head's chunks of real tokens, forward once, backward twice.
                        let chunks: f64 = self.slot_chunks(la.chunk).iter().sum();
                        chunk_flops_per_head(la, 1.0) * chunks * f64::from(la.heads) * passes
                    }
                    _ => pairs * f64::from(m.heads) * 4.0 * d * attention_passes,
                };
                f64::from(n) * (linear + attention)
            })
            .sum();
        let gpus = f64::from(self.shape.size() * self.cm.train.tp);
        (layers_flops + head) / gpus
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
        let softmax = self.softmax_buffer_bytes();
        match self.model().linear_attention.clone() {
            Some(la) if self.model().has_linear_layers() => softmax.max(self.linear_buffer_bytes(&la)),
            _ => softmax,
        }
    }

    /// A linear layer's buffers: the states of its chunks (bf16, kept for the backward by the
    /// chunk kernels) and the scheme's received states (LASP-2: every rank's; LASP-1: the one
    /// arriving and the one sent).
    fn linear_buffer_bytes(&self, la: &LinearAttention) -> f64 {
        let chunks = self.slot_chunks(la.chunk).into_iter().fold(0.0, f64::max);
        let state = self.state_bytes(la);
        let exchange = match (self.shape.scheme, self.shape.ring) {
            (_, 1) => 0.0,
            (Scheme::Lasp1, _) => 2.0 * state,
            (_, r) => f64::from(r) * state,
        };
        chunks * state / 2.0 + exchange
    }

    /// A softmax layer's buffers: the all-to-all's and the ring's or the gather's.
    fn softmax_buffer_bytes(&self) -> f64 {
        let u = f64::from(self.shape.ulysses);
        // Send and receive buffers of the Q/K/V all-to-all.
        let a2a = if u > 1.0 { 2.0 * self.tokens * self.head_bytes(self.qkv_heads_total()) } else { 0.0 };
        let d = self.head_dim();
        let ring = match (self.shape.scheme, self.shape.ring) {
            (_, 1) => 0.0,
            (Scheme::Allgather | Scheme::Lasp2h, r) => f64::from(r) * self.slot_tokens() * 2.0 * self.head_bytes(self.kv_heads),
            (Scheme::Lasp1 | Scheme::Lasp2, _) => 0.0,
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
