//! The LASP schemes' CPU reference executor (src/gpu/reference/linear.rs) against single-device
//! causal linear attention over packed documents in f64: LASP-1's state chain and LASP-2's
//! all-gather of states, over the layouts the planner writes, within a relative error of 1e-5;
//! and the chunk kernel's CPU mirror and the f64 definition on cases computed by hand.

use hsap::gpu::linear_attention::{segment, ChunkInputs};
use hsap::gpu::reference::linear::{causal_linear_attention, run, run_plan, LinearInputs, LinearOutcome, LinearProblem};
use hsap::model::{LinearAttention, LinearVariant};
use hsap::plan::RankLayout;
use hsap::scheme::{layout, HsapParams, Scheme};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const TOLERANCE: f64 = 1e-5;

fn shape(variant: LinearVariant, heads: u32, key_dim: u32, value_dim: u32, chunk: u32) -> LinearAttention {
    LinearAttention { variant, heads, key_dim, value_dim, chunk }
}

fn problem(scheme: Scheme, ring: u32, docs: &[u32], chunk: u32, decay: &[f32]) -> LinearProblem {
    let variant = if decay.iter().all(|&l| l == 1.0) { LinearVariant::Basic } else { LinearVariant::Lightning };
    LinearProblem {
        scheme,
        ring,
        docs: docs.to_vec(),
        la: shape(variant, decay.len() as u32, 4, 3, chunk),
        decay: decay.to_vec(),
        seed: 11,
    }
}

/// The exchange moved what the scheme prices (docs/cost-model.md 5.7): LASP-1 `r - 1` hops of
/// one `heads x key_dim x value_dim` fp32 state, LASP-2 an all-gather of `r` of them.
fn check_exchange(p: &LinearProblem, out: &LinearOutcome) -> Result<(), String> {
    let state = 4 * u64::from(p.la.heads * p.la.key_dim * p.la.value_dim);
    let r = p.ring;
    match p.scheme {
        Scheme::Lasp1 => {
            let hops: Vec<(u32, u32)> = out.messages.iter().map(|m| (m.from, m.to)).collect();
            let want: Vec<(u32, u32)> = (1..r).map(|q| (q - 1, q)).collect();
            if hops != want || out.messages.iter().any(|m| m.bytes != state) || out.gathered_bytes != 0 {
                return Err(format!("LASP-1 sent {:?}, gathered {}; expected hops {want:?} of {state} bytes", out.messages, out.gathered_bytes));
            }
        }
        _ => {
            if !out.messages.is_empty() || out.gathered_bytes != u64::from(r) * state {
                return Err(format!("LASP-2 sent {:?}, gathered {}; expected an all-gather of {r} x {state} bytes", out.messages, out.gathered_bytes));
            }
        }
    }
    Ok(())
}

/// By hand: one head, key and value of size 1, q = 1, k = (1, 2, 3), v = 1, decay 1/2, chunks of
/// two. o_0 = 1; o_1 = 0.5 x 1 + 2 = 2.5; o_2 = 0.25 x 1 + 0.5 x 2 + 3 = 4.25 (its first term
/// through the state after the first chunk, M = 0.5 x 1 + 2 = 2.5, as 0.5 x 2.5); the state
/// after the segment is 4.25.
#[test]
fn the_chunk_kernel_mirror_on_a_hand_computed_case() {
    let la = shape(LinearVariant::Lightning, 1, 1, 1, 2);
    let x = ChunkInputs { q: &[1.0; 3], k: &[1.0, 2.0, 3.0], v: &[1.0; 3], decay: &[0.5] };
    let (mut state, mut out) = (vec![0f32], vec![f32::NAN; 3]);
    segment(&la, x, 0..3, &mut state, &mut out);
    assert_eq!(out, vec![1.0, 2.5, 4.25]);
    assert_eq!(state, vec![4.25]);
    // From a delivered state M = 2 (a document continued from another rank), every output gains
    // l^(t+1) q M: 1, 0.5, 0.25; the state gains l^3 M = 0.25.
    let (mut state, mut out) = (vec![2f32], vec![f32::NAN; 3]);
    segment(&la, x, 0..3, &mut state, &mut out);
    assert_eq!(out, vec![2.0, 3.0, 4.5]);
    assert_eq!(state, vec![4.25 + 0.125 * 2.0]);
    // The f64 definition on the same numbers, and a document boundary after token 1.
    let o = causal_linear_attention(&la, &[0.5], &[0, 3], x.q, x.k, x.v);
    assert_eq!(o, vec![1.0, 2.5, 4.25]);
    let o = causal_linear_attention(&la, &[0.5], &[0, 1, 3], x.q, x.k, x.v);
    assert_eq!(o, vec![1.0, 2.0, 4.0]);
}

/// By hand, two dimensions, no decay: q = (1, 0), (0, 1); k = (1, 1), (2, -1); v = (1, 2), (3, 4).
/// o_0 = (q_0 . k_0) v_0 = (1, 2); o_1 = (q_1 . k_0) v_0 + (q_1 . k_1) v_1 = (1, 2) - (3, 4) =
/// (-2, -2); the state k_0^T v_0 + k_1^T v_1 = [[1, 2], [1, 2]] + [[6, 8], [-3, -4]] =
/// [[7, 10], [-2, -2]]. Chunks of one token exercise the state path only.
#[test]
fn the_chunk_kernel_mirror_on_a_hand_computed_matrix_case() {
    for chunk in [1, 2, 64] {
        let la = shape(LinearVariant::Basic, 1, 2, 2, chunk);
        let x = ChunkInputs { q: &[1.0, 0.0, 0.0, 1.0], k: &[1.0, 1.0, 2.0, -1.0], v: &[1.0, 2.0, 3.0, 4.0], decay: &[1.0] };
        let (mut state, mut out) = (vec![0f32; 4], vec![f32::NAN; 4]);
        segment(&la, x, 0..2, &mut state, &mut out);
        assert_eq!(out, vec![1.0, 2.0, -2.0, -2.0], "chunk {chunk}");
        assert_eq!(state, vec![7.0, 10.0, -2.0, -2.0], "chunk {chunk}");
    }
}

#[test]
fn lasp1_and_lasp2_match_f64_linear_attention() {
    // A long document over several ranks, documents shorter than a chunk, a run of tiny ones.
    let docs = [130, 3, 2, 22, 7, 60, 1, 1, 2, 40];
    for scheme in Scheme::LINEAR {
        for ring in [1, 2, 3, 5, 8] {
            for chunk in [1, 4, 16, 64] {
                for decay in [vec![1.0, 1.0], vec![0.9, 0.5]] {
                    let p = problem(scheme, ring, &docs, chunk, &decay);
                    let out = run(&p).unwrap_or_else(|e| panic!("{scheme:?} r{ring} chunk {chunk}: {e}"));
                    assert!(out.out_error <= TOLERANCE, "{scheme:?} r{ring} chunk {chunk} decay {decay:?}: error {}", out.out_error);
                    check_exchange(&p, &out).unwrap_or_else(|e| panic!("{scheme:?} r{ring}: {e}"));
                    if ring > 1 {
                        assert!(out.continued > 0, "{scheme:?} r{ring}: no rank continued a document");
                    }
                }
            }
        }
    }
}

/// A random case: scheme, SP degree 1 to 12, chunk 1 to 64, documents from one token to several
/// ranks' worth (and many tiny ones), heads and state shapes, decays of lightning attention.
fn cases() -> impl Strategy<Value = LinearProblem> {
    let scheme = prop::sample::select(Scheme::LINEAR.to_vec());
    let docs = prop_oneof![
        prop::collection::vec(prop_oneof![1u32..4, 1u32..20, 20u32..200], 1..10),
        prop::collection::vec(1u32..3, 1..60),
    ];
    let dims = (1u32..4, prop::sample::select(vec![1u32, 2, 4, 8]), prop::sample::select(vec![1u32, 3, 8]));
    let chunk = prop::sample::select(vec![1u32, 2, 3, 8, 16, 64]);
    let gated = any::<bool>();
    (scheme, 1u32..=12, docs, dims, chunk, gated, any::<u64>()).prop_flat_map(|(scheme, ring, docs, (heads, dk, dv), chunk, gated, seed)| {
        let decays = if gated { prop::collection::vec(0.5f32..=1.0, heads as usize).boxed() } else { Just(vec![1.0; heads as usize]).boxed() };
        decays.prop_map(move |decay| LinearProblem {
            scheme,
            ring,
            docs: docs.clone(),
            la: shape(if gated { LinearVariant::Lightning } else { LinearVariant::Basic }, heads, dk, dv, chunk),
            decay,
            seed,
        })
    })
}

#[test]
fn random_packed_batches_match_f64_linear_attention() {
    // HSAP_REFERENCE_CASES raises the count for a longer run.
    let cases_run = std::env::var("HSAP_REFERENCE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut runner = TestRunner::new(Config {
        cases: cases_run,
        failure_persistence: None,
        ..Config::default()
    });
    let worst = std::cell::Cell::new(0f64);
    let continued = std::cell::Cell::new(0u32);
    runner
        .run(&cases(), |p| {
            let out = run(&p).map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))?;
            prop_assert!(out.out_error <= TOLERANCE, "{p:?}: error {}", out.out_error);
            check_exchange(&p, &out).map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))?;
            worst.set(worst.get().max(out.out_error));
            if out.continued > 0 {
                continued.set(continued.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{cases_run} random cases; worst relative error {:.3e} (tolerance {TOLERANCE:e}); {} with a state crossing ranks", worst.get(), continued.get());
    assert!(continued.get() > cases_run / 2, "too few cases carry a state across ranks");
}

/// The state is what crosses ranks: the same tokens as one 40-token document over two ranks
/// (rank 1 continues it from rank 0's state) and as two 20-token documents (rank 1 starts from
/// zero) both match their own truths, and those truths differ by far more than the tolerance. An
/// executor that lost the state, or failed to reset it, would fail the tests above.
#[test]
fn the_state_crossing_and_the_reset_both_matter() {
    let one = problem(Scheme::Lasp1, 2, &[40], 8, &[1.0]);
    let two = problem(Scheme::Lasp1, 2, &[20, 20], 8, &[1.0]);
    let x_one = LinearInputs::random(&one);
    let x_two = LinearInputs { offsets: vec![0, 20, 40], ..LinearInputs::random(&one) };
    for scheme in [Scheme::Lasp1, Scheme::Lasp2] {
        let (one, two) = (LinearProblem { scheme, ..one.clone() }, LinearProblem { scheme, ..two.clone() });
        let plan = |p: &LinearProblem| RankLayout::from_layout(&layout(&p.shape(), &p.docs, &HsapParams::default()), &[0, 1]);
        let a = run_plan(&one, &plan(&one), &x_one, true).unwrap();
        let b = run_plan(&two, &plan(&two), &x_two, true).unwrap();
        assert!(a.out_error <= TOLERANCE && a.continued == 1, "{scheme:?}: {} {}", a.out_error, a.continued);
        assert!(b.out_error <= TOLERANCE && b.continued == 0, "{scheme:?}: {} {}", b.out_error, b.continued);
    }
    let la = &one.la;
    let o_one = causal_linear_attention(la, &one.decay, &x_one.offsets, &x_one.q, &x_one.k, &x_one.v);
    let o_two = causal_linear_attention(la, &one.decay, &x_two.offsets, &x_one.q, &x_one.k, &x_one.v);
    let diff = o_one.iter().zip(&o_two).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    let scale = o_one.iter().fold(0f64, |m, a| m.max(a.abs()));
    assert!(diff / scale > 1e-2, "the state changes the result by only {}", diff / scale);
}

/// The plan's cu_seqlens are what the kernels read by: padding moved in front of a document is
/// caught row by row, and without that check the numbers are wrong too.
#[test]
fn a_wrong_cu_seqlens_is_caught() {
    // 22 tokens in shards of 8: rank 2 holds token 6 of document 1, document 2, 2 rows of padding.
    let p = problem(Scheme::Lasp2, 3, &[10, 7, 5], 4, &[1.0, 1.0]);
    let l = layout(&p.shape(), &p.docs, &HsapParams::default());
    let good = RankLayout::from_layout(&l, &[0, 1, 2]);
    let x = LinearInputs::random(&p);
    let mut bad = good.clone();
    assert_eq!(bad[2].cu_seqlens_padded, vec![0, 1, 6]);
    bad[2].cu_seqlens_padded = vec![0, 3, 8];
    let err = run_plan(&p, &bad, &x, true).unwrap_err();
    assert!(err.contains("rank 2 row"), "{err}");
    let out = run_plan(&p, &bad, &x, false).unwrap();
    assert!(out.out_error > 1e-2, "a wrong layout gave error {}", out.out_error);
    assert!(run_plan(&p, &good, &x, true).unwrap().out_error <= TOLERANCE);
}

/// The planner's own plan: a batch with documents too long for one GPU, planned by `Planner` on
/// the 3:1 hybrid preset, puts them on lasp2h groups; each such group's rank layouts (token
/// ranges, cu_seqlens) run through the executor with its linear layers' exchange and match f64
/// linear attention. Heads and state are shrunk (1 head, 4 x 4) to keep the f64 truth cheap; the
/// layouts are the plan's.
#[test]
fn the_planners_lasp_groups_match_f64_linear_attention() {
    use hsap::cluster::Cluster;
    use hsap::cost::TrainConfig;
    use hsap::model::ModelShape;
    use hsap::planner::{Planner, PlannerOptions};
    let model = ModelShape::resolve("hybrid-llama3-1b-3to1").unwrap();
    let cluster = Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(1).unwrap();
    let planner = Planner::new(model, cluster, TrainConfig::default(), PlannerOptions { time_limit_s: 0.0, ..PlannerOptions::default() }).unwrap();
    let lengths: Vec<u32> = vec![8_000, 3_000, 700, 3, 1_500, 64, 130, 5, 2_000, 5_000, 77, 1];
    let batch = planner.plan(&lengths).unwrap();
    let mut lasp_groups = 0;
    for group in batch.microbatches.iter().flat_map(|m| &m.groups) {
        if !group.scheme.is_lasp() {
            continue;
        }
        lasp_groups += usize::from(group.ring > 1);
        for scheme in [Scheme::Lasp1, group.scheme] {
            let p = LinearProblem {
                scheme,
                ring: group.ring,
                docs: group.doc_lengths(),
                la: shape(LinearVariant::Basic, 1, 4, 4, 64),
                decay: vec![1.0],
                seed: 3,
            };
            let out = run_plan(&p, &group.rank_layouts, &LinearInputs::random(&p), true).unwrap_or_else(|e| panic!("{scheme:?} r{}: {e}", group.ring));
            assert!(out.out_error <= TOLERANCE, "{scheme:?} r{} docs {:?}: error {}", group.ring, p.docs, out.out_error);
        }
    }
    assert!(lasp_groups > 0, "the plan split no document over a LASP group: {batch:?}");
}
