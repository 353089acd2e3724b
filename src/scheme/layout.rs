//! Where every token of a group's micro-batch lives: the contract between the planner (which
//! writes it into plans), the cost model (which prices it) and the validator (which executes it).
//! docs/schemes.md describes each scheme's layout in words; this is the one implementation.
//!
//! A group runs its documents packed, in order, as one sequence (THD layout). Ring positions
//! ("slots") first receive their share of tokens by the scheme's ring variant; then each slot's
//! token list, padded to a multiple of `ulysses`, is cut into `ulysses` equal contiguous parts,
//! one per rank of that slot. Local rank `q = slot * ulysses + i`.

use super::{GroupShape, RingVariant, Scheme};
use serde::{Deserialize, Serialize};

/// Tokens `start, start + stride, ...` (`len` of them) of document `doc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Index into the group's document list.
    pub doc: u32,
    pub start: u32,
    pub len: u32,
    /// 1 for contiguous runs; `ring` for the stripe layout.
    pub stride: u32,
}

impl Piece {
    /// Positions (within the document) of the piece's tokens.
    pub fn positions(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).map(move |k| self.start + k * self.stride)
    }

    /// The piece's sub-range of tokens `from..from + len` (in piece order).
    fn slice(&self, from: u32, len: u32) -> Piece {
        Piece {
            doc: self.doc,
            start: self.start + from * self.stride,
            len,
            stride: self.stride,
        }
    }
}

/// A ring position's tokens: document pieces in order, then `padding` masked tokens.
/// `pad_after[k]` masked tokens follow piece k (per-document padding of the zigzag/stripe layouts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub pieces: Vec<Piece>,
    pub pad_after: Vec<u32>,
    /// Padding at the end, so the slot splits evenly over its Ulysses ranks and matches the
    /// other slots' length.
    pub padding: u32,
}

impl Slot {
    pub fn real_tokens(&self) -> u64 {
        self.pieces.iter().map(|p| u64::from(p.len)).sum()
    }

    pub fn len(&self) -> u64 {
        self.real_tokens() + self.pad_after.iter().map(|&p| u64::from(p)).sum::<u64>() + u64::from(self.padding)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run of one document's tokens in a rank's shard, for cu_seqlens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub doc: u32,
    pub tokens: u32,
    /// Tokens plus the padding that belongs to this run in the padded (THD) form.
    pub padded: u32,
}

/// What one rank holds before any communication: its contiguous part of its slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankShard {
    pub slot: u32,
    pub pieces: Vec<Piece>,
    pub runs: Vec<Run>,
    /// Masked tokens in this shard (per-document and end padding).
    pub padding: u32,
}

impl RankShard {
    /// Cumulative document lengths of this shard (unpadded), starting at 0.
    pub fn cu_seqlens(&self) -> Vec<u32> {
        prefix(self.runs.iter().map(|r| r.tokens))
    }

    /// Cumulative document lengths with their padding: the THD form Megatron/TE take.
    pub fn cu_seqlens_padded(&self) -> Vec<u32> {
        prefix(self.runs.iter().map(|r| r.padded))
    }

    pub fn real_tokens(&self) -> u64 {
        self.pieces.iter().map(|p| u64::from(p.len)).sum()
    }
}

fn prefix(items: impl Iterator<Item = u32>) -> Vec<u32> {
    std::iter::once(0)
        .chain(items.scan(0u32, |acc, x| {
            *acc += x;
            Some(*acc)
        }))
        .collect()
}

/// Knobs of the sequence-aware layout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HsapParams {
    /// Documents at least this long are split over the ring (zigzag); shorter ones stay whole on
    /// one slot. `None`: the fair share of a slot, ceil(total tokens / ring).
    pub split_threshold: Option<u32>,
    /// Work of one token's linear layers, in units of one attention (query, key) pair; used to
    /// balance whole documents over slots by work = pairs + linear_weight x tokens.
    pub linear_weight: f64,
}

impl Default for HsapParams {
    fn default() -> Self {
        HsapParams {
            split_threshold: None,
            linear_weight: 0.0,
        }
    }
}

/// The full layout of one group's micro-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupLayout {
    pub shape: GroupShape,
    /// Document lengths in packing order.
    pub docs: Vec<u32>,
    /// Ring positions, `ring` of them.
    pub slots: Vec<Slot>,
    /// Local ranks, `ulysses x ring` of them, `q = slot * ulysses + i`.
    pub ranks: Vec<RankShard>,
    /// For the sequence-aware layout: which documents are split over the ring (others are whole
    /// on one slot). Every document for the other ring layouts; none when `ring` = 1.
    pub split: Vec<bool>,
}

/// Lays `docs` (lengths, packing order) over the group.
pub fn layout(shape: &GroupShape, docs: &[u32], hsap: &HsapParams) -> GroupLayout {
    let r = shape.ring;
    let (mut slots, split) = match (shape.scheme, r) {
        (_, 1) => (vec![contiguous(docs, 1).remove(0)], vec![false; docs.len()]),
        (Scheme::Hsap, _) => sequence_aware(docs, r, hsap),
        (Scheme::Allgather, _) => (zigzag(docs, r, &vec![true; docs.len()]), vec![true; docs.len()]),
        // A memory state carries a document from one rank to the next in sequence order, so the
        // LASP schemes keep the packed sequence in contiguous shards (their softmax layers too).
        (Scheme::Lasp1 | Scheme::Lasp2 | Scheme::Lasp2h, _) => (contiguous(docs, r), vec![true; docs.len()]),
        _ => (
            match shape.variant {
                RingVariant::Basic => contiguous(docs, r),
                RingVariant::Zigzag => zigzag(docs, r, &vec![true; docs.len()]),
                RingVariant::Stripe => stripe(docs, r),
            },
            vec![true; docs.len()],
        ),
    };
    // Every slot is padded to the same length, a multiple of the Ulysses degree.
    let u = u64::from(shape.ulysses);
    let longest = slots.iter().map(Slot::len).max().unwrap_or(0);
    let target = longest.div_ceil(u) * u;
    for slot in &mut slots {
        slot.padding += (target - slot.len()) as u32;
    }
    let ranks = slots
        .iter()
        .enumerate()
        .flat_map(|(s, slot)| (0..shape.ulysses).map(move |i| shard(slot, s as u32, i, shape.ulysses)))
        .collect();
    GroupLayout {
        shape: *shape,
        docs: docs.to_vec(),
        slots,
        ranks,
        split,
    }
}

/// Basic layout: the packed sequence cut into `r` contiguous chunks of ceil(S / r) tokens.
fn contiguous(docs: &[u32], r: u32) -> Vec<Slot> {
    let total: u64 = docs.iter().map(|&d| u64::from(d)).sum();
    let chunk = total.div_ceil(u64::from(r)).max(1);
    let mut slots: Vec<Slot> = (0..r).map(|_| empty_slot()).collect();
    let mut at = 0u64; // position in the packed sequence
    for (j, &len) in docs.iter().enumerate() {
        let mut start = 0u32;
        while start < len {
            let s = (at / chunk) as usize;
            let room = ((s as u64 + 1) * chunk - at).min(u64::from(len - start)) as u32;
            push(&mut slots[s], Piece { doc: j as u32, start, len: room, stride: 1 }, 0);
            start += room;
            at += u64::from(room);
        }
    }
    slots
}

/// Zigzag (Megatron THD): each document in `which` is padded to a multiple of 2r and cut into 2r
/// chunks; slot i takes chunks i and 2r-1-i. Documents not in `which` are skipped here.
fn zigzag(docs: &[u32], r: u32, which: &[bool]) -> Vec<Slot> {
    let mut slots: Vec<Slot> = (0..r).map(|_| empty_slot()).collect();
    for (j, &len) in docs.iter().enumerate().filter(|(j, _)| which[*j]) {
        let chunk = len.div_ceil(2 * r);
        for (i, slot) in slots.iter_mut().enumerate() {
            for k in [i as u32, 2 * r - 1 - i as u32] {
                let start = (k * chunk).min(len);
                let real = ((k + 1) * chunk).min(len) - start;
                // A chunk past the document's end is all padding: an empty piece carries it, so the
                // padding stays with its document in cu_seqlens_padded.
                push(slot, Piece { doc: j as u32, start: start.min(len), len: real, stride: 1 }, chunk - real);
            }
        }
    }
    slots
}

/// Stripe: token k of each document (padded to a multiple of r) goes to slot k mod r.
fn stripe(docs: &[u32], r: u32) -> Vec<Slot> {
    let mut slots: Vec<Slot> = (0..r).map(|_| empty_slot()).collect();
    for (j, &len) in docs.iter().enumerate() {
        let per_slot = len.div_ceil(r);
        for (i, slot) in slots.iter_mut().enumerate() {
            let i = i as u32;
            let real = if i < len { (len - i).div_ceil(r) } else { 0 };
            push(slot, Piece { doc: j as u32, start: i.min(len), len: real, stride: r }, per_slot - real);
        }
    }
    slots
}

/// Sequence-aware: long documents zigzag over the ring; short ones whole on one slot, placed
/// longest first on the slot with the least work (ties to the lowest slot), keeping packing order
/// within each slot.
fn sequence_aware(docs: &[u32], r: u32, params: &HsapParams) -> (Vec<Slot>, Vec<bool>) {
    let total: u64 = docs.iter().map(|&d| u64::from(d)).sum();
    let threshold = params
        .split_threshold
        .map_or(total.div_ceil(u64::from(r)), u64::from);
    // A one-token document cannot be spread over two slots: zigzagging it would only add 2r - 1
    // rows of padding, and its token would still sit on slot 0 alone, so that nothing in a
    // plan's per-rank layouts could tell it was split. (The threshold reaches 1 when a batch has
    // at most `r` tokens, or when set so.)
    let split: Vec<bool> = docs.iter().map(|&d| d >= 2 && u64::from(d) >= threshold).collect();
    let mut slots = zigzag(docs, r, &split);
    let work = |len: u32| {
        let s = f64::from(len);
        s * (s + 1.0) / 2.0 + params.linear_weight * s
    };
    let mut load: Vec<f64> = vec![0.0; r as usize];
    let mut local: Vec<usize> = (0..docs.len()).filter(|&j| !split[j]).collect();
    local.sort_by(|&a, &b| docs[b].cmp(&docs[a]).then(a.cmp(&b)));
    let mut owner = vec![0u32; docs.len()];
    for j in local {
        let s = (0..r as usize)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .unwrap_or(0);
        load[s] += work(docs[j]);
        owner[j] = s as u32;
    }
    // Whole documents join their slot after its split pieces, in packing order.
    for (j, &len) in docs.iter().enumerate().filter(|(j, _)| !split[*j]) {
        push(&mut slots[owner[j] as usize], Piece { doc: j as u32, start: 0, len, stride: 1 }, 0);
    }
    (slots, split)
}

fn empty_slot() -> Slot {
    Slot {
        pieces: Vec::new(),
        pad_after: Vec::new(),
        padding: 0,
    }
}

fn push(slot: &mut Slot, piece: Piece, pad: u32) {
    slot.pieces.push(piece);
    slot.pad_after.push(pad);
}

/// Rank `i` of a slot's `u` Ulysses ranks takes tokens `[i L/u, (i+1) L/u)` of the slot's token
/// list (pieces with their padding, then the end padding), L being the padded slot length.
fn shard(slot: &Slot, slot_index: u32, i: u32, u: u32) -> RankShard {
    let part = slot.len() / u64::from(u);
    let (from, to) = (part * u64::from(i), part * u64::from(i + 1));
    let mut pieces = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut padding = 0u64;
    let mut at = 0u64;
    let overlap = |a: u64, b: u64| b.min(to).saturating_sub(a.max(from));
    for (piece, &pad) in slot.pieces.iter().zip(&slot.pad_after) {
        let (p0, p1, q1) = (at, at + u64::from(piece.len), at + u64::from(piece.len) + u64::from(pad));
        let real = overlap(p0, p1) as u32;
        let padded = overlap(p1, q1) as u32;
        if real > 0 {
            pieces.push(piece.slice((from.max(p0) - p0) as u32, real));
        }
        if real + padded > 0 {
            match runs.last_mut() {
                Some(run) if run.doc == piece.doc => {
                    run.tokens += real;
                    run.padded += real + padded;
                }
                _ => runs.push(Run {
                    doc: piece.doc,
                    tokens: real,
                    padded: real + padded,
                }),
            }
        }
        padding += u64::from(padded);
        at = q1;
    }
    padding += overlap(at, at + u64::from(slot.padding));
    RankShard {
        slot: slot_index,
        pieces,
        runs,
        padding: padding as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(scheme: Scheme, u: u32, r: u32, variant: RingVariant) -> GroupShape {
        GroupShape {
            scheme,
            ulysses: u,
            ring: r,
            variant,
        }
    }

    /// Every real token of every document appears exactly once over the ranks.
    fn assert_partition(l: &GroupLayout) {
        let mut seen: Vec<Vec<u8>> = l.docs.iter().map(|&d| vec![0; d as usize]).collect();
        for rank in &l.ranks {
            for p in &rank.pieces {
                for pos in p.positions() {
                    seen[p.doc as usize][pos as usize] += 1;
                }
            }
        }
        for (j, s) in seen.iter().enumerate() {
            assert!(s.iter().all(|&c| c == 1), "doc {j} of {:?} not covered exactly once", l.docs);
        }
        let len = l.ranks[0].real_tokens() + u64::from(l.ranks[0].padding);
        for rank in &l.ranks {
            assert_eq!(rank.real_tokens() + u64::from(rank.padding), len, "ranks hold equal shards");
        }
    }

    #[test]
    fn zigzag_matches_megatron_thd() {
        // A 10-token doc over cp = 2 is padded to 12 and cut in 4 chunks of 3: rank 0 holds chunks
        // 0 and 3 (tokens 0-2 and 9, with 2 pad), rank 1 chunks 1 and 2 (tokens 3-8).
        let l = layout(&shape(Scheme::Ring, 1, 2, RingVariant::Zigzag), &[10], &HsapParams::default());
        assert_partition(&l);
        let r0: Vec<(u32, u32)> = l.ranks[0].pieces.iter().map(|p| (p.start, p.len)).collect();
        let r1: Vec<(u32, u32)> = l.ranks[1].pieces.iter().map(|p| (p.start, p.len)).collect();
        assert_eq!(r0, vec![(0, 3), (9, 1)]);
        assert_eq!(r1, vec![(3, 3), (6, 3)]);
        assert_eq!(l.ranks[0].cu_seqlens(), vec![0, 4]);
        assert_eq!(l.ranks[0].cu_seqlens_padded(), vec![0, 6]);
        assert_eq!(l.ranks[1].cu_seqlens_padded(), vec![0, 6]);
    }

    #[test]
    fn basic_cuts_the_packed_sequence_contiguously() {
        let l = layout(&shape(Scheme::Ring, 1, 3, RingVariant::Basic), &[4, 5], &HsapParams::default());
        assert_partition(&l);
        assert_eq!(l.ranks[0].cu_seqlens(), vec![0, 3]);
        assert_eq!(l.ranks[1].cu_seqlens(), vec![0, 1, 3]);
        assert_eq!(l.ranks[2].cu_seqlens(), vec![0, 3]);
    }

    #[test]
    fn stripe_deals_tokens_round_robin() {
        let l = layout(&shape(Scheme::Ring, 1, 4, RingVariant::Stripe), &[6], &HsapParams::default());
        assert_partition(&l);
        let p = l.ranks[1].pieces[0];
        assert_eq!(p.positions().collect::<Vec<_>>(), vec![1, 5]);
        assert_eq!(l.ranks[3].pieces[0].positions().collect::<Vec<_>>(), vec![3]);
        assert_eq!(l.ranks[3].padding, 1);
    }

    #[test]
    fn ulysses_splits_each_slot_evenly() {
        let l = layout(&shape(Scheme::Usp, 2, 2, RingVariant::Zigzag), &[8, 3], &HsapParams::default());
        assert_partition(&l);
        assert_eq!(l.ranks.len(), 4);
    }

    #[test]
    fn sequence_aware_never_splits_a_single_token() {
        // Three tokens over a ring of 4: the fair share is one token, yet a one-token document
        // stays whole (and unpadded), while a two-token one is zigzagged onto two slots.
        let l = layout(&shape(Scheme::Hsap, 1, 4, RingVariant::Zigzag), &[1, 2], &HsapParams::default());
        assert_partition(&l);
        assert_eq!(l.split, vec![false, true]);
        let slots_with_doc1: Vec<u32> = l.ranks.iter().filter(|r| r.pieces.iter().any(|p| p.doc == 1 && p.len > 0)).map(|r| r.slot).collect();
        assert_eq!(slots_with_doc1, vec![0, 1]);
    }

    #[test]
    fn sequence_aware_keeps_short_documents_whole() {
        let docs = [1000, 10, 20, 30, 40];
        let l = layout(&shape(Scheme::Hsap, 1, 2, RingVariant::Zigzag), &docs, &HsapParams::default());
        assert_partition(&l);
        assert_eq!(l.split, vec![true, false, false, false, false]);
        for rank in &l.ranks {
            for p in rank.pieces.iter().filter(|p| p.doc > 0) {
                assert_eq!(p.len, docs[p.doc as usize], "short documents are never cut");
            }
        }
    }
}
