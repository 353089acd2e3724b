//! Attention work as (query, key) pairs: exact counts under the document-masked causal mask, per
//! pair of ring slots, from a group's layout.

use crate::scheme::{GroupLayout, Piece};

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

/// Attention work between ring slots.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotWork {
    /// `pairs[i][j]`: pairs with the query on slot i and the key on slot j.
    pub pairs: Vec<Vec<f64>>,
    /// `block_len[i][j]`: the pairs-weighted mean of the shorter side of the document pieces that
    /// meet there: the tile length the attention kernel works with.
    pub block_len: Vec<Vec<f64>>,
}

pub fn slot_work(layout: &GroupLayout) -> SlotWork {
    let r = layout.slots.len();
    let mut pairs = vec![vec![0.0; r]; r];
    let mut weighted = vec![vec![0.0; r]; r];
    // Index pieces by document so only same-document pieces are paired.
    let mut by_doc: Vec<Vec<(usize, &Piece)>> = vec![Vec::new(); layout.docs.len()];
    for (s, slot) in layout.slots.iter().enumerate() {
        for p in slot.pieces.iter().filter(|p| p.len > 0) {
            by_doc[p.doc as usize].push((s, p));
        }
    }
    for pieces in &by_doc {
        for (i, q) in pieces {
            for (j, k) in pieces {
                let n = piece_pairs(q, k);
                pairs[*i][*j] += n;
                weighted[*i][*j] += n * f64::from(q.len.min(k.len));
            }
        }
    }
    let block_len = pairs
        .iter()
        .zip(&weighted)
        .map(|(p, w)| p.iter().zip(w).map(|(&p, &w)| if p > 0.0 { w / p } else { 0.0 }).collect())
        .collect();
    SlotWork { pairs, block_len }
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

    #[test]
    fn zigzag_balances_a_single_sequence() {
        // One 1024-token sequence on 4 slots: every slot holds 1/4 of the 524,800 pairs.
        let shape = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 4, variant: RingVariant::Zigzag };
        let l = layout(&shape, &[1024], &HsapParams::default());
        let rows: Vec<f64> = slot_pairs(&l).iter().map(|r| r.iter().sum()).collect();
        assert!(rows.iter().all(|&x| x == doc_pairs(1024) / 4.0), "{rows:?}");
    }
}
