//! The CPU reference executor of the LASP schemes: a group's linear-attention shards run with
//! real numbers and their memory states exchanged, compared with single-device causal linear
//! attention over the packed documents in f64.
//!
//! As for softmax attention ([`super::run_plan`]), every rank's shard is filled from the layout's
//! slots (the data loader's view) and read through the varlen metadata derived from the plan's
//! per-rank layouts (`RankLayout`: token ranges and `cu_seqlens`), so a wrong plan shows. Each
//! rank runs the chunk kernel's CPU mirror ([`crate::gpu::linear_attention`]) twice, as the LASP
//! algorithms do: first from zero states, which gives the rank's local state (the state of its
//! last document run); then, after the exchange, from the state its first run needs when that
//! run continues a document of an earlier rank. The exchanges:
//!
//! - LASP-1 (arXiv 2404.02882, algorithms 2 and 3): rank `q` receives the state of the document
//!   it starts in from rank `q - 1`, and sends on `l^n M_in + M_local` when its whole shard
//!   continues that document (`n` its tokens), its local state otherwise: `r - 1` hops, one after
//!   another.
//! - LASP-2 (arXiv 2502.07563, algorithms 1 and 2; LASP-2H's linear layers): one all-gather of
//!   every rank's local state; rank `q` sums, over the earlier ranks that hold the document it
//!   starts in, their local states decayed by the document's tokens between them and `q`.
//!
//! A document boundary resets the state: a document's first run starts from zero whatever
//! arrives. Only the forward pass is executed; the backward sends state gradients the other way
//! with the same prefix structure. Gated DeltaNet's delta rule is not executed (its WY form is
//! priced, not computed here): basic linear attention and lightning attention's per-head decay are.

use super::{check_cu_seqlens, physical_rows, rel_error};
use crate::gpu::linear_attention::{self, state_len, ChunkInputs};
use crate::gpu::varlen::{GroupVarlen, VarlenMeta, NO_DOC};
use crate::model::{LinearAttention, LinearVariant};
use crate::plan::RankLayout;
use crate::scheme::{layout, GroupLayout, GroupShape, HsapParams, RingVariant, Scheme};
use rand::{Rng, SeedableRng};

/// One test case: a LASP group of `ring` ranks, its packed documents, the linear layers' shape.
#[derive(Debug, Clone)]
pub struct LinearProblem {
    /// [`Scheme::Lasp1`], [`Scheme::Lasp2`] or [`Scheme::Lasp2h`] (whose linear layers are LASP-2's).
    pub scheme: Scheme,
    pub ring: u32,
    pub docs: Vec<u32>,
    pub la: LinearAttention,
    /// Per head: the decay `l` in (0, 1]; all 1 for the basic variant.
    pub decay: Vec<f32>,
    pub seed: u64,
}

impl LinearProblem {
    pub fn shape(&self) -> GroupShape {
        GroupShape {
            scheme: self.scheme,
            ulysses: 1,
            ring: self.ring,
            variant: RingVariant::Basic,
        }
    }
}

/// A memory state sent from one rank to another (LASP-1's hops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMessage {
    pub from: u32,
    pub to: u32,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LinearOutcome {
    /// max |o - o_ref| / max |o_ref| over every real token and head.
    pub out_error: f64,
    /// LASP-1's point-to-point hops, in the order they happen.
    pub messages: Vec<StateMessage>,
    /// LASP-2's all-gather: the bytes every rank ends with (all ranks' states), 0 for LASP-1.
    pub gathered_bytes: u64,
    /// Ranks whose first run started from a delivered (non-reset) state.
    pub continued: usize,
    pub layout: GroupLayout,
    pub varlen: GroupVarlen,
}

/// Global inputs, per packed token and head: bf16-exact values, like the softmax executor's.
pub struct LinearInputs {
    pub offsets: Vec<usize>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl LinearInputs {
    pub fn random(p: &LinearProblem) -> LinearInputs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(p.seed);
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| super::bf16_round(rng.random_range(-1.0f32..1.0))).collect() };
        let n: usize = p.docs.iter().map(|&d| d as usize).sum();
        let (h, dk, dv) = (p.la.heads as usize, p.la.key_dim as usize, p.la.value_dim as usize);
        LinearInputs {
            offsets: offsets(&p.docs),
            q: draw(n * h * dk),
            k: draw(n * h * dk),
            v: draw(n * h * dv),
        }
    }
}

fn offsets(docs: &[u32]) -> Vec<usize> {
    std::iter::once(0)
        .chain(docs.iter().scan(0usize, |at, &d| {
            *at += d as usize;
            Some(*at)
        }))
        .collect()
}

/// The scheme, the variant and the decays: basic linear attention has none (every `l` is 1);
/// lightning attention's are the caller's (a model gives no figure; tests draw them).
fn check_problem(p: &LinearProblem) -> Result<(), String> {
    if !p.scheme.is_lasp() {
        return Err(format!("{} is not a LASP scheme", p.scheme.name()));
    }
    if p.la.variant == LinearVariant::GatedDelta {
        return Err("the reference executes basic and lightning linear attention; Gated DeltaNet's delta rule is not implemented".into());
    }
    if p.decay.len() != p.la.heads as usize {
        return Err(format!("{} decays for {} heads", p.decay.len(), p.la.heads));
    }
    if p.la.variant == LinearVariant::Basic && p.decay.iter().any(|&l| l != 1.0) {
        return Err("basic linear attention has no decay (every l = 1)".into());
    }
    if p.decay.iter().any(|&l| !(l > 0.0 && l <= 1.0)) {
        return Err(format!("decays {:?} outside (0, 1]", p.decay));
    }
    Ok(())
}

/// Runs `p` over its own layout (`scheme::layout`, as the planner writes it) with random inputs.
pub fn run(p: &LinearProblem) -> Result<LinearOutcome, String> {
    let l = layout(&p.shape(), &p.docs, &HsapParams::default());
    let ranks: Vec<u32> = (0..p.ring).collect();
    run_plan(p, &RankLayout::from_layout(&l, &ranks), &LinearInputs::random(p), true)
}

/// Runs `p` with the per-rank layouts a plan gives (the kernels' metadata comes from them) while
/// the data sits where the layout of `p` puts it; `check` first compares the two row by row.
pub fn run_plan(p: &LinearProblem, plan_layouts: &[RankLayout], x: &LinearInputs, check: bool) -> Result<LinearOutcome, String> {
    check_problem(p)?;
    let shape = p.shape();
    let l = layout(&shape, &p.docs, &HsapParams::default());
    let gv = GroupVarlen::from_rank_layouts(&shape, &p.docs, plan_layouts).map_err(|e| e.to_string())?;
    let physical = physical_rows(&l);
    if check {
        check_cu_seqlens(&gv, &physical)?;
    } else if gv.shard_rows as usize != physical[0].len() {
        return Err(format!("the plan's shards have {} rows, the layout's {}", gv.shard_rows, physical[0].len()));
    }
    let la = &p.la;
    let (h, dk, dv) = (la.heads as usize, la.key_dim as usize, la.value_dim as usize);
    // Each rank's shard, filled from where the layout puts every token.
    let shards: Vec<[Vec<f32>; 3]> = physical
        .iter()
        .map(|rows| {
            let fill = |src: &[f32], width: usize| {
                let mut t = vec![f32::NAN; rows.len() * h * width];
                for (row, tok) in rows.iter().enumerate() {
                    let Some((doc, pos)) = tok else { continue };
                    let idx = x.offsets[*doc as usize] + *pos as usize;
                    t[row * h * width..(row + 1) * h * width].copy_from_slice(&src[idx * h * width..(idx + 1) * h * width]);
                }
                t
            };
            [fill(&x.q, dk), fill(&x.k, dk), fill(&x.v, dv)]
        })
        .collect();
    let inputs = |q: usize| ChunkInputs {
        q: &shards[q][0],
        k: &shards[q][1],
        v: &shards[q][2],
        decay: &p.decay,
    };
    // First pass: every rank from zero states; its last run's state is what it contributes.
    let runs: Vec<Runs> = gv.shards.iter().map(Runs::of).collect();
    let per_state = state_len(la);
    let local: Vec<Vec<f32>> = gv
        .shards
        .iter()
        .enumerate()
        .map(|(q, meta)| {
            let (_, states) = linear_attention::forward(la, inputs(q), meta, None);
            runs[q].last.map_or_else(|| vec![0f32; per_state], |k| states[k * per_state..(k + 1) * per_state].to_vec())
        })
        .collect();
    let state_bytes = (per_state * 4) as u64;
    let mut ex = Exchange::default();
    let incoming = match p.scheme {
        Scheme::Lasp1 => lasp1(p, &runs, &local, state_bytes, &mut ex),
        _ => lasp2(p, &runs, &local, state_bytes, &mut ex),
    };
    // Second pass: the first run of a rank that continues a document starts from what arrived.
    let total = *x.offsets.last().unwrap_or(&0);
    let mut out = vec![f32::NAN; total * h * dv];
    let mut continued = 0;
    for (q, meta) in gv.shards.iter().enumerate() {
        let mut state_in = vec![0f32; meta.segments() * per_state];
        if let (Some(k), Some(m)) = (runs[q].first, &incoming[q]) {
            if linear_attention::continues(meta, k) {
                state_in[k * per_state..(k + 1) * per_state].copy_from_slice(m);
                continued += 1;
            }
        }
        let (o, _) = linear_attention::forward(la, inputs(q), meta, Some(&state_in));
        for (row, tok) in physical[q].iter().enumerate() {
            let Some((doc, pos)) = tok else { continue };
            let idx = x.offsets[*doc as usize] + *pos as usize;
            out[idx * h * dv..(idx + 1) * h * dv].copy_from_slice(&o[row * h * dv..(row + 1) * h * dv]);
        }
    }
    let truth = causal_linear_attention(la, &p.decay, &x.offsets, &x.q, &x.k, &x.v);
    Ok(LinearOutcome {
        out_error: rel_error(&out, &truth),
        messages: ex.messages,
        gathered_bytes: ex.gathered_bytes,
        continued,
        layout: l,
        varlen: gv,
    })
}

#[derive(Default)]
struct Exchange {
    messages: Vec<StateMessage>,
    gathered_bytes: u64,
}

/// A rank's real document runs: the first and last segment holding tokens, the last one's
/// document and length, and whether one run is the whole shard.
#[derive(Debug, Clone, Copy)]
struct Runs {
    first: Option<usize>,
    last: Option<usize>,
    first_doc: u32,
    last_doc: u32,
    last_tokens: u32,
    /// The shard is a single run that continues a document from an earlier rank.
    through: bool,
}

impl Runs {
    fn of(meta: &VarlenMeta) -> Runs {
        let real: Vec<usize> = (0..meta.segments()).filter(|&k| meta.docs[k] != NO_DOC && meta.seqlens[k] > 0).collect();
        let (first, last) = (real.first().copied(), real.last().copied());
        Runs {
            first,
            last,
            first_doc: first.map_or(NO_DOC, |k| meta.docs[k]),
            last_doc: last.map_or(NO_DOC, |k| meta.docs[k]),
            last_tokens: last.map_or(0, |k| meta.seqlens[k]),
            through: real.len() == 1 && linear_attention::continues(meta, real[0]),
        }
    }
}

/// `a` decayed by `l^n` per head, plus `b`.
fn decayed_sum(la: &LinearAttention, decay: &[f32], a: &[f32], n: u32, b: &[f32]) -> Vec<f32> {
    let per_head = la.key_dim as usize * la.value_dim as usize;
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (&x, &y))| x * decay[i / per_head].powi(n as i32) + y)
        .collect()
}

/// LASP-1: the state travels rank to rank; each rank's incoming state is the one its
/// predecessor sent, if it is of the document the rank starts in.
fn lasp1(p: &LinearProblem, runs: &[Runs], local: &[Vec<f32>], bytes: u64, ex: &mut Exchange) -> Vec<Option<Vec<f32>>> {
    let per_state = state_len(&p.la);
    let mut incoming: Vec<Option<Vec<f32>>> = vec![None; runs.len()];
    // What rank q - 1 sent: the state and the document it belongs to.
    let mut arriving: (Vec<f32>, u32) = (vec![0f32; per_state], NO_DOC);
    for (q, r) in runs.iter().enumerate() {
        if q > 0 {
            incoming[q] = (arriving.1 == r.first_doc).then(|| arriving.0.clone());
        }
        if q + 1 == runs.len() {
            break;
        }
        arriving = match r.last {
            // An empty shard passes on what it got.
            None => arriving,
            Some(_) if r.through && arriving.1 == r.last_doc => (decayed_sum(&p.la, &p.decay, &arriving.0, r.last_tokens, &local[q]), r.last_doc),
            Some(_) => (local[q].clone(), r.last_doc),
        };
        ex.messages.push(StateMessage { from: q as u32, to: q as u32 + 1, bytes });
    }
    incoming
}

/// LASP-2: every rank's local state all-gathered; each rank sums the prefix it needs.
fn lasp2(p: &LinearProblem, runs: &[Runs], local: &[Vec<f32>], bytes: u64, ex: &mut Exchange) -> Vec<Option<Vec<f32>>> {
    let per_state = state_len(&p.la);
    ex.gathered_bytes = bytes * runs.len() as u64;
    let gathered = local;
    runs
        .iter()
        .enumerate()
        .map(|(q, r)| {
            let doc = r.first_doc;
            let mut sum = vec![0f32; per_state];
            // Tokens of `doc` between the end of rank j's shard and the start of rank q's.
            let mut between = 0u32;
            let mut any = false;
            for j in (0..q).rev() {
                let rj = &runs[j];
                if rj.last.is_none() {
                    continue;
                }
                if rj.last_doc != doc {
                    break;
                }
                sum = decayed_sum(&p.la, &p.decay, &gathered[j], between, &sum);
                any = true;
                if !rj.through {
                    break;
                }
                between += rj.last_tokens;
            }
            any.then_some(sum)
        })
        .collect()
}

/// Single-device causal linear attention over packed documents in f64, by its definition:
/// `o_t = sum_{s <= t, same document} l^(t-s) (q_t . k_s) v_s`, per head. Inputs as
/// [`LinearInputs`] (`offsets` the packed documents' starts, then the total).
pub fn causal_linear_attention(la: &LinearAttention, decay: &[f32], offsets: &[usize], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let (h, dk, dv) = (la.heads as usize, la.key_dim as usize, la.value_dim as usize);
    let n = *offsets.last().unwrap_or(&0);
    let mut o = vec![0f64; n * h * dv];
    for w in offsets.windows(2) {
        for head in 0..h {
            let l = f64::from(decay[head]);
            for t in w[0]..w[1] {
                for s in w[0]..=t {
                    let qk: f64 = (0..dk).map(|e| f64::from(q[(t * h + head) * dk + e]) * f64::from(k[(s * h + head) * dk + e])).sum();
                    let weight = qk * l.powi((t - s) as i32);
                    for c in 0..dv {
                        o[(t * h + head) * dv + c] += weight * f64::from(v[(s * h + head) * dv + c]);
                    }
                }
            }
        }
    }
    o
}
