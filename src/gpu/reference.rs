//! The CPU reference executor: a group's attention schedule run with real numbers.
//!
//! Every rank's shard is filled from the layout's slots (where the data loader puts each token),
//! independently of the plan's `cu_seqlens`; the kernels read it through the metadata derived
//! from the plan's per-rank layouts. The all-to-alls, ring send/recvs, all-gathers and
//! reduce-scatters move data between ranks exactly as the schedule says (peers, buffers, rows),
//! and the attention calls run the kernels' algorithm ([`super::attention`]) in f32. The gathered
//! outputs and gradients are compared with single-device document-masked causal attention in
//! f64. Along the way it checks that ranks agree on every exchange, that the bytes the schedule
//! declares are the bytes moved, and that the streams' waits order every conflicting access.
//!
//! Casts to bf16 are kept exact here (the buffers stay f32) so that the comparison isolates the
//! layout and the schedule; bf16 rounding is the GPU check's business.
//!
//! [`linear`] is its twin for linear-attention layers: the LASP schemes' shards and state
//! exchanges against single-device causal linear attention.

use super::attention::{self, Grads, HeadMap, Tensors, TileCount, Tiling};
use super::schedule::{group_attention, A2aDir, AttnDims, AttnOps, Buf, MetaRef, Op, OpKind, Stream, Tensor, BF16_BYTES, F32_BYTES};
use super::varlen::{GroupVarlen, VarlenMeta};
use crate::plan::RankLayout;
use crate::scheme::{layout, GroupLayout, GroupShape, HsapParams};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

pub mod linear;

/// One test case: a group, its packed documents and the model's attention shape.
#[derive(Debug, Clone)]
pub struct Problem {
    pub shape: GroupShape,
    pub docs: Vec<u32>,
    pub dims: AttnDims,
    /// Slots per node for the double ring.
    pub inner: u32,
    pub hsap: HsapParams,
    pub tiling: Tiling,
    pub seed: u64,
}

/// A transfer between two ranks (local ranks of the group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: u32,
    pub to: u32,
    pub tensor: Tensor,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// max |x - x_ref| / max |x_ref| of the attention output and of the three gradients.
    pub out_error: f64,
    pub dq_error: f64,
    pub dk_error: f64,
    pub dv_error: f64,
    /// Attention kernel calls made and skipped (forward and backward, all ranks).
    pub calls: usize,
    pub skipped: usize,
    pub tiles: TileCount,
    /// Every point-to-point transfer of the ring phases (all-to-alls and all-gathers excluded).
    pub ring_messages: Vec<Message>,
    pub layout: GroupLayout,
    pub varlen: GroupVarlen,
    pub ops: Vec<AttnOps>,
}

impl Outcome {
    pub fn max_error(&self) -> f64 {
        self.out_error.max(self.dq_error).max(self.dk_error).max(self.dv_error)
    }
}

/// A rank's tensor: `halves x rows x heads x dim` f32, NaN where nothing was written (so a read
/// of padding or of a value never sent poisons the result).
#[derive(Debug, Clone)]
struct T {
    rows: usize,
    heads: usize,
    dim: usize,
    halves: usize,
    data: Vec<f32>,
}

impl T {
    fn new(rows: usize, heads: usize, dim: usize, halves: usize) -> T {
        T {
            rows,
            heads,
            dim,
            halves,
            data: vec![f32::NAN; halves * rows * heads * dim],
        }
    }

    fn half(&self, h: usize) -> &[f32] {
        let n = self.rows * self.heads * self.dim;
        &self.data[h * n..(h + 1) * n]
    }

    fn half_mut(&mut self, h: usize) -> &mut [f32] {
        let n = self.rows * self.heads * self.dim;
        &mut self.data[h * n..(h + 1) * n]
    }

    fn at(&self, h: usize, row: usize, head: usize) -> usize {
        ((h * self.rows + row) * self.heads + head) * self.dim
    }

    /// Copies `heads` heads of rows `rows` starting at `head0` of half `h` into a new tensor.
    fn slice(&self, h: usize, rows: std::ops::Range<usize>, head0: usize, heads: usize) -> T {
        let mut out = T::new(rows.len(), heads, self.dim, 1);
        for (r, row) in rows.enumerate() {
            for k in 0..heads {
                let (src, dst) = (self.at(h, row, head0 + k), out.at(0, r, k));
                out.data[dst..dst + self.dim].copy_from_slice(&self.data[src..src + self.dim]);
            }
        }
        out
    }

    /// Writes `part` (one half) at rows from `row0` and heads from `head0` of half `h`.
    fn put(&mut self, h: usize, row0: usize, head0: usize, part: &T) {
        for r in 0..part.rows {
            for k in 0..part.heads {
                let (src, dst) = (part.at(0, r, k), self.at(h, row0 + r, head0 + k));
                self.data[dst..dst + self.dim].copy_from_slice(&part.data[src..src + self.dim]);
            }
        }
    }

    /// The first `rows` rows of every half.
    fn prefix(&self, rows: usize) -> T {
        let mut out = T::new(rows, self.heads, self.dim, self.halves);
        for h in 0..self.halves {
            let n = rows * self.heads * self.dim;
            out.half_mut(h).copy_from_slice(&self.half(h)[..n]);
        }
        out
    }
}

/// Where every row of every rank's shard comes from, computed from the layout's slots (pieces,
/// their padding, the end padding, cut into `ulysses` equal parts): the data loader's view.
pub fn physical_rows(l: &GroupLayout) -> Vec<Vec<Option<(u32, u32)>>> {
    let u = l.shape.ulysses as usize;
    let mut out = Vec::new();
    for slot in &l.slots {
        let mut rows = Vec::new();
        for (piece, &pad) in slot.pieces.iter().zip(&slot.pad_after) {
            rows.extend(piece.positions().map(|p| Some((piece.doc, p))));
            rows.extend(std::iter::repeat_n(None, pad as usize));
        }
        rows.extend(std::iter::repeat_n(None, slot.padding as usize));
        let part = rows.len() / u;
        for i in 0..u {
            out.push(rows[i * part..(i + 1) * part].to_vec());
        }
    }
    out
}

/// Checks that the plan's per-rank layouts (through [`GroupVarlen`]) put every token on the row
/// the layout puts it: what a kernel reading by `cu_seqlens` needs.
pub fn check_cu_seqlens(gv: &GroupVarlen, physical: &[Vec<Option<(u32, u32)>>]) -> Result<(), String> {
    for (q, (meta, rows)) in gv.shards.iter().zip(physical).enumerate() {
        if meta.rows as usize != rows.len() {
            return Err(format!("rank {q}: the plan's layout has {} rows, the slot gives it {}", meta.rows, rows.len()));
        }
        let plan_rows = meta.row_tokens();
        if let Some(row) = (0..rows.len()).find(|&i| plan_rows[i] != rows[i]) {
            return Err(format!("rank {q} row {row}: cu_seqlens/token_ranges say {:?}, the layout holds {:?}", plan_rows[row], rows[row]));
        }
    }
    Ok(())
}

/// Global inputs: per packed token, `q`, `k`, `v` and the output gradient, bf16-exact values.
struct Inputs {
    offsets: Vec<usize>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
}

fn bf16_round(x: f32) -> f32 {
    let u = x.to_bits();
    f32::from_bits((u + 0x7fff + ((u >> 16) & 1)) & 0xffff_0000)
}

fn inputs(p: &Problem) -> Inputs {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(p.seed);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| bf16_round(rng.random_range(-1.0f32..1.0))).collect() };
    let n: usize = p.docs.iter().map(|&d| d as usize).sum();
    let (h, hk, d) = (p.dims.heads as usize, p.dims.kv_heads as usize, p.dims.head_dim as usize);
    let mut offsets = vec![0];
    for &len in &p.docs {
        offsets.push(offsets.last().copied().unwrap_or(0) + len as usize);
    }
    Inputs {
        offsets,
        q: draw(n * h * d),
        k: draw(n * hk * d),
        v: draw(n * hk * d),
        d_o: draw(n * h * d),
    }
}

/// Per-rank state of the interpreter.
struct Rank {
    local: u32,
    slot: u32,
    heads: HeadMap,
    bufs: HashMap<Buf, T>,
}

struct Ctx<'a> {
    p: &'a Problem,
    gv: &'a GroupVarlen,
    gathered: VarlenMeta,
    /// Key/value heads (first, count) of each Ulysses index.
    kv_heads: Vec<(usize, usize)>,
    scale: f32,
}

/// Runs `p` through its schedule and compares with f64 attention.
pub fn run(p: &Problem) -> Result<Outcome, String> {
    let l = layout(&p.shape, &p.docs, &p.hsap);
    let ranks: Vec<u32> = (0..p.shape.size()).collect();
    run_plan(p, &RankLayout::from_layout(&l, &ranks), true)
}

/// Runs `p` with the per-rank layouts a plan gives (which the kernels' metadata comes from),
/// while the data sits where the layout of `p` puts it. `check` first compares the two row by
/// row; without it, a wrong plan shows only in the numbers.
pub fn run_plan(p: &Problem, plan_layouts: &[RankLayout], check: bool) -> Result<Outcome, String> {
    let l = layout(&p.shape, &p.docs, &p.hsap);
    let g = p.shape.size();
    let ranks: Vec<u32> = (0..g).collect();
    let gv = GroupVarlen::from_rank_layouts(&p.shape, &p.docs, plan_layouts).map_err(|e| e.to_string())?;
    let physical = physical_rows(&l);
    if check {
        check_cu_seqlens(&gv, &physical)?;
    } else if gv.shard_rows as usize != physical[0].len() {
        return Err(format!("the plan's shards have {} rows, the layout's {}", gv.shard_rows, physical[0].len()));
    }
    let ops = group_attention(&gv, p.dims, &ranks, p.inner, p.tiling).map_err(|e| e.to_string())?;
    let x = inputs(p);
    let (u, dims) = (p.shape.ulysses, p.dims);
    let (h, hk, d) = (dims.heads as usize, dims.kv_heads as usize, dims.head_dim as usize);
    let ctx = Ctx {
        p,
        gv: &gv,
        gathered: gv.gathered(),
        kv_heads: (0..u)
            .map(|i| {
                let m = HeadMap::ulysses(dims.heads, dims.kv_heads, dims.head_dim, u, i);
                (m.kv_head0 as usize, m.kv_heads as usize)
            })
            .collect(),
        scale: 1.0 / (d as f32).sqrt(),
    };
    let mut state: Vec<Rank> = (0..g)
        .map(|q| {
            let rows = &physical[q as usize];
            let mut bufs = HashMap::new();
            let fill = |heads: usize, halves: usize, src: &[&Vec<f32>]| {
                let mut t = T::new(rows.len(), heads, d, halves);
                for (row, tok) in rows.iter().enumerate() {
                    let Some((doc, pos)) = tok else { continue };
                    let idx = x.offsets[*doc as usize] + *pos as usize;
                    for (half, s) in src.iter().enumerate() {
                        let at = t.at(half, row, 0);
                        t.data[at..at + heads * d].copy_from_slice(&s[idx * heads * d..(idx + 1) * heads * d]);
                    }
                }
                t
            };
            bufs.insert(Buf::Q, fill(h, 1, &[&x.q]));
            bufs.insert(Buf::Kv, fill(hk, 2, &[&x.k, &x.v]));
            bufs.insert(Buf::DO, fill(h, 1, &[&x.d_o]));
            Rank {
                local: q,
                slot: q / u,
                heads: HeadMap::ulysses(dims.heads, dims.kv_heads, dims.head_dim, u, q % u),
                bufs,
            }
        })
        .collect();
    let mut tally = Tally::default();
    let fwd: Vec<&[Op]> = ops.iter().map(|o| o.fwd.as_slice()).collect();
    let bwd: Vec<&[Op]> = ops.iter().map(|o| o.bwd.as_slice()).collect();
    for block in [fwd, bwd] {
        for (q, list) in block.iter().enumerate() {
            check_races(list).map_err(|e| format!("rank {q}: {e}"))?;
        }
        ctx.run_block(&mut state, &block, &mut tally)?;
    }
    let gather = |buf: Buf, heads: usize, half: usize| -> Result<Vec<f32>, String> {
        let n = *x.offsets.last().unwrap_or(&0);
        let mut out = vec![f32::NAN; n * heads * d];
        for (q, rows) in physical.iter().enumerate() {
            let t = state[q].bufs.get(&buf).ok_or_else(|| format!("rank {q} never produced {buf:?}"))?;
            for (row, tok) in rows.iter().enumerate() {
                let Some((doc, pos)) = tok else { continue };
                let idx = x.offsets[*doc as usize] + *pos as usize;
                let at = t.at(half, row, 0);
                out[idx * heads * d..(idx + 1) * heads * d].copy_from_slice(&t.data[at..at + heads * d]);
            }
        }
        Ok(out)
    };
    let truth = truth(p, &x);
    Ok(Outcome {
        out_error: rel_error(&gather(Buf::O, h, 0)?, &truth.o),
        dq_error: rel_error(&gather(Buf::DQ, h, 0)?, &truth.dq),
        dk_error: rel_error(&gather(Buf::DKv, hk, 0)?, &truth.dk),
        dv_error: rel_error(&gather(Buf::DKv, hk, 1)?, &truth.dv),
        calls: tally.calls,
        skipped: tally.skipped,
        tiles: tally.tiles,
        ring_messages: tally.messages,
        layout: l,
        varlen: gv.clone(),
        ops,
    })
}

#[derive(Default)]
struct Tally {
    calls: usize,
    skipped: usize,
    tiles: TileCount,
    messages: Vec<Message>,
}

/// max |x - ref| / max |ref|; NaN anywhere counts as infinitely wrong.
fn rel_error(x: &[f32], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0f64, |m, r| m.max(r.abs()));
    let worst = x.iter().zip(reference).fold(0f64, |m, (&a, &b)| {
        let e = (f64::from(a) - b).abs();
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    });
    if scale == 0.0 {
        worst
    } else {
        worst / scale
    }
}

impl Ctx<'_> {
    fn meta(&self, m: MetaRef) -> &VarlenMeta {
        m.resolve(self.gv, &self.gathered)
    }

    /// Runs one block on every rank: local ops in order, communication in lockstep (the n-th
    /// communication op of every rank together, which must agree).
    fn run_block(&self, state: &mut [Rank], block: &[&[Op]], tally: &mut Tally) -> Result<(), String> {
        let comm: Vec<Vec<usize>> = block
            .iter()
            .map(|ops| ops.iter().enumerate().filter(|(_, o)| o.kind.is_communication()).map(|(i, _)| i).collect())
            .collect();
        let n = comm[0].len();
        if comm.iter().any(|c| c.len() != n) {
            return Err(format!("ranks issue different numbers of collectives: {:?}", comm.iter().map(Vec::len).collect::<Vec<_>>()));
        }
        let mut pc = vec![0usize; block.len()];
        for k in 0..=n {
            for (q, ops) in block.iter().enumerate() {
                let stop = comm[q].get(k).copied().unwrap_or(ops.len());
                for op in &ops[pc[q]..stop] {
                    self.local(&mut state[q], &op.kind, tally)?;
                }
                pc[q] = stop + 1;
            }
            if k < n {
                let ops: Vec<&OpKind> = (0..block.len()).map(|q| &block[q][comm[q][k]].kind).collect();
                self.exchange(state, &ops, tally).map_err(|e| format!("collective #{k} ({}): {e}", ops[0].name()))?;
            }
        }
        Ok(())
    }

    fn local(&self, rank: &mut Rank, op: &OpKind, tally: &mut Tally) -> Result<(), String> {
        let (d, tiling) = (self.p.dims.head_dim as usize, &self.p.tiling);
        match op {
            OpKind::AttnFwd(a) | OpKind::AttnBwd(a) if a.skip => {
                tally.skipped += 1;
                Ok(())
            }
            OpKind::AttnFwd(a) => {
                let (qm, km) = (self.meta(a.q_meta), self.meta(a.k_meta));
                let mut o = rank.bufs.remove(&Buf::Oacc).unwrap_or_else(|| T::new(qm.rows as usize, a.heads.q_heads as usize, d, 1));
                let mut lse = rank.bufs.remove(&Buf::Lse).unwrap_or_else(|| T::new(qm.rows as usize, a.heads.q_heads as usize, 1, 1));
                let (q, kv) = (get(rank, a.q)?, get(rank, a.kv)?);
                shape_check(q, qm, "queries")?;
                shape_check(kv, km, "keys")?;
                let x = Tensors {
                    q: &q.data,
                    k: kv.half(0),
                    v: kv.half(1),
                };
                let c = attention::fwd(tiling, &a.heads, self.scale, qm, km, &x, &mut o.data, &mut lse.data, a.first);
                tally.calls += 1;
                tally.tiles += c;
                rank.bufs.insert(Buf::Oacc, o);
                rank.bufs.insert(Buf::Lse, lse);
                Ok(())
            }
            OpKind::AttnBwd(a) => {
                let (qm, km) = (self.meta(a.q_meta), self.meta(a.k_meta));
                let d_o = if a.q == Buf::Q { Buf::DO } else { Buf::DOh };
                let (q, kv) = (get(rank, a.q)?, get(rank, a.kv)?);
                shape_check(q, qm, "queries")?;
                shape_check(kv, km, "keys")?;
                let x = Tensors {
                    q: &q.data,
                    k: kv.half(0),
                    v: kv.half(1),
                };
                let grads = Grads {
                    d_o: &get(rank, d_o)?.data,
                    lse: &get(rank, Buf::Lse)?.data,
                    delta: &get(rank, Buf::Delta)?.data,
                };
                let mut dq = rank.bufs.get(&Buf::DQh).cloned().unwrap_or_else(|| T::new(qm.rows as usize, a.heads.q_heads as usize, d, 1));
                let c = attention::bwd_dq(tiling, &a.heads, self.scale, qm, km, &x, &grads, &mut dq.data, !a.first);
                let dkv_buf = a.dkv.ok_or("a backward call without a key/value gradient target")?;
                let mut dkv = rank
                    .bufs
                    .get(&dkv_buf)
                    .cloned()
                    .unwrap_or_else(|| T::new(km.rows as usize, a.heads.kv_heads as usize, d, 2));
                if dkv.rows != km.rows as usize {
                    return Err(format!("{dkv_buf:?} has {} rows, the keys {}", dkv.rows, km.rows));
                }
                let n = dkv.rows * dkv.heads * d;
                let (dk, dv) = dkv.data.split_at_mut(n);
                attention::bwd_dkdv(tiling, &a.heads, self.scale, qm, km, &x, &grads, dk, dv, a.dkv_accumulate);
                tally.calls += 1;
                tally.tiles += c;
                rank.bufs.insert(Buf::DQh, dq);
                rank.bufs.insert(dkv_buf, dkv);
                Ok(())
            }
            OpKind::BwdPreprocess { d_o, rows, heads } => {
                let mut delta = T::new(*rows as usize, *heads as usize, 1, 1);
                attention::bwd_preprocess(&rank.heads, *rows as usize, &get(rank, *d_o)?.data, &get(rank, Buf::Oacc)?.data, &mut delta.data);
                rank.bufs.insert(Buf::Delta, delta);
                Ok(())
            }
            OpKind::Cast { src, dst, .. } => {
                let t = get(rank, *src)?.clone();
                rank.bufs.insert(*dst, t);
                Ok(())
            }
            OpKind::Add { dst, a, b, rows, .. } => {
                // Operands are read before `dst` is replaced: `a` may be `dst` itself.
                let (a, b) = (a.map(|x| get(rank, x).cloned()).transpose()?, b.map(|x| get(rank, x).cloned()).transpose()?);
                let mut out = rank.bufs.remove(dst).unwrap_or_else(|| {
                    let heads = if dst.is_pair() { rank.heads.kv_heads } else { rank.heads.q_heads };
                    T::new(*rows as usize, heads as usize, d, if dst.is_pair() { 2 } else { 1 })
                });
                let n = *rows as usize * out.heads * d;
                for half in 0..out.halves {
                    let dst = &mut out.half_mut(half)[..n];
                    for (i, e) in dst.iter_mut().enumerate() {
                        *e = a.as_ref().map_or(0.0, |t| t.half(half)[i]) + b.as_ref().map_or(0.0, |t| t.half(half)[i]);
                    }
                }
                rank.bufs.insert(*dst, out);
                Ok(())
            }
            OpKind::SumReplicas { src, dst, .. } => {
                let recv = get(rank, *src)?;
                let rows = recv.rows;
                let mut out = T::new(rows, self.p.dims.kv_heads as usize, d, 2);
                out.data.iter_mut().for_each(|e| *e = 0.0);
                let mut at = 0;
                for &(head0, heads) in &self.kv_heads {
                    for half in 0..2 {
                        let part = recv.slice(half, 0..rows, at, heads);
                        for r in 0..rows {
                            for k in 0..heads {
                                let (s, t) = (part.at(0, r, k), out.at(half, r, head0 + k));
                                for e in 0..d {
                                    out.data[t + e] += part.data[s + e];
                                }
                            }
                        }
                    }
                    at += heads;
                }
                rank.bufs.insert(*dst, out);
                Ok(())
            }
            // GEMMs and memory-bound passes stand for work outside attention: nothing to compute.
            OpKind::Gemm { .. } | OpKind::Memory { .. } => Ok(()),
            other => Err(format!("{} is not a local op", other.name())),
        }
    }

    /// One collective, all ranks at once.
    fn exchange(&self, state: &mut [Rank], ops: &[&OpKind], tally: &mut Tally) -> Result<(), String> {
        let same_kind = ops.iter().all(|o| std::mem::discriminant(*o) == std::mem::discriminant(ops[0]));
        if !same_kind {
            return Err(format!("ranks disagree: {:?}", ops.iter().map(|o| o.name()).collect::<Vec<_>>()));
        }
        match ops[0] {
            OpKind::SendRecv { .. } => self.send_recv(state, ops, tally),
            OpKind::AllToAll { .. } => self.all_to_all(state, ops),
            OpKind::AllGather { .. } | OpKind::ReduceScatter { .. } => self.gather_scatter(state, ops),
            other => Err(format!("{} is not supported by the reference executor", other.name())),
        }
    }

    fn send_recv(&self, state: &mut [Rank], ops: &[&OpKind], tally: &mut Tally) -> Result<(), String> {
        let mut inbox: HashMap<(u32, u32), (T, Tensor, u64)> = HashMap::new();
        for (q, op) in ops.iter().enumerate() {
            let OpKind::SendRecv { tensor, src, rows, send_to, bytes, .. } = op else { unreachable!() };
            let data = get(&state[q], *src)?.prefix(*rows as usize);
            let elem = if *tensor == Tensor::DKv { F32_BYTES } else { BF16_BYTES };
            let moved = data.data.len() as u64 * elem;
            if moved != *bytes {
                return Err(format!("rank {q} sends {moved} bytes of {}, the schedule says {bytes}", tensor.name()));
            }
            inbox.insert((q as u32, *send_to), (data, *tensor, moved));
        }
        for (q, op) in ops.iter().enumerate() {
            let OpKind::SendRecv { dst, recv_from, .. } = op else { unreachable!() };
            let (data, tensor, bytes) = inbox
                .remove(&(*recv_from, q as u32))
                .ok_or_else(|| format!("rank {q} receives from {recv_from}, which does not send to it"))?;
            tally.messages.push(Message {
                from: *recv_from,
                to: q as u32,
                tensor,
                bytes,
            });
            state[q].bufs.insert(*dst, data);
        }
        Ok(())
    }

    fn all_to_all(&self, state: &mut [Rank], ops: &[&OpKind]) -> Result<(), String> {
        let (u, d) = (self.p.shape.ulysses as usize, self.p.dims.head_dim as usize);
        let shard = self.gv.shard_rows as usize;
        for slot in 0..self.p.shape.ring as usize {
            let members: Vec<usize> = (slot * u..(slot + 1) * u).collect();
            let mut out: Vec<T> = Vec::new();
            for (i, &q) in members.iter().enumerate() {
                let OpKind::AllToAll { tensor, dir, src, dst, peers, bytes } = ops[q] else { unreachable!() };
                if peers.iter().map(|&p| p as usize).collect::<Vec<_>>() != members {
                    return Err(format!("rank {q} all-to-alls with {peers:?}, its slot is {members:?}"));
                }
                let (q_heads, kv) = (self.p.dims.heads as usize / u, self.kv_heads[i]);
                let half = tensor.half().unwrap_or(0);
                // What this rank receives, assembled from every peer's send buffer.
                let mut recv = match (dir, tensor.half()) {
                    (A2aDir::ToHeads, None) => T::new(shard * u, q_heads, d, 1),
                    (A2aDir::ToHeads, Some(_)) => state[q].bufs.remove(dst).unwrap_or_else(|| T::new(shard * u, kv.1, d, 2)),
                    (A2aDir::ToSeq, None) => T::new(shard, self.p.dims.heads as usize, d, 1),
                    (A2aDir::ToSeq, Some(_)) => state[q].bufs.remove(dst).unwrap_or_else(|| T::new(shard, self.p.dims.kv_heads as usize, d, 2)),
                    (A2aDir::ToSeqReplicas, _) => {
                        let total = self.kv_heads.iter().map(|k| k.1).sum();
                        state[q].bufs.remove(dst).unwrap_or_else(|| T::new(shard, total, d, 2))
                    }
                };
                for (j, &peer) in members.iter().enumerate() {
                    let from = get(&state[peer], *src)?;
                    let (pkv0, pkv) = self.kv_heads[j];
                    let (part, row0, head0) = match (dir, tensor.half()) {
                        (A2aDir::ToHeads, None) => (from.slice(0, 0..shard, i * q_heads, q_heads), j * shard, 0),
                        (A2aDir::ToHeads, Some(h)) => (from.slice(h, 0..shard, kv.0, kv.1), j * shard, 0),
                        (A2aDir::ToSeq, None) => (from.slice(0, i * shard..(i + 1) * shard, 0, q_heads), 0, j * q_heads),
                        (A2aDir::ToSeq, Some(h)) => (from.slice(h, i * shard..(i + 1) * shard, 0, pkv), 0, pkv0),
                        (A2aDir::ToSeqReplicas, _) => {
                            let at: usize = self.kv_heads[..j].iter().map(|k| k.1).sum();
                            (from.slice(half, i * shard..(i + 1) * shard, 0, pkv), 0, at)
                        }
                    };
                    recv.put(half, row0, head0, &part);
                }
                // The schedule declares what this rank sends (nccl-tests' size for all-to-all).
                let declared = *bytes;
                let own_send: u64 = (0..u)
                    .map(|j| {
                        let heads = match (dir, tensor.half()) {
                            (A2aDir::ToHeads, None) | (A2aDir::ToSeq, None) => q_heads,
                            (A2aDir::ToHeads, Some(_)) => self.kv_heads[j].1,
                            _ => kv.1,
                        };
                        (shard * heads * d) as u64 * BF16_BYTES
                    })
                    .sum();
                if own_send != declared {
                    return Err(format!("rank {q} sends {own_send} bytes of {}, the schedule says {declared}", tensor.name()));
                }
                out.push(recv);
            }
            for (&q, recv) in members.iter().zip(out) {
                let OpKind::AllToAll { dst, .. } = ops[q] else { unreachable!() };
                state[q].bufs.insert(*dst, recv);
            }
        }
        Ok(())
    }

    fn gather_scatter(&self, state: &mut [Rank], ops: &[&OpKind]) -> Result<(), String> {
        let r = self.p.shape.ring as usize;
        let u = self.p.shape.ulysses as usize;
        for i in 0..u {
            let members: Vec<usize> = (0..r).map(|s| s * u + i).collect();
            let parts: Vec<T> = members
                .iter()
                .map(|&q| {
                    let (OpKind::AllGather { src, .. } | OpKind::ReduceScatter { src, .. }) = ops[q] else { unreachable!() };
                    get(&state[q], *src).cloned()
                })
                .collect::<Result<_, _>>()?;
            for (s, &q) in members.iter().enumerate() {
                match ops[q] {
                    OpKind::AllGather { dst, peers, bytes, .. } => {
                        check_peers(peers, &members, q)?;
                        let rows = parts[0].rows;
                        let mut t = T::new(rows * r, parts[0].heads, parts[0].dim, 2);
                        for (k, p) in parts.iter().enumerate() {
                            for half in 0..2 {
                                t.put(half, k * rows, 0, &p.slice(half, 0..rows, 0, p.heads));
                            }
                        }
                        let moved = t.data.len() as u64 * BF16_BYTES;
                        if moved != *bytes {
                            return Err(format!("all-gather output is {moved} bytes, the schedule says {bytes}"));
                        }
                        state[q].bufs.insert(*dst, t);
                    }
                    OpKind::ReduceScatter { dst, peers, bytes, .. } => {
                        check_peers(peers, &members, q)?;
                        let rows = parts[0].rows / r;
                        let moved = parts[0].data.len() as u64 * F32_BYTES;
                        if moved != *bytes {
                            return Err(format!("reduce-scatter input is {moved} bytes, the schedule says {bytes}"));
                        }
                        let mut t = T::new(rows, parts[0].heads, parts[0].dim, 2);
                        for half in 0..2 {
                            let mut sum = parts[0].slice(half, s * rows..(s + 1) * rows, 0, parts[0].heads);
                            for p in &parts[1..] {
                                let more = p.slice(half, s * rows..(s + 1) * rows, 0, p.heads);
                                sum.data.iter_mut().zip(&more.data).for_each(|(a, b)| *a += b);
                            }
                            t.put(half, 0, 0, &sum);
                        }
                        state[q].bufs.insert(*dst, t);
                    }
                    _ => unreachable!(),
                }
            }
        }
        Ok(())
    }
}

fn check_peers(peers: &[u32], members: &[usize], q: usize) -> Result<(), String> {
    if peers.iter().map(|&p| p as usize).collect::<Vec<_>>() != members {
        return Err(format!("rank {q} names peers {peers:?}; the ranks taking part are {members:?}"));
    }
    Ok(())
}

fn get(rank: &Rank, b: Buf) -> Result<&T, String> {
    rank.bufs.get(&b).ok_or_else(|| format!("rank {} (slot {}) reads {b:?} before anything wrote it", rank.local, rank.slot))
}

fn shape_check(t: &T, m: &VarlenMeta, what: &str) -> Result<(), String> {
    if t.rows != m.rows as usize {
        return Err(format!("the {what} buffer has {} rows, its metadata {}", t.rows, m.rows));
    }
    Ok(())
}

/// Checks that every pair of ops on different streams that touch the same buffer (one writing)
/// is ordered by the waits: then running the list in order and running it on streams agree.
pub fn check_races(ops: &[Op]) -> Result<(), String> {
    let idx = |s: Stream| Stream::ALL.iter().position(|&x| x == s).unwrap_or(0);
    const STREAMS: usize = Stream::ALL.len();
    let mut clock: Vec<[usize; STREAMS]> = Vec::with_capacity(ops.len());
    let mut seq = vec![0usize; ops.len()];
    let mut last_on = [None::<usize>; STREAMS];
    for (k, op) in ops.iter().enumerate() {
        let s = idx(op.stream);
        let mut c = last_on[s].map_or([0; STREAMS], |p| clock[p]);
        for &w in &op.waits {
            if w >= k {
                return Err(format!("op {k} waits for a later op {w}"));
            }
            for (a, b) in c.iter_mut().zip(clock[w]) {
                *a = (*a).max(b);
            }
        }
        c[s] += 1;
        seq[k] = c[s];
        clock.push(c);
        last_on[s] = Some(k);
    }
    let before = |a: usize, b: usize| clock[b][idx(ops[a].stream)] >= seq[a];
    let mut last_write: HashMap<Buf, usize> = HashMap::new();
    let mut reads: HashMap<Buf, Vec<usize>> = HashMap::new();
    for (k, op) in ops.iter().enumerate() {
        let (r, w) = op.kind.access();
        for b in r.iter().chain(&w) {
            if let Some(&prev) = last_write.get(b) {
                if !before(prev, k) {
                    return Err(format!("op {k} ({}) touches {b:?} written by op {prev} ({}) on another stream without waiting", op.kind.name(), ops[prev].kind.name()));
                }
            }
        }
        for b in &w {
            for &prev in reads.get(b).into_iter().flatten() {
                if !before(prev, k) {
                    return Err(format!("op {k} ({}) overwrites {b:?} while op {prev} ({}) may still read it", op.kind.name(), ops[prev].kind.name()));
                }
            }
        }
        for b in r {
            reads.entry(b).or_default().push(k);
        }
        for b in w {
            last_write.insert(b, k);
            reads.remove(&b);
        }
    }
    Ok(())
}

/// Single-device document-masked causal attention in f64, forward and backward.
struct Truth {
    o: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

fn truth(p: &Problem, x: &Inputs) -> Truth {
    let (h, hk, d) = (p.dims.heads as usize, p.dims.kv_heads as usize, p.dims.head_dim as usize);
    let group = h / hk;
    let n = *x.offsets.last().unwrap_or(&0);
    let scale = 1.0 / (d as f64).sqrt();
    let mut t = Truth {
        o: vec![0.0; n * h * d],
        dq: vec![0.0; n * h * d],
        dk: vec![0.0; n * hk * d],
        dv: vec![0.0; n * hk * d],
    };
    let qv = |i: usize, hh: usize| &x.q[(i * h + hh) * d..(i * h + hh + 1) * d];
    let dov = |i: usize, hh: usize| &x.d_o[(i * h + hh) * d..(i * h + hh + 1) * d];
    let kv = |j: usize, g: usize| &x.k[(j * hk + g) * d..(j * hk + g + 1) * d];
    let vv = |j: usize, g: usize| &x.v[(j * hk + g) * d..(j * hk + g + 1) * d];
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
    for w in x.offsets.windows(2) {
        let (start, end) = (w[0], w[1]);
        for hh in 0..h {
            let g = hh / group;
            for i in start..end {
                let s: Vec<f64> = (start..=i).map(|j| dot(qv(i, hh), kv(j, g)) * scale).collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let prob: Vec<f64> = e.iter().map(|v| v / z).collect();
                let mut o = vec![0f64; d];
                for (k, j) in (start..=i).enumerate() {
                    for (oe, ve) in o.iter_mut().zip(vv(j, g)) {
                        *oe += prob[k] * f64::from(*ve);
                    }
                }
                let delta: f64 = o.iter().zip(dov(i, hh)).map(|(a, b)| a * f64::from(*b)).sum();
                t.o[(i * h + hh) * d..(i * h + hh + 1) * d].copy_from_slice(&o);
                for (k, j) in (start..=i).enumerate() {
                    let dp = dot(dov(i, hh), vv(j, g));
                    let ds = prob[k] * (dp - delta);
                    for e in 0..d {
                        t.dq[(i * h + hh) * d + e] += scale * ds * f64::from(kv(j, g)[e]);
                        t.dk[(j * hk + g) * d + e] += scale * ds * f64::from(qv(i, hh)[e]);
                        t.dv[(j * hk + g) * d + e] += prob[k] * f64::from(dov(i, hh)[e]);
                    }
                }
            }
        }
    }
    t
}
