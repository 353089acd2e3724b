//! The cost model's per-slot attention work is exactly what the layout implies: for random
//! document sets and every scheme, the pairs and kernel tiles between every two ring slots equal
//! a brute-force count over the layout's token positions.

use hsap::cost::pairs::{slot_work, ATTENTION_TILE_TOKENS};
use hsap::cost::batch_layout;
use hsap::scheme::{GroupShape, HsapParams, Piece, RingVariant, Scheme};
use proptest::prelude::*;
use std::collections::HashSet;

fn brute(q: &Piece, k: &Piece) -> (f64, f64) {
    if q.doc != k.doc {
        return (0.0, 0.0);
    }
    let b = ATTENTION_TILE_TOKENS as usize;
    let ks: Vec<u32> = k.positions().collect();
    let mut pairs = 0.0;
    let mut tiles = HashSet::new();
    for (m, p) in q.positions().enumerate() {
        for (n, &x) in ks.iter().enumerate() {
            if x <= p {
                pairs += 1.0;
                tiles.insert((m / b, n / b));
            }
        }
    }
    (pairs, tiles.len() as f64)
}

fn schemes() -> impl Strategy<Value = GroupShape> {
    (0usize..6, 1u32..=2, 1u32..=4).prop_map(|(s, u, r)| {
        let (scheme, variant, u) = match s {
            0 => (Scheme::Ring, RingVariant::Basic, 1),
            1 => (Scheme::Ring, RingVariant::Zigzag, 1),
            2 => (Scheme::Ring, RingVariant::Stripe, 1),
            3 => (Scheme::Allgather, RingVariant::Zigzag, 1),
            4 => (Scheme::Usp, RingVariant::Zigzag, u),
            _ => (Scheme::Hsap, RingVariant::Zigzag, u),
        };
        GroupShape { scheme, ulysses: u, ring: r, variant }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn slot_work_matches_brute_force(
        shape in schemes(),
        sequences in prop::collection::vec(prop::collection::vec(1u32..400, 1..5), 1..3),
    ) {
        let layout = batch_layout(&shape, &sequences, &HsapParams::default());
        let w = slot_work(&layout);
        let r = layout.slots.len();
        let total: f64 = sequences.iter().flatten().map(|&d| f64::from(d) * (f64::from(d) + 1.0) / 2.0).sum();
        prop_assert_eq!(w.pairs.iter().flatten().sum::<f64>(), total);
        for i in 0..r {
            for j in 0..r {
                let (mut pairs, mut tiles) = (0.0, 0.0);
                for q in layout.slots[i].pieces.iter().filter(|p| p.len > 0) {
                    for k in layout.slots[j].pieces.iter().filter(|p| p.len > 0) {
                        let (p, t) = brute(q, k);
                        pairs += p;
                        tiles += t;
                    }
                }
                prop_assert_eq!(w.pairs[i][j], pairs, "pairs at ({}, {}) for {}", i, j, shape);
                prop_assert_eq!(w.tiles[i][j], tiles, "tiles at ({}, {}) for {}", i, j, shape);
            }
        }
    }
}
