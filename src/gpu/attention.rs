//! The attention kernels of `kernels/attention.cu`, tile for tile on the CPU in f32: the same
//! grid (query tiles of one segment, for one head), the same walk over the key segments of the
//! same document, the same skip of key tiles that causality masks entirely, the same per-row
//! online softmax, the same partial dot products over `threads_per_row` slices summed in the
//! butterfly order of the warp shuffles. Only the rounding of individual operations may differ
//! (the GPU contracts multiply-adds), so a result that is right here is right there up to f32
//! rounding; the CUDA executor checks that on a GPU before it times anything.
//!
//! Tensors are row-major: queries, outputs and their gradients `[rows, q_heads, head_dim]`; keys,
//! values and their gradients `[rows, kv_heads, head_dim]`; log-sum-exp and the backward's
//! `delta` `[q_heads, rows]`.

use super::varlen::{VarlenMeta, NO_DOC};
use serde::{Deserialize, Serialize};

/// Query rows per thread block in the forward and dQ kernels (key rows in the dK/dV kernel).
pub const BLOCK_M: u32 = 64;
/// Key rows per streamed tile in the forward and dQ kernels (query rows in the dK/dV kernel).
pub const BLOCK_N: u32 = 32;
/// Threads sharing one row; each holds `head_dim / THREADS_PER_ROW` of its elements.
pub const THREADS_PER_ROW: u32 = 4;

/// The kernels' tile sizes. The kernels are compiled with [`Tiling::default`]; tests use small
/// tiles so that small problems still cross many tile boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiling {
    pub block_m: u32,
    pub block_n: u32,
    pub threads_per_row: u32,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            block_m: BLOCK_M,
            block_n: BLOCK_N,
            threads_per_row: THREADS_PER_ROW,
        }
    }
}

/// Which heads one rank holds: local query heads `q_head0 ..` and local key/value heads
/// `kv_head0 ..` (global indices), query head `h` reading key/value head `h / group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadMap {
    pub q_heads: u32,
    pub kv_heads: u32,
    pub q_head0: u32,
    pub kv_head0: u32,
    /// Query heads per key/value head (grouped-query attention).
    pub group: u32,
    pub head_dim: u32,
}

impl HeadMap {
    /// The heads Ulysses rank `i` of `u` holds after the all-to-all: an equal share of the query
    /// heads and every key/value head those read (several ranks hold the same key/value head when
    /// there are fewer of them than ranks: replication).
    pub fn ulysses(heads: u32, kv_heads: u32, head_dim: u32, u: u32, i: u32) -> HeadMap {
        let per = heads / u;
        let group = heads / kv_heads;
        let q_head0 = i * per;
        let kv_head0 = q_head0 / group;
        let kv_last = (q_head0 + per - 1) / group;
        HeadMap {
            q_heads: per,
            kv_heads: kv_last - kv_head0 + 1,
            q_head0,
            kv_head0,
            group,
            head_dim,
        }
    }

    /// Local key/value head read by local query head `h`.
    pub fn kv_of(&self, h: u32) -> u32 {
        (self.q_head0 + h) / self.group - self.kv_head0
    }
}

/// Tile pairs a kernel call computed and skipped (counted once, not per head).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileCount {
    pub live: u64,
    pub skipped: u64,
}

impl std::ops::AddAssign for TileCount {
    fn add_assign(&mut self, o: TileCount) {
        self.live += o.live;
        self.skipped += o.skipped;
    }
}

/// A tile: up to `size` consecutive real rows of one segment.
#[derive(Debug, Clone, Copy)]
struct Tile {
    doc: u32,
    row0: usize,
    n: usize,
    pos_min: u32,
    pos_max: u32,
}

fn tiles(meta: &VarlenMeta, size: u32) -> Vec<Tile> {
    let mut out = Vec::new();
    for k in 0..meta.segments() {
        if meta.docs[k] == NO_DOC {
            continue;
        }
        let start = meta.cu_seqlens_padded[k] as usize;
        let len = meta.seqlens[k] as usize;
        for t0 in (0..len).step_by(size as usize) {
            let n = (size as usize).min(len - t0);
            let pos = &meta.pos[start + t0..start + t0 + n];
            out.push(Tile {
                doc: meta.docs[k],
                row0: start + t0,
                n,
                pos_min: pos.iter().copied().min().unwrap_or(0),
                pos_max: pos.iter().copied().max().unwrap_or(0),
            });
        }
    }
    out
}

/// Whether a (query tile, key tile) pair has any pair the mask lets through: same document and
/// some key at or before some query. The kernels skip the others without loading them further.
fn live(q: &Tile, k: &Tile) -> bool {
    q.doc == k.doc && k.pos_min <= q.pos_max
}

/// The work of a forward call without doing it: how the schedule decides which ring steps have
/// nothing to compute, and what the cost model is told.
pub fn count(t: &Tiling, qm: &VarlenMeta, km: &VarlenMeta) -> TileCount {
    // Key tiles by document, so that a query tile meets only its own document's.
    let mut by_doc: std::collections::HashMap<u32, Vec<Tile>> = std::collections::HashMap::new();
    for k in tiles(km, t.block_n) {
        by_doc.entry(k.doc).or_default().push(k);
    }
    let mut c = TileCount::default();
    for q in tiles(qm, t.block_m) {
        for k in by_doc.get(&q.doc).into_iter().flatten() {
            if live(&q, k) {
                c.live += 1;
            } else {
                c.skipped += 1;
            }
        }
    }
    c
}

/// A dot product as the kernel computes it: `tpr` threads each sum a contiguous slice, then the
/// warp shuffles add them pairwise (xor 1, xor 2, ...).
fn dot(a: &[f32], b: &[f32], tpr: usize) -> f32 {
    let per = a.len() / tpr;
    let mut lanes = [0f32; 32];
    for (p, lane) in lanes.iter_mut().enumerate().take(tpr) {
        let mut s = 0f32;
        for d in p * per..(p + 1) * per {
            s += a[d] * b[d];
        }
        *lane = s;
    }
    let mut off = 1;
    while off < tpr {
        let prev = lanes;
        for p in 0..tpr {
            lanes[p] = prev[p] + prev[p ^ off];
        }
        off <<= 1;
    }
    lanes[0]
}

/// Borrowed tensors of one call.
pub struct Tensors<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// `attn_fwd_varlen`: attention of the queries in `qm` over the keys in `km`, merged into the
/// running output `o` and log-sum-exp `lse` (the merge of ring steps is the same online softmax
/// as the merge of tiles). `first` starts the accumulators instead of merging.
#[allow(clippy::too_many_arguments)]
pub fn fwd(
    t: &Tiling,
    h: &HeadMap,
    scale: f32,
    qm: &VarlenMeta,
    km: &VarlenMeta,
    x: &Tensors,
    o: &mut [f32],
    lse: &mut [f32],
    first: bool,
) -> TileCount {
    let d = h.head_dim as usize;
    let tpr = t.threads_per_row as usize;
    let (hq_n, hk_n, rows_q) = (h.q_heads as usize, h.kv_heads as usize, qm.rows as usize);
    let kt = tiles(km, t.block_n);
    let mut count = TileCount::default();
    let mut scores = vec![0f32; t.block_n as usize];
    for hq in 0..hq_n {
        let hk = h.kv_of(hq as u32) as usize;
        for qt in tiles(qm, t.block_m) {
            let mut m = vec![f32::NEG_INFINITY; qt.n];
            let mut l = vec![0f32; qt.n];
            let mut acc = vec![0f32; qt.n * d];
            for ktile in kt.iter().filter(|k| k.doc == qt.doc) {
                if !live(&qt, ktile) {
                    count.skipped += u64::from(hq == 0);
                    continue;
                }
                count.live += u64::from(hq == 0);
                for i in 0..qt.n {
                    let row = qt.row0 + i;
                    let my_pos = qm.pos[row];
                    let qv = &x.q[(row * hq_n + hq) * d..][..d];
                    let mut tmax = f32::NEG_INFINITY;
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = f32::NEG_INFINITY;
                        if j < ktile.n && km.pos[ktile.row0 + j] <= my_pos {
                            let kv = &x.k[((ktile.row0 + j) * hk_n + hk) * d..][..d];
                            *s = dot(qv, kv, tpr) * scale;
                        }
                        tmax = tmax.max(*s);
                    }
                    if tmax == f32::NEG_INFINITY {
                        continue;
                    }
                    let m_new = m[i].max(tmax);
                    let corr = (m[i] - m_new).exp();
                    l[i] *= corr;
                    let a = &mut acc[i * d..(i + 1) * d];
                    a.iter_mut().for_each(|e| *e *= corr);
                    for (j, &s) in scores.iter().enumerate().take(ktile.n) {
                        if s == f32::NEG_INFINITY {
                            continue;
                        }
                        let p = (s - m_new).exp();
                        l[i] += p;
                        let vv = &x.v[((ktile.row0 + j) * hk_n + hk) * d..][..d];
                        for (e, &vd) in a.iter_mut().zip(vv) {
                            *e += p * vd;
                        }
                    }
                    m[i] = m_new;
                }
            }
            for i in 0..qt.n {
                let row = qt.row0 + i;
                let li = hq * rows_q + row;
                let out = &mut o[(row * hq_n + hq) * d..][..d];
                let has = m[i] != f32::NEG_INFINITY;
                if !has {
                    if first {
                        out.iter_mut().for_each(|e| *e = 0.0);
                        lse[li] = f32::NEG_INFINITY;
                    }
                    continue;
                }
                let lse_new = m[i] + l[i].ln();
                let lse_old = if first { f32::NEG_INFINITY } else { lse[li] };
                let mx = lse_old.max(lse_new);
                let w_old = if lse_old == f32::NEG_INFINITY { 0.0 } else { (lse_old - mx).exp() };
                let w_new = (lse_new - mx).exp();
                let total = w_old + w_new;
                let a = &acc[i * d..(i + 1) * d];
                for (e, &ad) in out.iter_mut().zip(a) {
                    let old = if w_old == 0.0 { 0.0 } else { *e * w_old };
                    *e = (old + ad / l[i] * w_new) / total;
                }
                lse[li] = mx + total.ln();
            }
        }
    }
    count
}

/// `attn_bwd_preprocess`: `delta = rowsum(dO * O)` for every row and local query head.
pub fn bwd_preprocess(h: &HeadMap, rows: usize, d_o: &[f32], o: &[f32], delta: &mut [f32]) {
    let (d, hq_n) = (h.head_dim as usize, h.q_heads as usize);
    for hq in 0..hq_n {
        for row in 0..rows {
            let at = (row * hq_n + hq) * d;
            delta[hq * rows + row] = d_o[at..at + d].iter().zip(&o[at..at + d]).map(|(a, b)| a * b).sum();
        }
    }
}

/// What the backward kernels read besides Q, K, V: the output gradient, the final log-sum-exp
/// and `delta`.
pub struct Grads<'a> {
    pub d_o: &'a [f32],
    pub lse: &'a [f32],
    pub delta: &'a [f32],
}

/// `attn_bwd_dq`: a query tile per block, streaming the key tiles of its document.
#[allow(clippy::too_many_arguments)]
pub fn bwd_dq(
    t: &Tiling,
    h: &HeadMap,
    scale: f32,
    qm: &VarlenMeta,
    km: &VarlenMeta,
    x: &Tensors,
    g: &Grads,
    dq: &mut [f32],
    accumulate: bool,
) -> TileCount {
    let d = h.head_dim as usize;
    let tpr = t.threads_per_row as usize;
    let (hq_n, hk_n, rows_q) = (h.q_heads as usize, h.kv_heads as usize, qm.rows as usize);
    let kt = tiles(km, t.block_n);
    let mut count = TileCount::default();
    for hq in 0..hq_n {
        let hk = h.kv_of(hq as u32) as usize;
        for qt in tiles(qm, t.block_m) {
            let mut acc = vec![0f32; qt.n * d];
            for ktile in kt.iter().filter(|k| k.doc == qt.doc) {
                if !live(&qt, ktile) {
                    count.skipped += u64::from(hq == 0);
                    continue;
                }
                count.live += u64::from(hq == 0);
                for i in 0..qt.n {
                    let row = qt.row0 + i;
                    let qv = &x.q[(row * hq_n + hq) * d..][..d];
                    let dov = &g.d_o[(row * hq_n + hq) * d..][..d];
                    let (lse, delta) = (g.lse[hq * rows_q + row], g.delta[hq * rows_q + row]);
                    let a = &mut acc[i * d..(i + 1) * d];
                    for j in 0..ktile.n {
                        if km.pos[ktile.row0 + j] > qm.pos[row] {
                            continue;
                        }
                        let at = ((ktile.row0 + j) * hk_n + hk) * d;
                        let (kv, vv) = (&x.k[at..at + d], &x.v[at..at + d]);
                        let p = (dot(qv, kv, tpr) * scale - lse).exp();
                        let ds = p * (dot(dov, vv, tpr) - delta);
                        for (e, &kd) in a.iter_mut().zip(kv) {
                            *e += ds * kd;
                        }
                    }
                }
            }
            for i in 0..qt.n {
                let out = &mut dq[((qt.row0 + i) * hq_n + hq) * d..][..d];
                for (e, &ad) in out.iter_mut().zip(&acc[i * d..(i + 1) * d]) {
                    *e = if accumulate { *e + ad * scale } else { ad * scale };
                }
            }
        }
    }
    count
}

/// `attn_bwd_dkdv`: a key tile per block (for one local key/value head), streaming the query
/// tiles of its document for every query head that reads it.
#[allow(clippy::too_many_arguments)]
pub fn bwd_dkdv(
    t: &Tiling,
    h: &HeadMap,
    scale: f32,
    qm: &VarlenMeta,
    km: &VarlenMeta,
    x: &Tensors,
    g: &Grads,
    dk: &mut [f32],
    dv: &mut [f32],
    accumulate: bool,
) -> TileCount {
    let d = h.head_dim as usize;
    let tpr = t.threads_per_row as usize;
    let (hq_n, hk_n, rows_q) = (h.q_heads as usize, h.kv_heads as usize, qm.rows as usize);
    let qtiles = tiles(qm, t.block_n);
    let mut count = TileCount::default();
    for hk in 0..hk_n {
        for ktile in tiles(km, t.block_m) {
            let mut acc_k = vec![0f32; ktile.n * d];
            let mut acc_v = vec![0f32; ktile.n * d];
            for hq in (0..hq_n).filter(|&hq| h.kv_of(hq as u32) as usize == hk) {
                for qt in qtiles.iter().filter(|q| q.doc == ktile.doc) {
                    if !live(qt, &ktile) {
                        count.skipped += u64::from(hk == 0 && hq == 0);
                        continue;
                    }
                    count.live += u64::from(hk == 0 && hq == 0);
                    for j in 0..ktile.n {
                        let krow = ktile.row0 + j;
                        let at = (krow * hk_n + hk) * d;
                        let (kv, vv) = (&x.k[at..at + d], &x.v[at..at + d]);
                        for i in 0..qt.n {
                            let row = qt.row0 + i;
                            if km.pos[krow] > qm.pos[row] {
                                continue;
                            }
                            let qv = &x.q[(row * hq_n + hq) * d..][..d];
                            let dov = &g.d_o[(row * hq_n + hq) * d..][..d];
                            let p = (dot(kv, qv, tpr) * scale - g.lse[hq * rows_q + row]).exp();
                            let ds = p * (dot(vv, dov, tpr) - g.delta[hq * rows_q + row]);
                            for e in 0..d {
                                acc_v[j * d + e] += p * dov[e];
                                acc_k[j * d + e] += ds * qv[e];
                            }
                        }
                    }
                }
            }
            for j in 0..ktile.n {
                let at = ((ktile.row0 + j) * hk_n + hk) * d;
                for e in 0..d {
                    let (nk, nv) = (acc_k[j * d + e] * scale, acc_v[j * d + e]);
                    dk[at + e] = if accumulate { dk[at + e] + nk } else { nk };
                    dv[at + e] = if accumulate { dv[at + e] + nv } else { nv };
                }
            }
        }
    }
    count
}
