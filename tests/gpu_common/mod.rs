//! Plans built by hand for the validation tests: groups laid out by `scheme::layout` and written
//! with `RankLayout::from_layout`, as the planner writes them.
#![allow(dead_code)]

use hsap::cluster::Cluster;
use hsap::model::ModelShape;
use hsap::plan::{BatchPlan, GroupPlan, MicroBatch, Plan, RankLayout, PLAN_FORMAT_VERSION};
use hsap::scheme::{layout, GroupShape, HsapParams, RingVariant, Scheme};
use hsap::trace::Doc;

pub fn group(scheme: Scheme, u: u32, r: u32, variant: RingVariant, ranks: std::ops::Range<u32>, docs: &[u32], first_doc: u32) -> GroupPlan {
    let shape = GroupShape { scheme, ulysses: u, ring: r, variant };
    let ranks: Vec<u32> = ranks.collect();
    assert_eq!(ranks.len() as u32, u * r);
    let l = layout(&shape, docs, &HsapParams::default());
    GroupPlan {
        ranks: ranks.clone(),
        ulysses: u,
        ring: r,
        scheme,
        ring_variant: variant,
        sequences: (first_doc..first_doc + docs.len() as u32).collect(),
        docs: docs.iter().enumerate().map(|(i, &len)| Doc { index: first_doc + i as u32, offset: 0, len }).collect(),
        rank_layouts: RankLayout::from_layout(&l, &ranks),
        predicted_time_s: 0.05,
        predicted_memory_bytes: 3e10,
    }
}

/// Two nodes of 8 A100s, llama3-8b. Micro-batch 0: USP u4xr2 on node 0, sequence-aware u2xr2 on
/// ranks 8-11, Ulysses u4 on ranks 12-15. Micro-batch 1: a double ring u4xr4 over both nodes.
pub fn two_node_plan() -> Plan {
    let cluster = Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(2).unwrap();
    let mb0 = MicroBatch {
        groups: vec![
            group(Scheme::Usp, 4, 2, RingVariant::Zigzag, 0..8, &[5000, 3000], 0),
            group(Scheme::Hsap, 2, 2, RingVariant::Zigzag, 8..12, &[6000, 100, 200, 300], 2),
            group(Scheme::Ulysses, 4, 1, RingVariant::Zigzag, 12..16, &[1000, 3000], 6),
        ],
        predicted_time_s: 0.061,
    };
    let mb1 = MicroBatch {
        groups: vec![group(Scheme::DoubleRing, 4, 4, RingVariant::Zigzag, 0..16, &[20000, 12000], 8)],
        predicted_time_s: 0.072,
    };
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        strategy: "hand-made".into(),
        trace: "tests".into(),
        model: ModelShape::resolve("llama3-8b").unwrap(),
        cluster,
        train: Default::default(),
        memory_limit_bytes: 0.0,
        batches: vec![BatchPlan {
            index: 4,
            docs: [&mb0, &mb1].iter().flat_map(|m| m.groups.iter().flat_map(|g| g.docs.iter().copied())).collect(),
            microbatches: vec![mb0, mb1],
            predicted_step_s: 0.140,
            predicted_peak_memory_bytes: 6e10,
            grad_sync_exposed_s: 0.0,
            source: String::new(),
        }],
    }
}
