//! The CPU reference executor (src/gpu/reference.rs) against single-device document-masked
//! causal attention in f64, for every scheme: the forward output and the three gradients within
//! a relative error of 1e-5, on random packed batches.

use hsap::gpu::attention::Tiling;
use hsap::gpu::reference::{run, run_plan, Outcome, Problem};
use hsap::gpu::schedule::{AttnDims, OpKind, Tensor};
use hsap::gpu::varlen::NO_DOC;
use hsap::plan::RankLayout;
use hsap::scheme::{layout, GroupShape, HsapParams, RingVariant, Scheme};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const TOLERANCE: f64 = 1e-5;

fn small_tiles() -> Tiling {
    Tiling {
        block_m: 4,
        block_n: 4,
        threads_per_row: 2,
    }
}

fn problem(scheme: Scheme, u: u32, r: u32, variant: RingVariant, docs: &[u32], heads: (u32, u32)) -> Problem {
    Problem {
        shape: GroupShape { scheme, ulysses: u, ring: r, variant },
        docs: docs.to_vec(),
        dims: AttnDims {
            heads: heads.0,
            kv_heads: heads.1,
            head_dim: 8,
        },
        inner: if scheme == Scheme::DoubleRing { 2.min(r) } else { r },
        hsap: HsapParams::default(),
        tiling: small_tiles(),
        seed: 7,
    }
}

/// Ring transfers per rank and layer: forward and backward key/value blocks, and the backward's
/// travelling key/value gradients (which go home after the last step).
fn expected_ring_messages(p: &Problem, out: &Outcome) -> usize {
    let (g, r) = (p.shape.size() as usize, p.shape.ring as usize);
    let ring_scheme = matches!(p.shape.scheme, Scheme::Ring | Scheme::Usp | Scheme::DoubleRing | Scheme::Hsap);
    if !ring_scheme || r == 1 || out.varlen.block_rows == 0 {
        return 0;
    }
    let (ri, ro) = if p.shape.scheme == Scheme::DoubleRing { (p.inner as usize, r / p.inner as usize) } else { (r, 1) };
    let kv = ro * (ri - 1) + (ro - 1);
    g * (kv + kv + kv)
}

/// Checks beyond the numbers: what circulates, what is skipped.
fn check_structure(p: &Problem, out: &Outcome) -> Result<(), String> {
    let got = out.ring_messages.len();
    let want = expected_ring_messages(p, out);
    if got != want {
        return Err(format!("{got} ring transfers, expected {want}"));
    }
    let d = u64::from(p.dims.head_dim);
    for m in &out.ring_messages {
        let q = m.to as usize;
        let kv_heads = u64::from(hsap::gpu::attention::HeadMap::ulysses(p.dims.heads, p.dims.kv_heads, p.dims.head_dim, p.shape.ulysses, q as u32 % p.shape.ulysses).kv_heads);
        let elem = if m.tensor == Tensor::DKv { 4 } else { 2 };
        let want = u64::from(out.varlen.block_rows) * kv_heads * d * 2 * elem;
        if m.bytes != want {
            return Err(format!("a {:?} transfer of {} bytes; a block is {want}", m.tensor, m.bytes));
        }
    }
    if p.shape.scheme == Scheme::Hsap {
        // Only split documents circulate: every block holds split documents (or padding) only.
        for (s, block) in out.varlen.blocks.iter().enumerate() {
            if let Some(&doc) = block.docs.iter().find(|&&d| d != NO_DOC && !out.varlen.split[d as usize]) {
                return Err(format!("slot {s}'s circulating block holds whole document {doc}"));
            }
        }
        if !out.varlen.split.iter().any(|&s| s) && got > 0 {
            return Err("no document is split, yet blocks circulate".into());
        }
    }
    if p.shape.scheme == Scheme::Ring && p.shape.variant == RingVariant::Basic {
        // The basic layout's blocks from later slots are masked by causality: never computed.
        for (q, ops) in out.ops.iter().enumerate() {
            for op in &ops.fwd {
                if let OpKind::AttnFwd(a) = &op.kind {
                    if a.origin > q as u32 && !a.skip {
                        return Err(format!("rank {q} computes step {} on the later slot {}", a.step, a.origin));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_scheme_matches_f64_attention() {
    let docs = [13, 3, 1, 22, 7, 60];
    let cases = [
        (Scheme::Ulysses, 2, 1, RingVariant::Zigzag),
        (Scheme::Ulysses, 4, 1, RingVariant::Zigzag),
        (Scheme::Ring, 1, 3, RingVariant::Basic),
        (Scheme::Ring, 1, 3, RingVariant::Zigzag),
        (Scheme::Ring, 1, 4, RingVariant::Stripe),
        (Scheme::Allgather, 1, 3, RingVariant::Zigzag),
        (Scheme::Usp, 2, 2, RingVariant::Zigzag),
        (Scheme::Usp, 2, 3, RingVariant::Basic),
        (Scheme::DoubleRing, 2, 4, RingVariant::Zigzag),
        (Scheme::DoubleRing, 1, 6, RingVariant::Stripe),
        (Scheme::Hsap, 2, 2, RingVariant::Zigzag),
        (Scheme::Hsap, 1, 4, RingVariant::Zigzag),
    ];
    for (scheme, u, r, v) in cases {
        for heads in [(4, 4), (4, 2), (4, 1)] {
            let p = problem(scheme, u, r, v, &docs, heads);
            let out = run(&p).unwrap_or_else(|e| panic!("{scheme:?} u{u} r{r} {v:?} {heads:?}: {e}"));
            assert!(
                out.max_error() <= TOLERANCE,
                "{scheme:?} u{u} r{r} {v:?} {heads:?}: {:?}",
                (out.out_error, out.dq_error, out.dk_error, out.dv_error)
            );
            check_structure(&p, &out).unwrap_or_else(|e| panic!("{scheme:?} u{u} r{r} {v:?}: {e}"));
        }
    }
}

/// A random case: any scheme and degrees, grouped-query heads (replicated when fewer key/value
/// heads than the Ulysses degree), documents shorter than the degree and lengths not divisible by
/// it, tiles from tiny to the kernels' own.
fn cases() -> impl Strategy<Value = Problem> {
    let scheme = prop::sample::select(Scheme::ALL.to_vec());
    let variant = prop::sample::select(RingVariant::ALL.to_vec());
    let docs = prop::collection::vec(prop_oneof![1u32..4, 1u32..20, 20u32..70], 1..7);
    // (12, 3) and (6, 3) put a rank's query heads across two KV groups at Ulysses 4 and 2.
    let heads = prop::sample::select(vec![(4u32, 4u32), (4, 2), (4, 1), (8, 2), (8, 8), (2, 1), (12, 3), (6, 3)]);
    let degrees = (prop::sample::select(vec![1u32, 2, 4]), 1u32..5, prop::sample::select(vec![1u32, 2, 3]));
    let tiling = prop::sample::select(vec![
        Tiling { block_m: 2, block_n: 2, threads_per_row: 1 },
        Tiling { block_m: 4, block_n: 4, threads_per_row: 2 },
        Tiling { block_m: 8, block_n: 2, threads_per_row: 4 },
        Tiling::default(),
    ]);
    let threshold = prop_oneof![Just(None), (1u32..40).prop_map(Some)];
    (scheme, variant, docs, heads, degrees, tiling, threshold, any::<u64>()).prop_filter_map(
        "degrees the scheme allows",
        |(scheme, variant, docs, heads, (u, r, inner), tiling, threshold, seed)| {
            let (u, r) = match scheme {
                Scheme::Ulysses => (u, 1),
                Scheme::Ring | Scheme::Allgather => (1, r),
                Scheme::DoubleRing => (u, r * inner),
                _ => (u, r),
            };
            if heads.0 % u != 0 || (scheme == Scheme::DoubleRing && r < 2) {
                return None;
            }
            let head_dim = 8;
            Some(Problem {
                shape: GroupShape { scheme, ulysses: u, ring: r, variant },
                docs,
                dims: AttnDims { heads: heads.0, kv_heads: heads.1, head_dim },
                inner: if scheme == Scheme::DoubleRing { inner } else { r },
                hsap: HsapParams { split_threshold: threshold, linear_weight: 0.0 },
                tiling,
                seed,
            })
        },
    )
}

#[test]
fn random_packed_batches_match_f64_attention() {
    // HSAP_REFERENCE_CASES raises the count for a longer run.
    let cases_run = std::env::var("HSAP_REFERENCE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut runner = TestRunner::new(Config {
        cases: cases_run,
        failure_persistence: None,
        ..Config::default()
    });
    let worst = std::cell::Cell::new(0f64);
    let split_rings = std::cell::Cell::new(0u32);
    runner
        .run(&cases(), |p| {
            let out = run(&p).map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))?;
            prop_assert!(out.max_error() <= TOLERANCE, "{p:?}: errors {:?}", (out.out_error, out.dq_error, out.dk_error, out.dv_error));
            check_structure(&p, &out).map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))?;
            worst.set(worst.get().max(out.max_error()));
            if !out.ring_messages.is_empty() {
                split_rings.set(split_rings.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{cases_run} random cases; worst relative error {:.3e} (tolerance {TOLERANCE:e}); {} with ring traffic",
        worst.get(),
        split_rings.get()
    );
    assert!(split_rings.get() > cases_run / 4, "too few cases exercise the ring");
}

/// The plan's cu_seqlens are what the kernels read by: a plan that puts one padding row in the
/// wrong place is caught row by row, and without that check the numbers are wrong too.
#[test]
fn a_wrong_cu_seqlens_is_caught() {
    let p = problem(Scheme::Ring, 1, 2, RingVariant::Zigzag, &[10, 7], (4, 2));
    let l = layout(&p.shape, &p.docs, &p.hsap);
    let good = RankLayout::from_layout(&l, &[0, 1]);
    // Rank 0 holds chunks 0 and 3 of each document: the padding of the 10-token document
    // (padded to 12) belongs after token 9. Move one padding row in front of the second document.
    let mut bad = good.clone();
    assert_eq!(bad[0].cu_seqlens_padded, vec![0, 6, 10]);
    bad[0].cu_seqlens_padded = vec![0, 5, 10];
    let err = run_plan(&p, &bad, true).unwrap_err();
    assert!(err.contains("rank 0 row"), "{err}");
    match run_plan(&p, &bad, false) {
        Ok(out) => assert!(out.max_error() > 1e-2, "a wrong layout gave error {}", out.max_error()),
        Err(e) => panic!("{e}"),
    }
    let out = run_plan(&p, &good, true).unwrap();
    assert!(out.max_error() <= TOLERANCE);
}
