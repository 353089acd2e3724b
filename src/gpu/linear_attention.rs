//! The linear-attention chunk kernel of `kernels/linear_attention.cu` on the CPU in f32: the
//! same grid (one packed segment and one head per block, walking the segment chunk by chunk),
//! the same intra-chunk block under the causal mask, the same inter-chunk product with the state
//! before the chunk, the same state update, in the same order of operations. It is the chunked
//! algorithm the cost model prices (docs/cost-model.md section 2b): per chunk of `n <= chunk`
//! rows and head, with decay `l` (1 for basic linear attention, a per-head constant for
//! lightning attention),
//!
//! - intra: `o_i = sum_{j <= i} l^(i-j) (q_i . k_j) v_j`,
//! - inter: `o_i += l^(i+1) q_i M`,
//! - state: `M <- l^n M + sum_j l^(n-1-j) k_j^T v_j`,
//!
//! which together are `o_t = sum_{s <= t} l^(t-s) (q_t . k_s) v_s` over the document.
//!
//! Varlen: a segment (one document's run, from the plan's `cu_seqlens`) starts from a zero
//! state at its document's first token; a segment that continues a document from another rank
//! (its first row's position is past 0) starts from the state the LASP exchange delivers.
//! Tensors are row-major: `q`, `k` `[rows, heads, key_dim]`, `v` and outputs
//! `[rows, heads, value_dim]`, states `[heads, key_dim, value_dim]`.

use super::varlen::{VarlenMeta, NO_DOC, NO_POS};
use crate::model::LinearAttention;

/// One rank's buffers for the chunk kernel.
#[derive(Debug, Clone, Copy)]
pub struct ChunkInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Per head: the decay `l` (1 for basic linear attention).
    pub decay: &'a [f32],
}

/// Elements of every head's state.
pub fn state_len(la: &LinearAttention) -> usize {
    la.heads as usize * la.key_dim as usize * la.value_dim as usize
}

/// Whether segment `k` of `meta` continues a document that started on an earlier rank: the
/// kernel then starts it from the delivered state instead of zero.
pub fn continues(meta: &VarlenMeta, k: usize) -> bool {
    let first = meta.cu_seqlens_padded[k] as usize;
    meta.docs[k] != NO_DOC && meta.seqlens[k] > 0 && meta.pos[first] != NO_POS && meta.pos[first] > 0
}

/// The kernel over every segment of a buffer: `state_in` (one state per segment, read only for
/// segments that [`continues`]) or zero; returns the outputs (NaN on padding rows, which no
/// segment writes) and each segment's state after its last row.
pub fn forward(la: &LinearAttention, x: ChunkInputs, meta: &VarlenMeta, state_in: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (h, dv) = (la.heads as usize, la.value_dim as usize);
    let per_state = state_len(la);
    let mut out = vec![f32::NAN; meta.rows as usize * h * dv];
    let mut states = vec![0f32; meta.segments() * per_state];
    for k in 0..meta.segments() {
        let state = &mut states[k * per_state..(k + 1) * per_state];
        if let (Some(s), true) = (state_in, continues(meta, k)) {
            state.copy_from_slice(&s[k * per_state..(k + 1) * per_state]);
        }
        let start = meta.cu_seqlens_padded[k] as usize;
        segment(la, x, start..start + meta.seqlens[k] as usize, state, &mut out);
    }
    (out, states)
}

/// One segment, every head: its rows chunk by chunk from `state`, which it leaves as the state
/// after the segment's last row.
pub fn segment(la: &LinearAttention, x: ChunkInputs, rows: std::ops::Range<usize>, state: &mut [f32], out: &mut [f32]) {
    let (h, dk, dv) = (la.heads as usize, la.key_dim as usize, la.value_dim as usize);
    let chunk = la.chunk.max(1) as usize;
    for head in 0..h {
        let m = &mut state[head * dk * dv..(head + 1) * dk * dv];
        let l = x.decay[head];
        let qk = |row: usize| head * dk + row * h * dk;
        let vo = |row: usize| head * dv + row * h * dv;
        let mut c0 = rows.start;
        while c0 < rows.end {
            let n = chunk.min(rows.end - c0);
            for i in 0..n {
                let qi = &x.q[qk(c0 + i)..qk(c0 + i) + dk];
                let mut acc = vec![0f32; dv];
                for j in 0..=i {
                    let kj = &x.k[qk(c0 + j)..qk(c0 + j) + dk];
                    let s = dot(qi, kj) * l.powi((i - j) as i32);
                    let vj = &x.v[vo(c0 + j)..vo(c0 + j) + dv];
                    acc.iter_mut().zip(vj).for_each(|(a, &b)| *a += s * b);
                }
                let w = l.powi(i as i32 + 1);
                for (e, &qe) in qi.iter().enumerate() {
                    let qe = qe * w;
                    acc.iter_mut().zip(&m[e * dv..(e + 1) * dv]).for_each(|(a, &b)| *a += qe * b);
                }
                out[vo(c0 + i)..vo(c0 + i) + dv].copy_from_slice(&acc);
            }
            let carry = l.powi(n as i32);
            for e in 0..dk {
                for c in 0..dv {
                    let mut s = m[e * dv + c] * carry;
                    for j in 0..n {
                        s += l.powi((n - 1 - j) as i32) * x.k[qk(c0 + j) + e] * x.v[vo(c0 + j) + c];
                    }
                    m[e * dv + c] = s;
                }
            }
            c0 += n;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
