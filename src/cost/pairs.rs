//! Attention work as (query, key) pairs: exact counts under the document-masked causal mask, per
//! pair of ring slots, from a group's layout.

use crate::scheme::{GroupLayout, Piece, RingVariant, Scheme};

/// Pairs between query piece `q` and key piece `k` of the same document (key position <= query
/// position). Contiguous pieces and same-stride pieces (the stripe layout) have closed forms.
pub fn piece_pairs(q: &Piece, k: &Piece) -> f64 {
    if q.doc != k.doc || q.len == 0 || k.len == 0 {
        return 0.0;
    }
    if q.stride == 1 && k.stride == 1 {
        let (a0, a1) = (f64::from(q.start), f64::from(q.start + q.len));
        let (b0, l) = (f64::from(k.start), f64::from(k.len));
        return keys_below(a1, b0, l) - keys_below(a0, b0, l);
    }
    strided_pairs(q, k)
}

/// Sum over query positions p in [0, x) of the number of keys in [b0, b0 + l) at or before p.
fn keys_below(x: f64, b0: f64, l: f64) -> f64 {
    if x <= b0 {
        0.0
    } else if x <= b0 + l {
        let n = x - b0;
        n * (n + 1.0) / 2.0
    } else {
        l * (l + 1.0) / 2.0 + (x - b0 - l) * l
    }
}

/// Query positions q.start + m * s, key positions k.start + n * s (same stride s): for query m,
/// the keys at or before it number m + 1 when k.start <= q.start, else m, capped at k.len.
fn strided_pairs(q: &Piece, k: &Piece) -> f64 {
    debug_assert_eq!(q.stride, k.stride, "only the stripe layout makes strided pieces");
    let offset = if k.start <= q.start { 1.0 } else { 0.0 };
    let (m_len, cap) = (f64::from(q.len), f64::from(k.len));
    // sum_{m=0}^{M-1} min(m + offset, cap)
    let below_cap = (cap - offset + 1.0).clamp(0.0, m_len); // queries with m + offset <= cap
    let partial = below_cap * (below_cap - 1.0) / 2.0 + offset * below_cap;
    partial + (m_len - below_cap) * cap
}

/// `pairs[i][j]`: pairs with the query on slot i and the key on slot j.
pub fn slot_pairs(layout: &GroupLayout) -> Vec<Vec<f64>> {
    slot_work(layout).pairs
}

/// Query rows by key columns of the attention kernels' work tiles: FlashAttention-2/3 walk the
/// (query, key) plane in tiles of about this many tokens a side, and a tile with one unmasked
/// pair costs as much as a full one. The tile model (cost::attention) is fitted with it.
pub const ATTENTION_TILE_TOKENS: u32 = 128;

/// Attention work between ring slots, with what the kernels see of it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotWork {
    /// `pairs[i][j]`: pairs with the query on slot i and the key on slot j.
    pub pairs: Vec<Vec<f64>>,
    /// `block_len[i][j]`: the pairs-weighted mean of the shorter side of the document pieces that
    /// meet there.
    pub block_len: Vec<Vec<f64>>,
    /// `tiles[i][j]`: kernel tiles ([`ATTENTION_TILE_TOKENS`] a side) with at least one unmasked
    /// pair. Tiles start at each document piece's first token, as varlen kernels cut them.
    pub tiles: Vec<Vec<f64>>,
    /// Query tiles with work at (i, j): the forward kernel's per-query-tile fixed cost.
    pub q_tiles: Vec<Vec<f64>>,
    /// Key tiles with work at (i, j): the backward kernel's per-key-tile fixed cost.
    pub k_tiles: Vec<Vec<f64>>,
    /// Query and key tokens with work at (i, j): the rows a ring step's softmax merge rewrites.
    pub q_rows: Vec<Vec<f64>>,
    pub k_rows: Vec<Vec<f64>>,
    /// Whether the call at (i, j) holds a partly masked (diagonal) block, which makes it a causal
    /// kernel call; calls of fully visible blocks only run as non-causal ones.
    pub causal: Vec<Vec<bool>>,
    /// Query tiles of slot i with work against any slot (one kernel over all gathered keys).
    pub q_tiles_any: Vec<f64>,
    /// Key tiles of slot j with work against any slot.
    pub k_tiles_any: Vec<f64>,
}

pub fn slot_work(layout: &GroupLayout) -> SlotWork {
    slot_work_with(layout, true)
}

/// `closed_forms`: price zigzagged documents by their bucket closed forms (false: piece by piece,
/// which the tests compare against).
fn slot_work_with(layout: &GroupLayout, closed_forms: bool) -> SlotWork {
    let r = layout.slots.len();
    let grid = || vec![vec![0.0; r]; r];
    let mut w = SlotWork {
        pairs: grid(),
        block_len: grid(),
        tiles: grid(),
        q_tiles: grid(),
        k_tiles: grid(),
        q_rows: grid(),
        k_rows: grid(),
        causal: vec![vec![false; r]; r],
        q_tiles_any: vec![0.0; r],
        k_tiles_any: vec![0.0; r],
    };
    let mut weighted = grid();
    // Documents zigzagged over the ring have a closed form per (full chunks, partial chunk)
    // bucket; the others are paired piece by piece.
    let zigzagged = if closed_forms { zigzag_docs(layout) } else { vec![false; layout.docs.len()] };
    let mut buckets: Vec<ChunkSums> = vec![ChunkSums::default(); 2 * (2 * r + 1)];
    for (d, &len) in layout.docs.iter().enumerate() {
        if zigzagged.get(d).copied().unwrap_or(false) && len > 0 {
            let (m, sums) = ChunkSums::of(len, r);
            buckets[2 * m + usize::from(sums.partial)].add(&sums);
        }
    }
    for (key, sums) in buckets.iter().enumerate().filter(|(_, s)| s.docs > 0) {
        add_zigzag_bucket(&mut w, &mut weighted, r, key / 2, sums);
    }
    // Index the other pieces by document so only same-document pieces are paired.
    let mut by_doc: Vec<Vec<(usize, &Piece)>> = vec![Vec::new(); layout.docs.len()];
    for (s, slot) in layout.slots.iter().enumerate() {
        for p in slot.pieces.iter().filter(|p| p.len > 0 && !zigzagged.get(p.doc as usize).copied().unwrap_or(false)) {
            by_doc[p.doc as usize].push((s, p));
        }
    }
    // Per piece: does it have work against slot j (as query / as key)?
    let (mut q_busy, mut k_busy): (Vec<bool>, Vec<bool>) = (Vec::new(), Vec::new());
    for pieces in &by_doc {
        let n = pieces.len();
        q_busy.clear();
        q_busy.resize(n * r, false);
        k_busy.clear();
        k_busy.resize(n * r, false);
        for (a, (i, q)) in pieces.iter().enumerate() {
            for (b, (j, k)) in pieces.iter().enumerate() {
                let count = piece_pairs(q, k);
                if count <= 0.0 {
                    continue;
                }
                w.pairs[*i][*j] += count;
                weighted[*i][*j] += count * f64::from(q.len.min(k.len));
                w.tiles[*i][*j] += block_tiles(q, k);
                if !fully_visible(q, k) {
                    w.causal[*i][*j] = true;
                }
                q_busy[a * r + j] = true;
                k_busy[b * r + i] = true;
            }
        }
        for (a, (s, p)) in pieces.iter().enumerate() {
            let t = tiles_of(p.len);
            let len = f64::from(p.len);
            let (q_any, k_any) = (q_busy[a * r..(a + 1) * r].iter().any(|&x| x), k_busy[a * r..(a + 1) * r].iter().any(|&x| x));
            for other in 0..r {
                if q_busy[a * r + other] {
                    w.q_tiles[*s][other] += t;
                    w.q_rows[*s][other] += len;
                }
                if k_busy[a * r + other] {
                    w.k_tiles[other][*s] += t;
                    w.k_rows[other][*s] += len;
                }
            }
            if q_any {
                w.q_tiles_any[*s] += t;
            }
            if k_any {
                w.k_tiles_any[*s] += t;
            }
        }
    }
    for i in 0..r {
        for j in 0..r {
            let p = w.pairs[i][j];
            w.block_len[i][j] = if p > 0.0 { weighted[i][j] / p } else { 0.0 };
        }
    }
    w
}

/// Which documents the layout zigzags over its ring: chunk k of 2r (each `ceil(len / 2r)` tokens,
/// the last ones partial or empty) on slot k for k < r, on slot 2r - 1 - k otherwise.
fn zigzag_docs(layout: &GroupLayout) -> Vec<bool> {
    let shape = layout.shape;
    let zigzag = shape.ring > 1
        && match shape.scheme {
            Scheme::Allgather | Scheme::Hsap => true,
            Scheme::Ring | Scheme::Usp | Scheme::DoubleRing => shape.variant == RingVariant::Zigzag,
            Scheme::Ulysses | Scheme::Lasp1 | Scheme::Lasp2 | Scheme::Lasp2h => false,
        };
    if !zigzag || layout.slots.len() != shape.ring as usize {
        return vec![false; layout.docs.len()];
    }
    layout.split.clone()
}

/// Sums over the zigzagged documents of one bucket (same number of full chunks `m`, and whether a
/// partial chunk follows) of the per-document quantities the closed forms need: chunk length c,
/// partial length p, and their tiles Tc, Tp.
#[derive(Debug, Clone, Copy, Default)]
struct ChunkSums {
    docs: u32,
    partial: bool,
    c: f64,
    c2: f64,
    c3: f64,
    c_diag: f64,
    c_diag_w: f64,
    tc: f64,
    tc2: f64,
    tc_diag: f64,
    p: f64,
    pc: f64,
    p2c: f64,
    p_diag: f64,
    p_diag_w: f64,
    tp: f64,
    tptc: f64,
    tp_diag: f64,
}

impl ChunkSums {
    /// One document of `len` tokens over a ring of `r`: (full chunks, its sums).
    fn of(len: u32, r: usize) -> (usize, ChunkSums) {
        let chunk = len.div_ceil(2 * r as u32);
        let m = (len / chunk) as usize;
        let (c, p) = (f64::from(chunk), f64::from(len - m as u32 * chunk));
        let (tc, tp) = (tiles_of(chunk), tiles_of(len - m as u32 * chunk));
        let sums = ChunkSums {
            docs: 1,
            partial: p > 0.0,
            c,
            c2: c * c,
            c3: c * c * c,
            c_diag: c * (c + 1.0) / 2.0,
            c_diag_w: c * c * (c + 1.0) / 2.0,
            tc,
            tc2: tc * tc,
            tc_diag: tc * (tc + 1.0) / 2.0,
            p,
            pc: p * c,
            p2c: p * p * c,
            p_diag: p * (p + 1.0) / 2.0,
            p_diag_w: p * p * (p + 1.0) / 2.0,
            tp,
            tptc: tp * tc,
            tp_diag: tp * (tp + 1.0) / 2.0,
        };
        (m, sums)
    }

    fn add(&mut self, o: &ChunkSums) {
        self.docs += o.docs;
        self.partial = o.partial;
        self.c += o.c;
        self.c2 += o.c2;
        self.c3 += o.c3;
        self.c_diag += o.c_diag;
        self.c_diag_w += o.c_diag_w;
        self.tc += o.tc;
        self.tc2 += o.tc2;
        self.tc_diag += o.tc_diag;
        self.p += o.p;
        self.pc += o.pc;
        self.p2c += o.p2c;
        self.p_diag += o.p_diag;
        self.p_diag_w += o.p_diag_w;
        self.tp += o.tp;
        self.tptc += o.tptc;
        self.tp_diag += o.tp_diag;
    }
}

/// Adds one bucket of zigzagged documents (`m` full chunks, then a partial one if
/// `sums.partial`): chunk a sees chunk b fully when b < a and its own diagonal when b = a.
fn add_zigzag_bucket(w: &mut SlotWork, weighted: &mut [Vec<f64>], r: usize, m: usize, sums: &ChunkSums) {
    // Chunks present: 0..m full, m partial (if any); chunk k lives on slot k or 2r - 1 - k.
    let present = m + usize::from(sums.partial);
    let kind = |k: usize| -> Option<bool> {
        // Some(true): full chunk; Some(false): the partial chunk; None: empty.
        if k < m {
            Some(true)
        } else if k < present {
            Some(false)
        } else {
            None
        }
    };
    for i in 0..r {
        for a in [i, 2 * r - 1 - i] {
            let Some(a_full) = kind(a) else { continue };
            let (a_tiles, a_rows) = if a_full { (sums.tc, sums.c) } else { (sums.tp, sums.p) };
            // Its own diagonal: a causal call on slot i.
            let (pairs, tiles, wsum) = if a_full { (sums.c_diag, sums.tc_diag, sums.c_diag_w) } else { (sums.p_diag, sums.tp_diag, sums.p_diag_w) };
            w.pairs[i][i] += pairs;
            w.tiles[i][i] += tiles;
            weighted[i][i] += wsum;
            w.causal[i][i] = true;
            w.q_tiles_any[i] += a_tiles;
            w.k_tiles_any[i] += a_tiles;
            for j in 0..r {
                // Chunks b < a on slot j are fully visible to chunk a (b is always full then).
                let below = [j, 2 * r - 1 - j].iter().filter(|&&b| b < a).count() as f64;
                if below > 0.0 {
                    let (pairs, tiles, wsum) = if a_full { (sums.c2, sums.tc2, sums.c3) } else { (sums.pc, sums.tptc, sums.p2c) };
                    w.pairs[i][j] += below * pairs;
                    w.tiles[i][j] += below * tiles;
                    weighted[i][j] += below * wsum;
                }
                // Chunk a has work against slot j when slot j holds a chunk b <= a.
                if j.min(2 * r - 1 - j) <= a {
                    w.q_tiles[i][j] += a_tiles;
                    w.q_rows[i][j] += a_rows;
                }
                // As a key, chunk a (on slot i) has work for query slot j when slot j holds a
                // present chunk at or after it.
                let has_later = [j, 2 * r - 1 - j].iter().any(|&q| q >= a && q < present);
                if has_later {
                    w.k_tiles[j][i] += a_tiles;
                    w.k_rows[j][i] += a_rows;
                }
            }
        }
    }
}

/// Tiles along one side of a piece of `len` tokens.
fn tiles_of(len: u32) -> f64 {
    f64::from(len.div_ceil(ATTENTION_TILE_TOKENS))
}

/// Every key of `k` precedes every query of `q`: the block needs no mask.
pub fn fully_visible(q: &Piece, k: &Piece) -> bool {
    q.stride == 1 && k.stride == 1 && k.start + k.len <= q.start
}

/// Kernel tiles with at least one unmasked pair between query piece `q` and key piece `k` of the
/// same document, tiles aligned to each piece's first token.
pub fn block_tiles(q: &Piece, k: &Piece) -> f64 {
    let (tq, tk) = (tiles_of(q.len), tiles_of(k.len));
    if fully_visible(q, k) {
        return tq * tk;
    }
    if q.stride == 1 && k.stride == 1 {
        if k.start == q.start && k.len == q.len {
            return tq * (tq + 1.0) / 2.0; // the causal diagonal
        }
    }
    // Walk the query tiles: the last query of tile t sees the keys up to its position.
    let b = ATTENTION_TILE_TOKENS;
    let mut tiles = 0u64;
    for t in 0..q.len.div_ceil(b) {
        let last = (t + 1).saturating_mul(b).min(q.len) - 1;
        let visible = if q.stride == 1 && k.stride == 1 {
            // keys at positions <= q.start + last
            (i64::from(q.start) + i64::from(last) - i64::from(k.start) + 1).clamp(0, i64::from(k.len))
        } else {
            // same stride: key index n is visible from query index m when n <= m (k.start <= q.start)
            // or n < m (k.start > q.start)
            let offset = if k.start <= q.start { 1 } else { 0 };
            (i64::from(last) + offset).clamp(0, i64::from(k.len))
        };
        tiles += (visible as u64).div_ceil(u64::from(b));
    }
    tiles as f64
}

/// Causal pairs of one document of `len` tokens: len (len + 1) / 2.
pub fn doc_pairs(len: u32) -> f64 {
    let s = f64::from(len);
    s * (s + 1.0) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{layout, GroupShape, HsapParams, RingVariant, Scheme};

    fn brute(q: &Piece, k: &Piece) -> f64 {
        let keys: Vec<u32> = k.positions().collect();
        q.positions().map(|p| keys.iter().filter(|&&x| x <= p).count() as f64).sum()
    }

    #[test]
    fn closed_forms_match_counting() {
        let c = |start, len| Piece { doc: 0, start, len, stride: 1 };
        for (q, k) in [(c(0, 10), c(0, 10)), (c(10, 5), c(0, 10)), (c(0, 10), c(10, 5)), (c(3, 7), c(5, 20))] {
            assert_eq!(piece_pairs(&q, &k), brute(&q, &k), "{q:?} {k:?}");
        }
        let s = |start, len| Piece { doc: 0, start, len, stride: 4 };
        for (q, k) in [(s(0, 5), s(0, 5)), (s(1, 5), s(3, 4)), (s(3, 4), s(1, 5)), (s(2, 3), s(0, 5))] {
            assert_eq!(piece_pairs(&q, &k), brute(&q, &k), "{q:?} {k:?}");
        }
    }

    #[test]
    fn slot_pairs_sum_to_the_documents_pairs() {
        let docs = [1000, 37, 5, 300];
        let total: f64 = docs.iter().map(|&d| doc_pairs(d)).sum();
        for scheme in [Scheme::Ring, Scheme::Hsap] {
            for variant in RingVariant::ALL {
                let shape = GroupShape { scheme, ulysses: 1, ring: 4, variant };
                let l = layout(&shape, &docs, &HsapParams::default());
                let sum: f64 = slot_pairs(&l).iter().flatten().sum();
                assert_eq!(sum, total, "{shape}");
            }
        }
    }

    fn brute_tiles(q: &Piece, k: &Piece) -> f64 {
        // A tile (query tile a, key tile b) counts when one of its pairs is unmasked.
        let b = ATTENTION_TILE_TOKENS as usize;
        let qs: Vec<u32> = q.positions().collect();
        let ks: Vec<u32> = k.positions().collect();
        let mut seen = std::collections::HashSet::new();
        for (m, &p) in qs.iter().enumerate() {
            for (n, &x) in ks.iter().enumerate() {
                if x <= p {
                    seen.insert((m / b, n / b));
                }
            }
        }
        seen.len() as f64
    }

    #[test]
    fn tiles_match_counting() {
        let c = |start, len| Piece { doc: 0, start, len, stride: 1 };
        let s = |start, len| Piece { doc: 0, start, len, stride: 8 };
        let cases = [
            (c(1000, 300), c(0, 1000)),   // rectangle: 3 x 8 = 24 tiles
            (c(0, 300), c(0, 300)),       // diagonal: 3 x 4 / 2 = 6 tiles
            (c(100, 300), c(50, 200)),    // partial overlap
            (c(0, 100), c(200, 50)),      // keys after queries: nothing
            (s(3, 300), s(1, 300)),
            (s(1, 300), s(3, 299)),
        ];
        for (q, k) in cases {
            assert_eq!(block_tiles(&q, &k), brute_tiles(&q, &k), "{q:?} {k:?}");
        }
        assert_eq!(block_tiles(&c(1000, 300), &c(0, 1000)), 24.0);
        assert_eq!(block_tiles(&c(0, 300), &c(0, 300)), 6.0);
    }

    #[test]
    fn short_documents_cut_over_the_ring_waste_tiles() {
        // A 1000-token document over 8 slots (zigzag): 16 chunks of 63 tokens, each meeting in
        // one tile: 16 x 17 / 2 = 136 tiles for 500,500 pairs. Kept whole (the sequence-aware
        // layout), it takes 8 x 9 / 2 = 36 tiles.
        let zig = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 8, variant: RingVariant::Zigzag };
        let whole = GroupShape { scheme: Scheme::Hsap, ulysses: 1, ring: 8, variant: RingVariant::Zigzag };
        let docs = [1000, 1_000_000];
        let w = slot_work(&layout(&zig, &docs, &HsapParams::default()));
        let h = slot_work(&layout(&whole, &docs, &HsapParams::default()));
        let big = |w: &SlotWork| w.tiles.iter().flatten().sum::<f64>();
        let only_long = slot_work(&layout(&zig, &docs[1..], &HsapParams::default()));
        assert_eq!(big(&w) - big(&only_long), 136.0);
        assert_eq!(big(&h) - big(&only_long), 36.0);
    }

    #[test]
    fn zigzag_closed_forms_equal_the_piece_by_piece_count() {
        let docs = [1, 7, 15, 16, 17, 129, 1000, 4097, 65536, 300, 300, 2];
        for scheme in [Scheme::Ring, Scheme::Usp, Scheme::Allgather, Scheme::Hsap, Scheme::DoubleRing] {
            for (u, r) in [(1, 2), (1, 3), (2, 4), (1, 8)] {
                let u = if matches!(scheme, Scheme::Ring | Scheme::Allgather) { 1 } else { u };
                let shape = GroupShape { scheme, ulysses: u, ring: r, variant: RingVariant::Zigzag };
                let l = layout(&shape, &docs, &HsapParams { split_threshold: Some(16), linear_weight: 0.0 });
                let (fast, slow) = (slot_work_with(&l, true), slot_work_with(&l, false));
                assert_eq!(fast.pairs, slow.pairs, "{shape}");
                assert_eq!(fast.tiles, slow.tiles, "{shape}");
                assert_eq!(fast.q_tiles, slow.q_tiles, "{shape}");
                assert_eq!(fast.k_tiles, slow.k_tiles, "{shape}");
                assert_eq!(fast.q_rows, slow.q_rows, "{shape}");
                assert_eq!(fast.k_rows, slow.k_rows, "{shape}");
                assert_eq!(fast.causal, slow.causal, "{shape}");
                assert_eq!(fast.q_tiles_any, slow.q_tiles_any, "{shape}");
                assert_eq!(fast.k_tiles_any, slow.k_tiles_any, "{shape}");
                for (a, b) in fast.block_len.iter().flatten().zip(slow.block_len.iter().flatten()) {
                    assert!((a - b).abs() <= 1e-9 * b.max(1.0), "{shape}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn zigzag_balances_a_single_sequence() {
        // One 1024-token sequence on 4 slots: every slot holds 1/4 of the 524,800 pairs.
        let shape = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 4, variant: RingVariant::Zigzag };
        let l = layout(&shape, &[1024], &HsapParams::default());
        let rows: Vec<f64> = slot_pairs(&l).iter().map(|r| r.iter().sum()).collect();
        assert!(rows.iter().all(|&x| x == doc_pairs(1024) / 4.0), "{rows:?}");
    }
}
