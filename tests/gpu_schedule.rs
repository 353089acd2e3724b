//! Per-rank schedules built from hand-made plans, checked against the plan and hand-computed
//! shapes and bytes (llama3-8b: 32 heads, 8 KV heads, head_dim 128, hidden 4096, FFN 14336).

mod gpu_common;

use gpu_common::two_node_plan;
use hsap::cluster::{Calibration, CollectiveFit, Collective, LinkLevel};
use hsap::gpu::attention::Tiling;
use hsap::gpu::reference::check_races;
use hsap::gpu::pricing::CostModelPricer;
use hsap::gpu::schedule::{Block, OpKind, Phase, Schedule, Stream, Tensor};

fn schedule() -> Schedule {
    Schedule::for_plan(&two_node_plan(), Some(4), Tiling::default()).unwrap().remove(0)
}

fn block(s: &Schedule, rank: u32, mb: usize, phase: Phase) -> &Block {
    s.ranks[rank as usize]
        .blocks
        .iter()
        .find(|b| b.microbatch == Some(mb) && b.phase == phase)
        .unwrap()
}

fn ops<'a>(b: &'a Block, pred: impl Fn(&OpKind) -> bool + 'a) -> Vec<&'a OpKind> {
    b.ops.iter().map(|o| &o.kind).filter(|k| pred(k)).collect()
}

#[test]
fn every_rank_of_every_group_has_its_blocks() {
    let s = schedule();
    assert_eq!(s.world, 16);
    for rs in &s.ranks {
        assert_eq!(rs.membership.len(), 2, "rank {}", rs.rank);
        let phases: Vec<(Phase, Option<usize>, u32)> = rs.blocks.iter().map(|b| (b.phase, b.microbatch, b.repeat)).collect();
        let mut want = Vec::new();
        for m in 0..2 {
            // Full checkpointing (the plan's training configuration) recomputes every layer's
            // forward before its backward.
            want.extend([
                (Phase::LayerForward, Some(m), 32),
                (Phase::Head, Some(m), 1),
                (Phase::LayerRecompute, Some(m), 32),
                (Phase::LayerBackward, Some(m), 32),
            ]);
        }
        want.push((Phase::GradSync, None, 1));
        assert_eq!(phases, want, "rank {}", rs.rank);
        for (m, mem) in rs.membership.iter().enumerate() {
            let g = &s.microbatches[m].groups[mem.group];
            assert_eq!(g.ranks[mem.local_rank as usize], rs.rank);
        }
        assert_eq!(rs.node, rs.rank / 8);
    }
    // Micro-batch 0's groups and where each rank sits.
    let groups: Vec<Vec<u32>> = s.microbatches[0].groups.iter().map(|g| g.ranks.clone()).collect();
    assert_eq!(groups, vec![(0..8).collect::<Vec<_>>(), (8..12).collect(), (12..16).collect()]);
    assert_eq!(s.ranks[13].membership[0].local_rank, 1);
}

#[test]
fn ulysses_all_to_alls_move_the_shard_for_each_peers_heads() {
    let s = schedule();
    // Ulysses u4 on [1000, 3000]: a slot of 4000 rows, shards of 1000.
    let fwd = block(&s, 13, 0, Phase::LayerForward);
    let a2a: Vec<(Tensor, Vec<u32>, u64)> = ops(fwd, |k| matches!(k, OpKind::AllToAll { .. }))
        .into_iter()
        .map(|k| match k {
            OpKind::AllToAll { tensor, peers, bytes, .. } => (*tensor, peers.clone(), *bytes),
            _ => unreachable!(),
        })
        .collect();
    let peers: Vec<u32> = (12..16).collect();
    assert_eq!(
        a2a,
        vec![
            (Tensor::Q, peers.clone(), 1000 * 32 * 128 * 2),
            (Tensor::K, peers.clone(), 1000 * 8 * 128 * 2),
            (Tensor::V, peers.clone(), 1000 * 8 * 128 * 2),
            (Tensor::O, peers.clone(), 1000 * 32 * 128 * 2),
        ]
    );
    // Attention on 8 query heads and the 2 KV heads they read, over the whole slot.
    let attn = ops(fwd, |k| matches!(k, OpKind::AttnFwd(_)));
    let OpKind::AttnFwd(a) = attn[0] else { unreachable!() };
    assert_eq!((a.heads.q_heads, a.heads.q_head0, a.heads.kv_heads, a.heads.kv_head0), (8, 8, 2, 2));
    assert_eq!((a.rows_q, a.rows_k), (4000, 4000));
    // Document-masked causal pairs: 1000*1001/2 + 3000*3001/2.
    assert_eq!(a.pairs, 500_500 + 4_501_500);
}

#[test]
fn gemms_have_the_models_linear_shapes() {
    let s = schedule();
    let gemms: Vec<(String, u64, u64, u64, u64)> = ops(block(&s, 12, 0, Phase::LayerForward), |k| matches!(k, OpKind::Gemm { .. }))
        .into_iter()
        .map(|k| match k {
            OpKind::Gemm { name, m, n, k, count } => (name.clone(), *m, *n, *k, *count),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        gemms,
        vec![
            ("qkv_proj".into(), 1000, 6144, 4096, 1),
            ("o_proj".into(), 1000, 4096, 4096, 1),
            ("mlp_up".into(), 1000, 28672, 4096, 1),
            ("mlp_down".into(), 1000, 4096, 14336, 1),
        ]
    );
    // The backward: input and weight gradients of each by their own shapes (the forward's FLOPs
    // each): the input gradient (m, k, n), the weight gradient (k, n, m) over the tokens.
    let bwd = ops(block(&s, 12, 0, Phase::LayerBackward), |k| matches!(k, OpKind::Gemm { .. }));
    assert_eq!(bwd.len(), 8);
    let shape = |op: &OpKind| match op {
        OpKind::Gemm { name, m, n, k, .. } => (name.clone(), *m, *n, *k),
        _ => unreachable!(),
    };
    assert_eq!(shape(bwd[3]), ("mlp_down dgrad".into(), 1000, 14336, 4096));
    assert_eq!(shape(bwd[5]), ("o_proj wgrad".into(), 4096, 4096, 1000));
    assert_eq!(shape(bwd[7]), ("mlp_down wgrad".into(), 14336, 4096, 1000));
    let head = ops(block(&s, 12, 0, Phase::Head), |_| true);
    let OpKind::Gemm { m, n, k, count, .. } = head[0] else { unreachable!() };
    assert_eq!((*m, *n, *k, *count), (1000, 128256, 4096, 1));
}

fn send_recvs(b: &Block) -> Vec<(Stream, Tensor, u32, u32, u32, u64)> {
    b.ops
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::SendRecv { tensor, rows, send_to, recv_from, bytes, .. } => Some((o.stream, *tensor, *rows, *send_to, *recv_from, *bytes)),
            _ => None,
        })
        .collect()
}

#[test]
fn usp_ring_steps_exchange_whole_slots_with_the_same_ulysses_index() {
    let s = schedule();
    // USP u4xr2 zigzag on [5000, 3000]: every slot holds 2500 + 1500 = 4000 rows. Rank 1 is slot 0,
    // Ulysses index 1; its ring peer is rank 5 (slot 1, index 1). Its 2 KV heads, K and V, bf16.
    let kv = 4000 * 2 * 128 * 2 * 2;
    assert_eq!(send_recvs(block(&s, 1, 0, Phase::LayerForward)), vec![(Stream::Ring, Tensor::Kv, 4000, 5, 5, kv)]);
    // Backward: the block again, then its KV gradients (f32) travel home.
    assert_eq!(
        send_recvs(block(&s, 1, 0, Phase::LayerBackward)),
        vec![(Stream::Ring, Tensor::Kv, 4000, 5, 5, kv), (Stream::Ring, Tensor::DKv, 4000, 5, 5, 4000 * 2 * 128 * 4 * 2)]
    );
}

#[test]
fn the_sequence_aware_ring_circulates_only_the_split_document() {
    let s = schedule();
    // hsap u2xr2 on [6000, 100, 200, 300]: the 6000-token document is split (1500-token chunks,
    // 3000 rows per slot); the short ones stay whole. Rank 9 = slot 0, index 1; peer rank 11.
    let g = &s.microbatches[0].groups[1];
    assert_eq!(g.varlen.split, vec![true, false, false, false]);
    assert_eq!(g.varlen.block_rows, 3000);
    assert_eq!(g.varlen.slot_rows(), 3300);
    assert_eq!(send_recvs(block(&s, 9, 0, Phase::LayerForward)), vec![(Stream::Ring, Tensor::Kv, 3000, 11, 11, 3000 * 4 * 128 * 2 * 2)]);
}

#[test]
fn the_double_ring_has_an_inner_ring_in_the_node_and_an_outer_ring_across() {
    let s = schedule();
    // Double ring u4xr4 over 16 GPUs: 2 slots per node (inner), 2 nodes (outer). Rank 0 = slot 0.
    // Slots of [20000, 12000] zigzagged over 4: 2x2500 + 2x1500 = 8000 rows.
    let g = &s.microbatches[1].groups[0];
    assert_eq!(g.inner, 2);
    let kv = 8000 * 2 * 128 * 2 * 2;
    assert_eq!(
        send_recvs(block(&s, 0, 1, Phase::LayerForward)),
        vec![
            (Stream::Outer, Tensor::Kv, 8000, 8, 8, kv),
            (Stream::Ring, Tensor::Kv, 8000, 4, 4, kv),
            (Stream::Ring, Tensor::Kv, 8000, 4, 4, kv),
        ]
    );
    // Four attention steps, one per slot, the own slot first.
    let origins: Vec<u32> = ops(block(&s, 0, 1, Phase::LayerForward), |k| matches!(k, OpKind::AttnFwd(_)))
        .into_iter()
        .map(|k| match k {
            OpKind::AttnFwd(a) => a.origin,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(origins, vec![0, 1, 2, 3]);
}

#[test]
fn under_zero_0_the_step_ends_with_a_gradient_all_reduce_over_every_gpu() {
    let mut plan = two_node_plan();
    plan.train.zero = 0;
    let s = Schedule::for_plan(&plan, Some(4), Tiling::default()).unwrap().remove(0);
    for rs in &s.ranks {
        let last = rs.blocks.last().unwrap();
        let OpKind::DataParallel { collective, peers, bytes, .. } = &last.ops[0].kind else { panic!() };
        assert_eq!(*collective, Collective::AllReduce);
        assert_eq!(peers, &(0..16).collect::<Vec<_>>());
        assert_eq!(*bytes, plan.model.params() * 2);
        // Then the optimizer over the whole model (ZeRO 0 does not shard it): Adam's 28 bytes and
        // clipping's 12 per parameter.
        let OpKind::Memory { name, bytes } = &last.ops[1].kind else { panic!() };
        assert_eq!((name.as_str(), *bytes), ("optimizer", plan.model.params() * 40));
    }
}

#[test]
fn every_block_orders_its_streams() {
    let s = schedule();
    for rs in &s.ranks {
        for b in &rs.blocks {
            check_races(&b.ops).unwrap_or_else(|e| panic!("rank {} {:?}: {e}", rs.rank, b.phase));
            // A transfer waits for the compute op issued before it (so a layer's first transfer
            // never runs ahead into the previous layer), except ZeRO's weight gather at the
            // start of a layer: prefetched while the layer before computes.
            let mut last_compute = None;
            for (k, op) in b.ops.iter().enumerate() {
                match (op.stream, last_compute) {
                    (Stream::Compute, _) => last_compute = Some(k),
                    (Stream::Data, None) => {}
                    (_, Some(c)) => assert!(op.waits.contains(&c), "rank {} {:?} op {k} waits {:?}, not {c}", rs.rank, b.phase, op.waits),
                    (_, None) => panic!("rank {} {:?}: a transfer before any compute op", rs.rank, b.phase),
                }
            }
        }
    }
}

#[test]
fn bad_plans_are_errors_that_say_where() {
    let mut plan = two_node_plan();
    plan.batches[0].microbatches[0].groups[2].ranks[0] = 3;
    let err = Schedule::for_plan(&plan, None, Tiling::default()).unwrap_err().to_string();
    assert!(err.contains("batch 4 micro-batch 0 group 2") && err.contains("rank 3 is also in group 0"), "{err}");

    let mut plan = two_node_plan();
    plan.batches[0].microbatches[0].groups.pop();
    let err = Schedule::for_plan(&plan, None, Tiling::default()).unwrap_err().to_string();
    assert!(err.contains("rank 12 is in no group"), "{err}");

    let mut plan = two_node_plan();
    plan.batches[0].microbatches[0].groups[1].rank_layouts[0].cu_seqlens.pop();
    let err = Schedule::for_plan(&plan, None, Tiling::default()).unwrap_err().to_string();
    assert!(err.contains("group 1") && err.contains("rank 8"), "{err}");

    let err = Schedule::for_plan(&two_node_plan(), Some(0), Tiling::default()).unwrap_err().to_string();
    assert!(err.contains("no batch 0") && err.contains("4"), "{err}");
}

#[test]
fn collectives_are_priced_from_a_calibrated_profile() {
    let mut plan = two_node_plan();
    let fit = |op, level, ranks, latency_us, busbw| CollectiveFit {
        op,
        level,
        ranks,
        latency_us,
        busbw_gb_per_s: busbw,
        saturation_bytes: 1e6,
        nodes: None,
        regimes: Vec::new(),
        points: 0,
        rms_log_residual: 0.0,
        max_rel_error: 0.0,
        provenance: "test".into(),
        measured: Vec::new(),
    };
    plan.cluster.calibration = Some(Calibration {
        collectives: vec![
            fit(Collective::AllToAll, LinkLevel::Intra, 8, 20.0, 150.0),
            fit(Collective::SendRecv, LinkLevel::Intra, 2, 10.0, 100.0),
            fit(Collective::SendRecv, LinkLevel::Inter, 2, 30.0, 20.0),
        ],
        kernels: vec![],
        ..Calibration::default()
    });
    let mut s = Schedule::for_plan(&plan, Some(4), Tiling::default()).unwrap().remove(0);
    s.price(&CostModelPricer::new(&plan).unwrap());
    let fwd = block(&s, 13, 0, Phase::LayerForward);
    // The Q all-to-all of 8,192,000 bytes over 4 ranks in one node: 20 us + 8.192e6 * 3/4 / 150e9.
    let q = fwd.ops.iter().find(|o| matches!(o.kind, OpKind::AllToAll { tensor: Tensor::Q, .. })).unwrap();
    let want = 20e-6 + 8_192_000.0 * 0.75 / 150e9;
    assert!((q.predicted_s.unwrap() - want).abs() < 1e-12, "{:?} vs {want}", q.predicted_s);
    // Kernels are priced by the cost model's GEMM model.
    for o in fwd.ops.iter() {
        if let OpKind::Gemm { m, n, k, count, .. } = &o.kind {
            let want = *count as f64 * hsap::cost::compute::gemm_time_s(&plan.cluster, plan.train.dtype, *m as f64, *n as f64, *k as f64);
            assert_eq!(o.predicted_s, Some(want));
        }
    }
    // The double ring's outer transfer crosses nodes: the inter-node fit.
    let outer = block(&s, 0, 1, Phase::LayerForward).ops.iter().find(|o| o.stream == Stream::Outer).unwrap();
    let want = 30e-6 + 8_192_000.0 / 20e9;
    assert!((outer.predicted_s.unwrap() - want).abs() < 1e-12);
}
