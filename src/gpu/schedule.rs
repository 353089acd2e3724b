//! Per-rank schedules: what every GPU runs for a plan's batch, op by op, in order, with the
//! stream each op runs on and the earlier ops it waits for. One schedule, two interpreters: the
//! CPU reference executor ([`super::reference`]) runs a group's attention ops with real numbers,
//! and the CUDA executor runs every op and times it. `validate --dry-run` prints it.
//!
//! Layers are identical, so a micro-batch's layer is listed once and repeated `layers` times.
//! Waits are derived from the buffers each op reads and writes: an op waits for every earlier op
//! on another stream that touched a buffer it writes, or wrote a buffer it reads. Executed in
//! list order, or concurrently with those waits, the results are the same.

use super::attention::{count, HeadMap, TileCount, Tiling};
use super::program;
use super::varlen::{GroupVarlen, VarlenMeta};
use crate::cluster::{Cluster, Collective};
use crate::cost::{CostModel, Dtype, Scope, Transfer};
use crate::workload::{Kernel, Traffic};
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::plan::{BatchPlan, Plan};
use crate::scheme::GroupShape;
use crate::scheme::Scheme;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes of one element on the wire and in activations.
pub const BF16_BYTES: u64 = 2;
/// Bytes of one f32 element: attention accumulators and the key/value gradients that travel
/// around the ring (summed over many ranks, so kept in f32 as ring-flash-attention does).
pub const F32_BYTES: u64 = 4;
/// Gradient all-reduce bucket (PyTorch DDP's default is 25 MiB; Megatron uses 40M elements).
pub const GRAD_BUCKET_BYTES: u64 = 40_000_000 * BF16_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Kernels, GEMMs and the exposed collectives.
    Compute,
    /// Ring send/recv, overlapping the attention of the current step.
    Ring,
    /// The double ring's outer (inter-node) send/recv, overlapping the whole inner ring.
    Outer,
    /// Data-parallel collectives over every rank (ZeRO's weight gathers and gradient
    /// reduce-scatters, the step's gradient synchronisation), beside the layer's compute.
    Data,
}

impl Stream {
    pub const ALL: [Stream; 4] = [Stream::Compute, Stream::Ring, Stream::Outer, Stream::Data];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Compute => "compute",
            Stream::Ring => "ring",
            Stream::Outer => "outer",
            Stream::Data => "data",
        }
    }
}

/// A rank's buffers. Pair buffers (`Kv`, `Kvh`, `Ring`, `Outer`, `Gathered` and their gradients)
/// hold keys and values: `[2][rows][kv_heads][head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Buf {
    /// The shard's projections, `[shard rows, heads, head_dim]` (all heads).
    Q,
    Kv,
    O,
    DO,
    DQ,
    DKv,
    /// After the Ulysses all-to-all: the slot's rows for this rank's heads. With `ulysses = 1` the
    /// schedule uses the shard buffers instead.
    Qh,
    Kvh,
    DOh,
    /// Attention output and log-sum-exp accumulators (f32) and the backward's `delta`.
    Oacc,
    Lse,
    Delta,
    /// The bf16 output sent back by the Ulysses all-to-all.
    Oh,
    /// Gradient accumulators (f32), and their bf16 copies sent back by the all-to-all.
    DQh,
    DKvh,
    DQhb,
    DKvhb,
    /// Key/value gradients received from every Ulysses peer when key/value heads are replicated.
    DKvRecv,
    /// Ring double buffers for circulating key/value blocks.
    Ring(u8),
    /// The double ring's outer double buffers.
    Outer(u8),
    /// All-gathered keys and values of every slot.
    Gathered,
    /// This step's key/value gradient contribution, and the travelling sums (double buffered).
    DkvScratch,
    DkvTravel(u8),
    OuterScratch,
    OuterTravel(u8),
    DKvGathered,
}

impl Buf {
    /// Whether the buffer holds keys and values (two halves).
    pub fn is_pair(self) -> bool {
        matches!(
            self,
            Buf::Kv
                | Buf::Kvh
                | Buf::DKv
                | Buf::DKvh
                | Buf::DKvhb
                | Buf::DKvRecv
                | Buf::Ring(_)
                | Buf::Outer(_)
                | Buf::Gathered
                | Buf::DkvScratch
                | Buf::DkvTravel(_)
                | Buf::OuterScratch
                | Buf::OuterTravel(_)
                | Buf::DKvGathered
        )
    }

    /// Whether the buffer holds f32 (accumulators) rather than bf16.
    pub fn is_f32(self) -> bool {
        matches!(
            self,
            Buf::Oacc
                | Buf::Lse
                | Buf::Delta
                | Buf::DQh
                | Buf::DKvh
                | Buf::DkvScratch
                | Buf::DkvTravel(_)
                | Buf::OuterScratch
                | Buf::OuterTravel(_)
                | Buf::DKvGathered
        )
    }
}

/// Which tensor a collective moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tensor {
    Q,
    K,
    V,
    O,
    DO,
    DQ,
    DK,
    DV,
    /// Keys and values together (ring blocks, all-gather).
    Kv,
    /// Key and value gradients together.
    DKv,
    /// Parameter gradients (data-parallel reduction).
    Grads,
    /// Parameters (ZeRO's gathers).
    Weights,
}

impl Tensor {
    pub fn name(self) -> &'static str {
        match self {
            Tensor::Q => "q",
            Tensor::K => "k",
            Tensor::V => "v",
            Tensor::O => "o",
            Tensor::DO => "do",
            Tensor::DQ => "dq",
            Tensor::DK => "dk",
            Tensor::DV => "dv",
            Tensor::Kv => "kv",
            Tensor::DKv => "dkv",
            Tensor::Grads => "grads",
            Tensor::Weights => "weights",
        }
    }

    /// The half of a pair buffer this tensor is (0 keys, 1 values), if it is one.
    pub fn half(self) -> Option<usize> {
        match self {
            Tensor::K | Tensor::DK => Some(0),
            Tensor::V | Tensor::DV => Some(1),
            _ => None,
        }
    }
}

/// Which varlen metadata an attention call uses, within its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaRef {
    /// A slot's whole token list.
    Slot(u32),
    /// The block of a slot that circulates around the ring.
    Block(u32),
    /// Every slot's token list, end to end.
    Gathered,
}

impl MetaRef {
    pub fn resolve<'a>(&self, gv: &'a GroupVarlen, gathered: &'a VarlenMeta) -> &'a VarlenMeta {
        match *self {
            MetaRef::Slot(s) => &gv.slots[s as usize],
            MetaRef::Block(s) => &gv.blocks[s as usize],
            MetaRef::Gathered => gathered,
        }
    }
}

/// Direction of a Ulysses all-to-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum A2aDir {
    /// Sequence shards (all heads) to the slot's rows for this rank's heads.
    ToHeads,
    /// Back: each peer gets its rows for this rank's heads.
    ToSeq,
    /// Back, for gradients of replicated key/value heads: every peer's chunk is kept apart (in
    /// [`Buf::DKvRecv`]) for a following sum.
    ToSeqReplicas,
}

/// One attention kernel call (forward, or the backward's dQ and dK/dV kernels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attn {
    /// Ring step (`outer x inner + inner step` for the double ring).
    pub step: u32,
    /// The slot whose keys this step reads.
    pub origin: u32,
    pub q: Buf,
    pub kv: Buf,
    pub q_meta: MetaRef,
    pub k_meta: MetaRef,
    pub heads: HeadMap,
    /// Forward: starts the output accumulators instead of merging. Backward: overwrites dQ
    /// instead of adding to it.
    pub first: bool,
    /// Backward: where the key/value gradients of this call go, and whether they are added.
    pub dkv: Option<Buf>,
    pub dkv_accumulate: bool,
    /// Query rows and key rows of the call (real and padding).
    pub rows_q: u32,
    pub rows_k: u32,
    /// Query-key pairs the mask lets through (per head), and the tiles computed and skipped.
    pub pairs: u64,
    pub tiles: TileCount,
    /// No tile has work: the call is not made.
    pub skip: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// `[m, k] x [k, n]` in bf16 with f32 accumulation, `count` times.
    Gemm { name: String, m: u64, n: u64, k: u64, count: u64 },
    AttnFwd(Attn),
    AttnBwd(Attn),
    /// `delta = rowsum(dO * O)` over `rows` rows and `heads` heads.
    BwdPreprocess { d_o: Buf, rows: u32, heads: u32 },
    /// f32 to bf16.
    Cast { src: Buf, dst: Buf, elems: u64 },
    /// `dst[..rows] = a[..rows] + b[..rows]` (both halves of pair buffers); a missing operand is zeros.
    Add { dst: Buf, a: Option<Buf>, b: Option<Buf>, rows: u32, elems: u64 },
    /// Sums the key/value gradient chunks of replicated heads received from every Ulysses peer.
    SumReplicas { src: Buf, dst: Buf, elems: u64 },
    AllToAll { tensor: Tensor, dir: A2aDir, src: Buf, dst: Buf, peers: Vec<u32>, bytes: u64 },
    SendRecv { tensor: Tensor, src: Buf, dst: Buf, rows: u32, send_to: u32, recv_from: u32, bytes: u64 },
    AllGather { tensor: Tensor, src: Buf, dst: Buf, peers: Vec<u32>, bytes: u64 },
    ReduceScatter { tensor: Tensor, src: Buf, dst: Buf, peers: Vec<u32>, bytes: u64 },
    /// A memory-bound pass reading and writing `bytes` in all (norms, residual adds, rotary, the
    /// MLP activation, the loss, ring merges, layout copies around an all-to-all): the executor
    /// copies `bytes / 2` within device memory, which moves the same bytes.
    Memory { name: String, bytes: u64 },
    /// A collective over the data-parallel ranks on workspaces of its own, in buckets of at most
    /// `bucket_bytes`: ZeRO's weight all-gathers and gradient reduce-scatters, the step's
    /// gradient all-reduce.
    DataParallel { collective: Collective, tensor: Tensor, peers: Vec<u32>, bytes: u64, bucket_bytes: u64 },
}

impl OpKind {
    /// The buffers the op reads and writes (GEMMs and the gradient all-reduce use workspaces of
    /// their own on the compute stream).
    pub fn access(&self) -> (Vec<Buf>, Vec<Buf>) {
        match self {
            OpKind::Gemm { .. } | OpKind::Memory { .. } | OpKind::DataParallel { .. } => (vec![], vec![]),
            OpKind::AttnFwd(a) => (vec![a.q, a.kv], vec![Buf::Oacc, Buf::Lse]),
            OpKind::AttnBwd(a) => {
                let d_o = if a.q == Buf::Q { Buf::DO } else { Buf::DOh };
                let mut w = vec![Buf::DQh];
                w.extend(a.dkv);
                (vec![a.q, a.kv, d_o, Buf::Lse, Buf::Delta], w)
            }
            OpKind::BwdPreprocess { d_o, .. } => (vec![*d_o, Buf::Oacc], vec![Buf::Delta]),
            OpKind::Cast { src, dst, .. } | OpKind::SumReplicas { src, dst, .. } => (vec![*src], vec![*dst]),
            OpKind::Add { dst, a, b, .. } => (a.iter().chain(b.iter()).copied().collect(), vec![*dst]),
            OpKind::AllToAll { src, dst, .. }
            | OpKind::SendRecv { src, dst, .. }
            | OpKind::AllGather { src, dst, .. }
            | OpKind::ReduceScatter { src, dst, .. } => (vec![*src], vec![*dst]),
        }
    }

    /// Whether the op moves data between ranks.
    pub fn is_communication(&self) -> bool {
        matches!(
            self,
            OpKind::AllToAll { .. }
                | OpKind::SendRecv { .. }
                | OpKind::AllGather { .. }
                | OpKind::ReduceScatter { .. }
                | OpKind::DataParallel { .. }
        )
    }

    /// The NCCL collective and bytes (nccl-tests' `size`) of a communication op.
    pub fn collective(&self) -> Option<(Collective, u64, u32)> {
        match self {
            OpKind::AllToAll { peers, bytes, .. } => Some((Collective::AllToAll, *bytes, peers.len() as u32)),
            OpKind::SendRecv { bytes, .. } => Some((Collective::SendRecv, *bytes, 2)),
            OpKind::AllGather { peers, bytes, .. } => Some((Collective::AllGather, *bytes, peers.len() as u32)),
            OpKind::ReduceScatter { peers, bytes, .. } => Some((Collective::ReduceScatter, *bytes, peers.len() as u32)),
            OpKind::DataParallel { collective, peers, bytes, .. } => Some((*collective, *bytes, peers.len() as u32)),
            _ => None,
        }
    }

    /// Global ranks this op talks to (itself excluded).
    pub fn peers(&self, me: u32) -> Vec<u32> {
        match self {
            OpKind::SendRecv { send_to, recv_from, .. } => {
                let mut p = vec![*send_to, *recv_from];
                p.dedup();
                p
            }
            OpKind::AllToAll { peers, .. }
            | OpKind::AllGather { peers, .. }
            | OpKind::ReduceScatter { peers, .. }
            | OpKind::DataParallel { peers, .. } => peers.iter().copied().filter(|&p| p != me).collect(),
            _ => vec![],
        }
    }

    /// A short name: the collective or kernel.
    pub fn name(&self) -> String {
        match self {
            OpKind::Gemm { name, .. } => format!("gemm {name}"),
            OpKind::AttnFwd(a) => format!("attn_fwd step {}", a.step),
            OpKind::AttnBwd(a) => format!("attn_bwd step {}", a.step),
            OpKind::BwdPreprocess { .. } => "attn_bwd_preprocess".into(),
            OpKind::Cast { src, dst, .. } => format!("cast {src:?}->{dst:?}"),
            OpKind::Add { dst, a, b, .. } => format!(
                "add {dst:?} = {} + {}",
                a.map_or("0".to_string(), |b| format!("{b:?}")),
                b.map_or("0".to_string(), |b| format!("{b:?}"))
            ),
            OpKind::SumReplicas { .. } => "sum_replicas dkv".into(),
            OpKind::AllToAll { tensor, dir, .. } => format!(
                "all_to_all {} {}",
                tensor.name(),
                if *dir == A2aDir::ToHeads { "to heads" } else { "to sequence" }
            ),
            OpKind::SendRecv { tensor, .. } => format!("send_recv {}", tensor.name()),
            OpKind::AllGather { tensor, .. } => format!("all_gather {}", tensor.name()),
            OpKind::ReduceScatter { tensor, .. } => format!("reduce_scatter {}", tensor.name()),
            OpKind::Memory { name, .. } => format!("memory {name}"),
            OpKind::DataParallel { collective, tensor, .. } => format!("{} {}", collective.name(), tensor.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub stream: Stream,
    /// Earlier ops of the same block (indices) this op waits for.
    pub waits: Vec<usize>,
    pub kind: OpKind,
    /// The cost model's time for this op, seconds, once priced (see [`Schedule::price`]).
    pub predicted_s: Option<f64>,
    /// The step of the group's workload this op belongs to (`GroupRun::steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<StepAt>,
    /// What of the workload the op runs, as the cost model describes it: a kernel with its shape
    /// or a collective with its group. None for the executor's own work (casts, zeroing, the
    /// attention backward's preprocessing), which the cost model does not describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Work>,
}

impl Op {
    pub fn new(stream: Stream, kind: OpKind) -> Op {
        Op { stream, waits: Vec::new(), kind, predicted_s: None, at: None, work: None }
    }
}

/// A step of a group's workload: `steps[step]`, or its inner step `inner` (the double ring's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepAt {
    pub step: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner: Option<u32>,
}

/// The workload item an op runs (`crate::workload`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    Kernel(Kernel),
    Transfer(Transfer),
}

/// A workload step as the schedule prices it: whether its transfer overlaps its compute, and
/// its inner steps (the double ring's rounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outline {
    pub label: String,
    pub overlapped: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inner: Vec<Outline>,
}

/// Appends ops, deriving each op's waits from the buffers it touches.
#[derive(Default)]
struct Ops {
    ops: Vec<Op>,
    last_write: BTreeMap<Buf, usize>,
    reads_since: BTreeMap<Buf, Vec<usize>>,
}

impl Ops {
    fn push(&mut self, stream: Stream, kind: OpKind) -> usize {
        let (reads, writes) = kind.access();
        let mut waits = Vec::new();
        for b in reads.iter().chain(&writes) {
            waits.extend(self.last_write.get(b).copied());
        }
        for b in &writes {
            waits.extend(self.reads_since.get(b).into_iter().flatten().copied());
        }
        waits.retain(|&w| self.ops[w].stream != stream);
        waits.sort_unstable();
        waits.dedup();
        let id = self.ops.len();
        for b in reads {
            self.reads_since.entry(b).or_default().push(id);
        }
        for b in writes {
            self.last_write.insert(b, id);
            self.reads_since.remove(&b);
        }
        self.ops.push(Op { waits, ..Op::new(stream, kind) });
        id
    }
}

/// Makes every op on the ring and outer streams wait for the compute op issued just before it,
/// as a framework's communication stream waits for the compute stream when a transfer is issued
/// (PyTorch's NCCL process group does so at every call). Without it, a layer's first transfer,
/// which reads only the layer's inputs, could start while the previous layer still computes.
pub fn issue_order(ops: &mut [Op]) {
    let mut last_compute = None;
    for (k, op) in ops.iter_mut().enumerate() {
        if op.stream == Stream::Compute {
            last_compute = Some(k);
        } else if let Some(c) = last_compute {
            op.waits.push(c);
            op.waits.sort_unstable();
            op.waits.dedup();
        }
    }
}

/// The attention dimensions of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttnDims {
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
}

impl AttnDims {
    pub fn of(model: &ModelShape) -> AttnDims {
        AttnDims {
            heads: model.heads,
            kv_heads: model.kv_heads,
            head_dim: model.head_dim,
        }
    }
}

/// One rank's attention for one layer: its forward and backward ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttnOps {
    pub fwd: Vec<Op>,
    pub bwd: Vec<Op>,
}

/// Everything one rank of a group needs to lay out its attention ops.
struct RankCtx<'a> {
    gv: &'a GroupVarlen,
    gathered: &'a VarlenMeta,
    tiling: Tiling,
    heads: HeadMap,
    slot: u32,
    /// Global ranks of this rank's Ulysses peers (its slot), in order.
    slot_peers: Vec<u32>,
    /// Global rank of the rank with this Ulysses index at each slot.
    ring_peer: Vec<u32>,
    /// Slots per node for the double ring (`ring` otherwise).
    inner: u32,
    /// Key/value heads of each Ulysses peer (replicated heads counted once per peer).
    peer_kv_heads: Vec<u32>,
    dims: AttnDims,
}

/// Checks what the schedule relies on: degrees that divide the heads, grouped-query heads.
pub fn check_dims(dims: &AttnDims, ulysses: u32) -> Result<()> {
    if dims.kv_heads == 0 || dims.heads % dims.kv_heads != 0 {
        return Err(Error::invalid(
            format!("{} query heads are not a multiple of {} key/value heads", dims.heads, dims.kv_heads),
            "grouped-query attention needs heads divisible by kv_heads",
        ));
    }
    if ulysses == 0 || dims.heads % ulysses != 0 {
        return Err(Error::invalid(
            format!("Ulysses degree {ulysses} does not divide {} heads", dims.heads),
            "choose a Ulysses degree that divides the number of heads",
        ));
    }
    Ok(())
}

/// Every local rank's attention ops for one layer of a group. `ranks` are the group's global
/// ranks in local order; `inner` is the double ring's slots per node (ignored otherwise).
pub fn group_attention(gv: &GroupVarlen, dims: AttnDims, ranks: &[u32], inner: u32, tiling: Tiling) -> Result<Vec<AttnOps>> {
    let (u, r) = (gv.shape.ulysses, gv.shape.ring);
    check_dims(&dims, u)?;
    if ranks.len() != (u * r) as usize {
        return Err(Error::invalid(format!("a {} group needs {} ranks, got {}", gv.shape, u * r, ranks.len()), "regenerate the plan"));
    }
    if gv.shape.scheme == Scheme::DoubleRing && (inner == 0 || r % inner != 0) {
        return Err(Error::invalid(
            format!("a double ring of {r} slots cannot have {inner} slots per node"),
            "groups larger than a node must be whole nodes",
        ));
    }
    // Only the all-gather scheme reads every slot's keys at once.
    let gathered = if gv.shape.scheme == Scheme::Allgather { gv.gathered() } else { VarlenMeta::concat(&[]) };
    let peer_kv_heads: Vec<u32> = (0..u).map(|i| HeadMap::ulysses(dims.heads, dims.kv_heads, dims.head_dim, u, i).kv_heads).collect();
    (0..u * r)
        .map(|q| {
            let (slot, i) = (q / u, q % u);
            let ctx = RankCtx {
                gv,
                gathered: &gathered,
                tiling,
                heads: HeadMap::ulysses(dims.heads, dims.kv_heads, dims.head_dim, u, i),
                slot,
                slot_peers: ranks[(slot * u) as usize..((slot + 1) * u) as usize].to_vec(),
                ring_peer: (0..r).map(|s| ranks[(s * u + i) as usize]).collect(),
                inner: if gv.shape.scheme == Scheme::DoubleRing { inner } else { r },
                peer_kv_heads: peer_kv_heads.clone(),
                dims,
            };
            let (mut fwd, mut bwd) = (ctx.forward(), ctx.backward());
            issue_order(&mut fwd);
            issue_order(&mut bwd);
            Ok(AttnOps { fwd, bwd })
        })
        .collect()
}

impl RankCtx<'_> {
    fn u(&self) -> u32 {
        self.gv.shape.ulysses
    }

    fn r(&self) -> u32 {
        self.gv.shape.ring
    }

    /// Whether blocks circulate: a ring of more than one slot with something to send.
    fn ring(&self) -> bool {
        matches!(self.gv.shape.scheme, Scheme::Ring | Scheme::Usp | Scheme::DoubleRing | Scheme::Hsap)
            && self.r() > 1
            && self.gv.block_rows > 0
    }

    fn q_buf(&self) -> Buf {
        if self.u() > 1 {
            Buf::Qh
        } else {
            Buf::Q
        }
    }

    fn kv_buf(&self) -> Buf {
        if self.u() > 1 {
            Buf::Kvh
        } else {
            Buf::Kv
        }
    }

    /// Bytes of keys and values of `rows` rows for this rank's key/value heads, in bf16.
    fn kv_bytes(&self, rows: u32) -> u64 {
        u64::from(rows) * u64::from(self.heads.kv_heads) * u64::from(self.dims.head_dim) * BF16_BYTES * 2
    }

    /// Elements of a key/value pair buffer of `rows` rows.
    fn kv_elems(&self, rows: u32) -> u64 {
        u64::from(rows) * u64::from(self.heads.kv_heads) * u64::from(self.dims.head_dim) * 2
    }

    /// The send buffer of a query-sized all-to-all: the shard's rows, all query heads.
    fn q_a2a_bytes(&self) -> u64 {
        u64::from(self.gv.shard_rows) * u64::from(self.dims.heads) * u64::from(self.dims.head_dim) * BF16_BYTES
    }

    /// The send buffer of a key (or value) all-to-all: the shard's rows, for every peer the
    /// key/value heads that peer reads (replicated heads are sent to each peer that reads them).
    fn kv_a2a_bytes(&self) -> u64 {
        let heads: u64 = self.peer_kv_heads.iter().map(|&h| u64::from(h)).sum();
        u64::from(self.gv.shard_rows) * heads * u64::from(self.dims.head_dim) * BF16_BYTES
    }

    fn replicated(&self) -> bool {
        self.peer_kv_heads.iter().sum::<u32>() > self.dims.kv_heads
    }

    fn slot_rows(&self) -> u32 {
        self.gv.slot_rows()
    }

    /// The double ring's geometry: (outer size, inner size, this slot's node, its inner index).
    fn rings(&self) -> (u32, u32, u32, u32) {
        let ri = self.inner;
        (self.r() / ri, ri, self.slot / ri, self.slot % ri)
    }

    /// The slot at (node n, inner index t), both taken modulo their ring.
    fn slot_at(&self, n: i64, t: i64) -> u32 {
        let (ro, ri, _, _) = self.rings();
        (n.rem_euclid(i64::from(ro)) * i64::from(ri) + t.rem_euclid(i64::from(ri))) as u32
    }

    fn peer_at(&self, n: i64, t: i64) -> u32 {
        self.ring_peer[self.slot_at(n, t) as usize]
    }

    fn attn(&self, step: u32, origin: u32, kv: Buf, k_meta: MetaRef, first: bool, dkv: Option<Buf>) -> Attn {
        let qm = &self.gv.slots[self.slot as usize];
        let km = k_meta.resolve(self.gv, self.gathered);
        let tiles = count(&self.tiling, qm, km);
        Attn {
            step,
            origin,
            q: self.q_buf(),
            kv,
            q_meta: MetaRef::Slot(self.slot),
            k_meta,
            heads: self.heads,
            first,
            dkv,
            dkv_accumulate: false,
            rows_q: qm.rows,
            rows_k: km.rows,
            pairs: qm.pairs(km),
            tiles,
            skip: tiles.live == 0,
        }
    }

    fn a2a(&self, tensor: Tensor, dir: A2aDir, src: Buf, dst: Buf) -> OpKind {
        let bytes = match (tensor, dir) {
            (Tensor::K | Tensor::V, _) => self.kv_a2a_bytes(),
            // Back: this rank's key/value heads, for every peer's rows.
            (Tensor::DK | Tensor::DV, _) => {
                u64::from(self.slot_rows()) * u64::from(self.heads.kv_heads) * u64::from(self.dims.head_dim) * BF16_BYTES
            }
            _ => self.q_a2a_bytes(),
        };
        OpKind::AllToAll {
            tensor,
            dir,
            src,
            dst,
            peers: self.slot_peers.clone(),
            bytes,
        }
    }

    fn forward(&self) -> Vec<Op> {
        let mut ops = Ops::default();
        if self.u() > 1 {
            ops.push(Stream::Compute, self.a2a(Tensor::Q, A2aDir::ToHeads, Buf::Q, Buf::Qh));
            ops.push(Stream::Compute, self.a2a(Tensor::K, A2aDir::ToHeads, Buf::Kv, Buf::Kvh));
            ops.push(Stream::Compute, self.a2a(Tensor::V, A2aDir::ToHeads, Buf::Kv, Buf::Kvh));
        }
        if self.gv.shape.scheme == Scheme::Allgather && self.r() > 1 {
            ops.push(Stream::Compute, self.all_gather());
            self.push_fwd(&mut ops, self.attn(0, 0, Buf::Gathered, MetaRef::Gathered, true, None));
        } else if self.ring() {
            self.ring_forward(&mut ops);
        } else {
            self.push_fwd(&mut ops, self.attn(0, self.slot, self.kv_buf(), MetaRef::Slot(self.slot), true, None));
        }
        let out = if self.u() > 1 { Buf::Oh } else { Buf::O };
        let elems = u64::from(self.slot_rows()) * u64::from(self.heads.q_heads) * u64::from(self.dims.head_dim);
        ops.push(Stream::Compute, OpKind::Cast { src: Buf::Oacc, dst: out, elems });
        if self.u() > 1 {
            ops.push(Stream::Compute, self.a2a(Tensor::O, A2aDir::ToSeq, Buf::Oh, Buf::O));
        }
        ops.ops
    }

    fn all_gather(&self) -> OpKind {
        OpKind::AllGather {
            tensor: Tensor::Kv,
            src: self.kv_buf(),
            dst: Buf::Gathered,
            peers: self.ring_peer.clone(),
            bytes: self.kv_bytes(self.slot_rows()) * u64::from(self.r()),
        }
    }

    /// The key/value block this rank computes against at (outer step o, inner step j): its buffer,
    /// metadata and origin slot. The very first is the rank's own slot, whole.
    fn step_block(&self, o: u32, j: u32) -> (Buf, MetaRef, u32) {
        let (_, _, n, t) = self.rings();
        let origin = self.slot_at(i64::from(n) - i64::from(o), i64::from(t) - i64::from(j));
        let outer_block = if o == 0 { self.kv_buf() } else { Buf::Outer(((o - 1) % 2) as u8) };
        match (o, j) {
            (0, 0) => (self.kv_buf(), MetaRef::Slot(self.slot), origin),
            (_, 0) => (outer_block, MetaRef::Block(origin), origin),
            _ => (Buf::Ring(((j - 1) % 2) as u8), MetaRef::Block(origin), origin),
        }
    }

    /// Prefetches of the next blocks at (o, j): the outer block for outer step o + 1 (at the start
    /// of an outer step) and the inner block for inner step j + 1.
    fn prefetch(&self, ops: &mut Ops, o: u32, j: u32) {
        let (ro, ri, n, t) = self.rings();
        let (n, t) = (i64::from(n), i64::from(t));
        let rows = self.gv.block_rows;
        let bytes = self.kv_bytes(rows);
        let outer_block = if o == 0 { self.kv_buf() } else { Buf::Outer(((o - 1) % 2) as u8) };
        if j == 0 && o + 1 < ro {
            ops.push(
                Stream::Outer,
                OpKind::SendRecv {
                    tensor: Tensor::Kv,
                    src: outer_block,
                    dst: Buf::Outer((o % 2) as u8),
                    rows,
                    send_to: self.peer_at(n + 1, t),
                    recv_from: self.peer_at(n - 1, t),
                    bytes,
                },
            );
        }
        if j + 1 < ri {
            let src = if j == 0 { outer_block } else { Buf::Ring(((j - 1) % 2) as u8) };
            ops.push(
                Stream::Ring,
                OpKind::SendRecv {
                    tensor: Tensor::Kv,
                    src,
                    dst: Buf::Ring((j % 2) as u8),
                    rows,
                    send_to: self.peer_at(n, t + 1),
                    recv_from: self.peer_at(n, t - 1),
                    bytes,
                },
            );
        }
    }

    /// Ring attention forward: the flat ring is a double ring with one node.
    fn ring_forward(&self, ops: &mut Ops) {
        let (ro, ri, _, _) = self.rings();
        for o in 0..ro {
            for j in 0..ri {
                self.prefetch(ops, o, j);
                let (kv, meta, origin) = self.step_block(o, j);
                self.push_fwd(ops, self.attn(o * ri + j, origin, kv, meta, o == 0 && j == 0, None));
            }
        }
    }

    fn backward(&self) -> Vec<Op> {
        let mut ops = Ops::default();
        let d_o = if self.u() > 1 { Buf::DOh } else { Buf::DO };
        if self.u() > 1 {
            ops.push(Stream::Compute, self.a2a(Tensor::DO, A2aDir::ToHeads, Buf::DO, Buf::DOh));
        }
        ops.push(
            Stream::Compute,
            OpKind::BwdPreprocess {
                d_o,
                rows: self.slot_rows(),
                heads: self.heads.q_heads,
            },
        );
        if self.gv.shape.scheme == Scheme::Allgather && self.r() > 1 {
            // The forward's gathered keys are not kept (Llama 3's context parallelism gathers
            // them again in the backward to save memory).
            ops.push(Stream::Compute, self.all_gather());
            let a = self.attn(0, 0, Buf::Gathered, MetaRef::Gathered, true, Some(Buf::DKvGathered));
            self.push_bwd(&mut ops, a, self.slot_rows() * self.r());
            ops.push(
                Stream::Compute,
                OpKind::ReduceScatter {
                    tensor: Tensor::DKv,
                    src: Buf::DKvGathered,
                    dst: Buf::DKvh,
                    peers: self.ring_peer.clone(),
                    bytes: self.kv_elems(self.slot_rows()) * u64::from(self.r()) * F32_BYTES,
                },
            );
        } else if self.ring() {
            self.ring_backward(&mut ops);
        } else {
            let a = self.attn(0, self.slot, self.kv_buf(), MetaRef::Slot(self.slot), true, Some(Buf::DKvh));
            self.push_bwd(&mut ops, a, self.slot_rows());
        }
        self.send_gradients_back(&mut ops);
        ops.ops
    }

    /// Pushes a forward call; a skipped first call (a slot without a real token) zeroes the
    /// output it should have started.
    fn push_fwd(&self, ops: &mut Ops, a: Attn) {
        let zero = a.skip && a.first;
        ops.push(Stream::Compute, OpKind::AttnFwd(a));
        if zero {
            let rows = self.slot_rows();
            let elems = u64::from(rows) * u64::from(self.heads.q_heads) * u64::from(self.dims.head_dim);
            ops.push(Stream::Compute, OpKind::Add { dst: Buf::Oacc, a: None, b: None, rows, elems });
        }
    }

    /// Pushes a backward call; a skipped call that should have started an accumulator zeroes it.
    fn push_bwd(&self, ops: &mut Ops, a: Attn, dkv_rows: u32) {
        let (skip, first, dkv) = (a.skip, a.first, a.dkv);
        ops.push(Stream::Compute, OpKind::AttnBwd(a));
        if !skip {
            return;
        }
        if first {
            let elems = u64::from(self.slot_rows()) * u64::from(self.heads.q_heads) * u64::from(self.dims.head_dim);
            let rows = self.slot_rows();
            ops.push(Stream::Compute, OpKind::Add { dst: Buf::DQh, a: None, b: None, rows, elems });
        }
        if let Some(dst) = dkv {
            let elems = self.kv_elems(dkv_rows);
            ops.push(Stream::Compute, OpKind::Add { dst, a: None, b: None, rows: dkv_rows, elems });
        }
    }

    /// Ring attention backward. Each step's key/value gradients travel with their block and
    /// return to its owner: inside the inner ring after `inner` hops (to the rank that holds the
    /// outer block), then around the outer ring.
    fn ring_backward(&self, ops: &mut Ops) {
        let (ro, ri, n, t) = self.rings();
        let (n, t) = (i64::from(n), i64::from(t));
        let rows = self.gv.block_rows;
        let (elems, bytes) = (self.kv_elems(rows), self.kv_elems(rows) * F32_BYTES);
        for o in 0..ro {
            let home = if o == 0 { Buf::DKvh } else { Buf::OuterScratch };
            for j in 0..ri {
                self.prefetch(ops, o, j);
                let (kv, meta, origin) = self.step_block(o, j);
                let target = if j == 0 { home } else { Buf::DkvScratch };
                let mut a = self.attn(o * ri + j, origin, kv, meta, o == 0 && j == 0, Some(target));
                a.first = o == 0 && j == 0;
                let target_rows = if target == Buf::DKvh { self.slot_rows() } else { rows };
                self.push_bwd(ops, a, target_rows);
                if j >= 1 {
                    let travel = Buf::DkvTravel((j % 2) as u8);
                    let a = (j >= 2).then_some(travel);
                    ops.push(Stream::Compute, OpKind::Add { dst: travel, a, b: Some(Buf::DkvScratch), rows, elems });
                    ops.push(
                        Stream::Ring,
                        OpKind::SendRecv {
                            tensor: Tensor::DKv,
                            src: travel,
                            dst: Buf::DkvTravel(((j + 1) % 2) as u8),
                            rows,
                            send_to: self.peer_at(n, t + 1),
                            recv_from: self.peer_at(n, t - 1),
                            bytes,
                        },
                    );
                }
            }
            if ri > 1 {
                let back = Buf::DkvTravel((ri % 2) as u8);
                ops.push(Stream::Compute, OpKind::Add { dst: home, a: Some(home), b: Some(back), rows, elems });
            }
            if o >= 1 {
                let travel = Buf::OuterTravel((o % 2) as u8);
                let a = (o >= 2).then_some(travel);
                ops.push(Stream::Compute, OpKind::Add { dst: travel, a, b: Some(Buf::OuterScratch), rows, elems });
                ops.push(
                    Stream::Outer,
                    OpKind::SendRecv {
                        tensor: Tensor::DKv,
                        src: travel,
                        dst: Buf::OuterTravel(((o + 1) % 2) as u8),
                        rows,
                        send_to: self.peer_at(n + 1, t),
                        recv_from: self.peer_at(n - 1, t),
                        bytes,
                    },
                );
            }
        }
        if ro > 1 {
            let back = Buf::OuterTravel((ro % 2) as u8);
            ops.push(Stream::Compute, OpKind::Add { dst: Buf::DKvh, a: Some(Buf::DKvh), b: Some(back), rows, elems });
        }
    }

    /// Gradients of the queries, keys and values back to the sequence shards, in bf16.
    fn send_gradients_back(&self, ops: &mut Ops) {
        let q_elems = u64::from(self.slot_rows()) * u64::from(self.heads.q_heads) * u64::from(self.dims.head_dim);
        let kv_elems = self.kv_elems(self.slot_rows());
        if self.u() == 1 {
            ops.push(Stream::Compute, OpKind::Cast { src: Buf::DQh, dst: Buf::DQ, elems: q_elems });
            ops.push(Stream::Compute, OpKind::Cast { src: Buf::DKvh, dst: Buf::DKv, elems: kv_elems });
            return;
        }
        ops.push(Stream::Compute, OpKind::Cast { src: Buf::DQh, dst: Buf::DQhb, elems: q_elems });
        ops.push(Stream::Compute, self.a2a(Tensor::DQ, A2aDir::ToSeq, Buf::DQhb, Buf::DQ));
        ops.push(Stream::Compute, OpKind::Cast { src: Buf::DKvh, dst: Buf::DKvhb, elems: kv_elems });
        if self.replicated() {
            ops.push(Stream::Compute, self.a2a(Tensor::DK, A2aDir::ToSeqReplicas, Buf::DKvhb, Buf::DKvRecv));
            ops.push(Stream::Compute, self.a2a(Tensor::DV, A2aDir::ToSeqReplicas, Buf::DKvhb, Buf::DKvRecv));
            let elems = u64::from(self.gv.shard_rows) * u64::from(self.dims.kv_heads) * u64::from(self.dims.head_dim) * 2;
            ops.push(Stream::Compute, OpKind::SumReplicas { src: Buf::DKvRecv, dst: Buf::DKv, elems });
        } else {
            ops.push(Stream::Compute, self.a2a(Tensor::DK, A2aDir::ToSeq, Buf::DKvhb, Buf::DKv));
            ops.push(Stream::Compute, self.a2a(Tensor::DV, A2aDir::ToSeq, Buf::DKvhb, Buf::DKv));
        }
    }
}

/// The part of a training step a block of ops belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// One transformer layer's forward (repeated for every layer).
    LayerForward,
    /// One layer's forward recomputed before its backward (activation checkpointing).
    LayerRecompute,
    /// The output projection (logits) forward and backward.
    Head,
    /// One transformer layer's backward (repeated for every layer).
    LayerBackward,
    /// The data-parallel gradient reduction at the end of the step.
    GradSync,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::LayerForward => "layer forward",
            Phase::LayerRecompute => "layer recompute",
            Phase::Head => "output head",
            Phase::LayerBackward => "layer backward",
            Phase::GradSync => "gradient sync",
        }
    }
}

/// Ops that run in order on one rank, `repeat` times back to back. Streams are joined at the
/// start and end of a block, so waits never cross blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub phase: Phase,
    pub microbatch: Option<usize>,
    pub repeat: u32,
    pub ops: Vec<Op>,
}

impl Block {
    /// The sum of the ops' predictions times `repeat`, if every op is priced (streams overlap,
    /// so this is an upper bound of the block's predicted time).
    pub fn predicted_serial_s(&self) -> Option<f64> {
        let one: Option<f64> = self.ops.iter().filter(|o| !is_skipped(o)).map(|o| o.predicted_s).sum();
        one.map(|t| t * f64::from(self.repeat))
    }
}

fn is_skipped(op: &Op) -> bool {
    matches!(&op.kind, OpKind::AttnFwd(a) | OpKind::AttnBwd(a) if a.skip)
}

/// A group of one micro-batch, as the schedule runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRun {
    pub index: usize,
    pub shape: GroupShape,
    /// Global ranks, local-rank order.
    pub ranks: Vec<u32>,
    /// Double ring: slots per node.
    pub inner: u32,
    pub documents: usize,
    pub tokens: u64,
    pub varlen: GroupVarlen,
    pub predicted_s: f64,
    /// The steps of the group's workload its ranks' ops are tagged with (`Op::at`).
    pub steps: Vec<Outline>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroRun {
    pub index: usize,
    pub predicted_s: f64,
    pub groups: Vec<GroupRun>,
}

/// Where a rank sits in one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub group: usize,
    pub local_rank: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankSchedule {
    pub rank: u32,
    pub node: u32,
    /// Per micro-batch.
    pub membership: Vec<Membership>,
    pub blocks: Vec<Block>,
}

/// Every rank's ops for one batch of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub batch: usize,
    pub world: u32,
    pub model: ModelShape,
    pub cluster: Cluster,
    pub predicted_step_s: f64,
    pub microbatches: Vec<MicroRun>,
    pub ranks: Vec<RankSchedule>,
}

impl Schedule {
    /// The schedules of batch `index` of `plan`, or of every batch.
    pub fn for_plan(plan: &Plan, index: Option<usize>, tiling: Tiling) -> Result<Vec<Schedule>> {
        match index {
            Some(k) => {
                let batch = plan.batches.iter().find(|b| b.index == k).ok_or_else(|| {
                    let known: Vec<String> = plan.batches.iter().map(|b| b.index.to_string()).collect();
                    Error::invalid(
                        format!("the plan has no batch {k}"),
                        format!("its batches are {}", if known.is_empty() { "none".to_string() } else { known.join(", ") }),
                    )
                })?;
                Ok(vec![Schedule::build(plan, batch, tiling)?])
            }
            None => plan.batches.iter().map(|b| Schedule::build(plan, b, tiling)).collect(),
        }
    }

    /// Lays out one batch: every micro-batch's groups must cover every GPU exactly once.
    pub fn build(plan: &Plan, batch: &BatchPlan, tiling: Tiling) -> Result<Schedule> {
        // The schedule lays softmax attention out for every layer; a linear layer's chunk
        // products and state exchanges are not laid out or executed yet (issue 17).
        let (_, linear) = plan.model.layer_counts();
        if linear > 0 {
            return Err(Error::invalid(
                format!("{} has {linear} linear-attention layers, which validate cannot lay out or run yet", plan.model.name),
                "validate runs softmax-attention plans; predict, tune and simulate price linear and hybrid models",
            ));
        }
        let cm = runnable(plan)?;
        let model = &plan.model;
        let cluster = &plan.cluster;
        let world = cluster.gpus();
        let dp_peers: Vec<u32> = (0..world).collect();
        let gpn = cluster.gpus_per_node.max(1);
        let dims = AttnDims::of(model);
        let mut ranks: Vec<RankSchedule> = (0..world)
            .map(|rank| RankSchedule {
                rank,
                node: rank / gpn,
                membership: Vec::new(),
                blocks: Vec::new(),
            })
            .collect();
        let mut microbatches = Vec::new();
        for (m, mb) in batch.microbatches.iter().enumerate() {
            let at = |g: usize| format!("batch {} micro-batch {m} group {g}", batch.index);
            let mut owner: Vec<Option<usize>> = vec![None; world as usize];
            let mut groups = Vec::new();
            for (g, group) in mb.groups.iter().enumerate() {
                let shape = group.shape();
                for &r in &group.ranks {
                    let slot = owner.get_mut(r as usize).ok_or_else(|| {
                        Error::invalid(format!("{}: rank {r} is outside the cluster's {world} GPUs", at(g)), "regenerate the plan for this cluster")
                    })?;
                    if let Some(other) = slot.replace(g) {
                        return Err(Error::invalid(format!("{}: rank {r} is also in group {other}", at(g)), "every GPU is in exactly one group per micro-batch"));
                    }
                }
                let context = |e: Error| Error::invalid(format!("{}: {e}", at(g)), "regenerate the plan");
                let varlen = GroupVarlen::from_rank_layouts(&shape, &group.doc_lengths(), &group.rank_layouts).map_err(context)?;
                if group.ranks.len() != shape.size() as usize {
                    return Err(Error::invalid(format!("{}: {} ranks for a {shape} group", at(g), group.ranks.len()), "regenerate the plan"));
                }
                let inner = inner_ring(&shape, &group.ranks, cluster.gpus_per_domain().max(1)).map_err(context)?;
                let attn = group_attention(&varlen, dims, &group.ranks, inner, tiling).map_err(context)?;
                let work = cm.workload(&shape, &[group.doc_lengths()], Scope::Step);
                for (q, (ops, &rank)) in attn.iter().zip(&group.ranks).enumerate() {
                    let rs = &mut ranks[rank as usize];
                    rs.membership.push(Membership { group: g, local_rank: q as u32 });
                    let slot = q / shape.ulysses.max(1) as usize;
                    rs.blocks.extend(program::group_blocks(&work, m, slot, ops, &dp_peers).map_err(context)?);
                }
                groups.push(GroupRun {
                    index: g,
                    shape,
                    ranks: group.ranks.clone(),
                    inner,
                    documents: group.docs.len(),
                    tokens: group.docs.iter().map(|d| u64::from(d.len)).sum(),
                    varlen,
                    predicted_s: group.predicted_time_s,
                    steps: program::outline(&work.steps),
                });
            }
            if let Some(idle) = owner.iter().position(Option::is_none) {
                return Err(Error::invalid(
                    format!("batch {} micro-batch {m}: rank {idle} is in no group", batch.index),
                    "every GPU is in exactly one group per micro-batch",
                ));
            }
            microbatches.push(MicroRun {
                index: m,
                predicted_s: mb.predicted_time_s,
                groups,
            });
        }
        let sync = sync_ops(&cm, &dp_peers);
        for rs in &mut ranks {
            rs.blocks.push(Block { phase: Phase::GradSync, microbatch: None, repeat: 1, ops: sync.clone() });
        }
        Ok(Schedule {
            batch: batch.index,
            world,
            model: model.clone(),
            cluster: cluster.clone(),
            predicted_step_s: batch.predicted_step_s,
            microbatches,
            ranks,
        })
    }

    /// Fills each op's `predicted_s` with what `pricer` says (ops it does not know stay empty).
    pub fn price(&mut self, pricer: &dyn Pricer) {
        // The cost model's unit: NVLink domains, not hosts.
        let gpn = self.cluster.gpus_per_domain().max(1);
        for rs in &mut self.ranks {
            for block in &mut rs.blocks {
                let group = block.microbatch.map(|m| {
                    let mem = rs.membership[m];
                    self.microbatches[m].groups[mem.group].shape
                });
                for op in &mut block.ops {
                    let mut members = op.kind.peers(rs.rank);
                    members.push(rs.rank);
                    members.sort_unstable();
                    members.dedup();
                    let nodes = {
                        let mut n: Vec<u32> = members.iter().map(|r| r / gpn).collect();
                        n.dedup();
                        n.len() as u32
                    };
                    let ctx = PriceContext {
                        model: &self.model,
                        cluster: &self.cluster,
                        rank: rs.rank,
                        group,
                        ranks: members.len() as u32,
                        nodes,
                    };
                    op.predicted_s = pricer.price(op, &ctx);
                }
            }
        }
    }
}

/// The double ring's slots per NVLink domain, from where the group's ranks sit.
fn inner_ring(shape: &GroupShape, ranks: &[u32], gpus_per_node: u32) -> Result<u32> {
    if shape.scheme != Scheme::DoubleRing {
        return Ok(shape.ring);
    }
    let u = shape.ulysses as usize;
    let node_of_slot: Vec<u32> = (0..shape.ring as usize).map(|s| ranks[s * u] / gpus_per_node).collect();
    let inner = node_of_slot.iter().take_while(|&&n| n == node_of_slot[0]).count() as u32;
    let uniform = node_of_slot.chunks(inner as usize).all(|c| c.iter().all(|&n| n == c[0]));
    if shape.ring % inner != 0 || !uniform {
        return Err(Error::invalid(
            format!("the double ring's slots sit on nodes {node_of_slot:?}: not the same number of whole slots on every node"),
            "groups larger than a node must be whole nodes",
        ));
    }
    Ok(inner)
}

/// The cost model of a plan, if the executor can run what it describes: one GPU per SP rank
/// (no tensor parallelism), bf16 GEMMs, the backward pass, Q, K and V in three all-to-alls, and
/// ZeRO over every GPU. Anything else is refused rather than run differently.
fn runnable(plan: &Plan) -> Result<CostModel> {
    let t = &plan.train;
    let world = plan.cluster.gpus();
    let refuse = |what: String| Err(Error::invalid(format!("validate cannot run this plan: {what}"), "plan with --tp 1 and the default dtype, or run it in a framework"));
    if t.tp != 1 {
        return refuse(format!("tensor parallelism (tp = {}) is not implemented by the executor", t.tp));
    }
    if t.dtype != Dtype::Bf16 {
        return refuse(format!("its GEMMs are {}; the executor runs bf16", t.dtype.name()));
    }
    if !t.backward {
        return refuse("it prices the forward pass only; the executor runs a training step".into());
    }
    if t.qkv_packed {
        return refuse("Q, K and V cross the all-to-all packed; the executor sends three tensors".into());
    }
    if let Some(dp) = t.data_parallel_gpus.filter(|&dp| dp != world) {
        return refuse(format!("ZeRO shards over {dp} GPUs, not the plan's {world}"));
    }
    CostModel::new(plan.model.clone(), plan.cluster.clone(), t.clone())
}

/// The step-level synchronisation after the last micro-batch, on the data stream: the
/// collectives of `CostModel::sync_transfers` (the overlappable one first), then the optimizer.
fn sync_ops(cm: &CostModel, peers: &[u32]) -> Vec<Op> {
    let (overlapped, after) = cm.sync_transfers(peers.len() as u32);
    let mut ops: Vec<Op> = overlapped
        .into_iter()
        .chain(after)
        .map(|t| {
            let bytes = t.bytes.round() as u64;
            let tensor = if t.collective == Collective::AllGather { Tensor::Weights } else { Tensor::Grads };
            let kind = OpKind::DataParallel {
                collective: t.collective,
                tensor,
                peers: peers.to_vec(),
                bytes,
                bucket_bytes: GRAD_BUCKET_BYTES.min(bytes).max(1),
            };
            Op { work: Some(Work::Transfer(t)), ..Op::new(Stream::Data, kind) }
        })
        .collect();
    let optimizer = Kernel::Memory { traffic: Traffic::Optimizer, bytes: cm.optimizer_bytes(peers.len() as u32) };
    let mut step = Op { work: Some(Work::Kernel(optimizer)), ..Op::new(Stream::Compute, OpKind::Memory { name: "optimizer".into(), bytes: cm.optimizer_bytes(peers.len() as u32).round() as u64 }) };
    // The optimizer waits for the gradients (and the weights' gather waits for the optimizer).
    step.waits = (0..ops.len()).filter(|&i| ops[i].kind.collective().is_some_and(|c| c.0 != Collective::AllGather)).collect();
    let at = ops.iter().position(|o| matches!(o.kind, OpKind::DataParallel { collective: Collective::AllGather, .. })).unwrap_or(ops.len());
    ops.insert(at, step);
    if at + 1 < ops.len() {
        ops[at + 1].waits = vec![at];
    }
    ops
}

/// What a pricer knows about an op besides the op itself.
pub struct PriceContext<'a> {
    pub model: &'a ModelShape,
    pub cluster: &'a Cluster,
    pub rank: u32,
    /// The group the op belongs to (none for the gradient sync).
    pub group: Option<GroupShape>,
    /// Ranks taking part (1 for a kernel) and the nodes they span.
    pub ranks: u32,
    pub nodes: u32,
}

/// Prices ops: the cost model plugs in here. `None` means "no prediction for this op".
pub trait Pricer {
    fn price(&self, op: &Op, ctx: &PriceContext) -> Option<f64>;
}

/// The lock-step combination of a step: compute and transfer side by side, or one after the other.
fn combine(overlapped: bool, compute_s: f64, transfer_s: f64) -> f64 {
    if overlapped {
        compute_s.max(transfer_s)
    } else {
        compute_s + transfer_s
    }
}

/// Per step (and inner step): each rank's time on the compute stream and on the others.
type StepTimes = BTreeMap<StepAt, Vec<(f64, f64)>>;

/// A step's time from its ranks' ops: the slowest rank's compute stream (with its inner steps),
/// combined with the slowest rank's other streams as the step's transfer.
fn step_time_s(outline: &Outline, at: StepAt, times: &StepTimes) -> f64 {
    let (serial, side) = times.get(&at).map_or((0.0, 0.0), |v| {
        v.iter().fold((0.0f64, 0.0f64), |(a, b), &(s, o)| (a.max(s), b.max(o)))
    });
    let inner: f64 = outline
        .inner
        .iter()
        .enumerate()
        .map(|(k, o)| step_time_s(o, StepAt { step: at.step, inner: Some(k as u32) }, times))
        .sum();
    combine(outline.overlapped, serial + inner, side)
}

impl Schedule {
    /// Group `g` of micro-batch `m` priced from its ranks' priced ops as the cost model prices a
    /// workload: step after step in lock step, each step's compute the slowest rank's, its
    /// transfer beside or before it. Returns (the micro-batch, its layer forward), or None when an
    /// op is unpriced or untagged.
    pub fn group_time_s(&self, m: usize, g: usize) -> Option<(f64, f64)> {
        let group = self.microbatches.get(m)?.groups.get(g)?;
        let blocks: Vec<Vec<&Block>> =
            group.ranks.iter().map(|&r| self.ranks[r as usize].blocks.iter().filter(|b| b.microbatch == Some(m)).collect()).collect();
        let (mut total, mut forward) = (0.0, 0.0);
        for bi in 0..blocks.first()?.len() {
            let mut times: StepTimes = BTreeMap::new();
            for (q, rank) in blocks.iter().enumerate() {
                for op in &rank.get(bi)?.ops {
                    let at = op.at?;
                    let t = if is_skipped(op) { 0.0 } else { op.predicted_s? };
                    let e = times.entry(at).or_insert_with(|| vec![(0.0, 0.0); blocks.len()]);
                    if op.stream == Stream::Compute {
                        e[q].0 += t;
                    } else {
                        e[q].1 += t;
                    }
                }
            }
            let mut steps: Vec<u32> = times.keys().map(|a| a.step).collect();
            steps.dedup();
            let one: f64 = steps
                .iter()
                .map(|&k| group.steps.get(k as usize).map(|o| step_time_s(o, StepAt { step: k, inner: None }, &times)))
                .sum::<Option<f64>>()?;
            let block = blocks[0][bi];
            let t = one * f64::from(block.repeat);
            total += t;
            if block.phase == Phase::LayerForward {
                forward += t;
            }
        }
        Some((total, forward))
    }

    /// The step priced from the schedule: every micro-batch's slowest group, then the gradient
    /// synchronisation's exposed part and the optimizer (`CostModel::sync_cost`), hidden behind
    /// the last micro-batch's backward as the cost model hides it, times the stack's fitted
    /// factor. None when an op is unpriced.
    pub fn schedule_step_s(&self, cm: &CostModel) -> Option<f64> {
        let mut busy = 0.0;
        let mut last_backward = 0.0;
        for (m, mb) in self.microbatches.iter().enumerate() {
            let times: Vec<(f64, f64)> = (0..mb.groups.len()).map(|g| self.group_time_s(m, g)).collect::<Option<_>>()?;
            let end = times.iter().map(|t| t.0).fold(0.0, f64::max);
            let start = times.iter().map(|t| t.1).fold(0.0, f64::max);
            busy += end;
            last_backward = end - start;
        }
        let sync = self.ranks.first()?.blocks.iter().find(|b| b.phase == Phase::GradSync)?;
        let (mut overlappable, mut gather, mut optimizer) = (0.0, 0.0, 0.0);
        for op in &sync.ops {
            let t = op.predicted_s?;
            match op.kind.collective() {
                Some((Collective::AllGather, _, _)) => gather += t,
                Some(_) => overlappable += t,
                None => optimizer += t,
            }
        }
        // The ops are priced as kernels and collectives alone; a whole step carries the stack's
        // fitted factor on every term (`CostModel::step_factor`), and the sum is linear in them.
        Some(cm.step_factor() * (busy + cm.sync_cost(overlappable, gather, optimizer, last_backward).exposed_s))
    }
}

