//! Invariants of every plan the planner and the baselines produce, on random small instances.

use hsap::cluster::Cluster;
use hsap::cost::{CostModel, TrainConfig};
use hsap::model::ModelShape;
use hsap::scheme::{GroupShape, RingVariant, Scheme};
use hsap::solver::{hsap, Ctx, HsapOptions, MegatronDcp, Priced};
use hsap::trace::{Batch, Doc};
use proptest::prelude::*;
use std::sync::OnceLock;

const MAX_LEN: u32 = 60_000;

/// Two nodes of the default cluster (16 GPUs), shared by all cases: tabulating is the slow part.
fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let cluster = Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(2).unwrap();
        let cm = CostModel::new(ModelShape::resolve("gpt-7b").unwrap(), cluster, TrainConfig::default()).unwrap();
        Ctx::new(cm, MAX_LEN).unwrap()
    })
}

fn batch(lens: &[u32]) -> Batch {
    Batch {
        index: 0,
        docs: lens.iter().enumerate().map(|(i, &len)| Doc { index: 1000 + i as u32, offset: 0, len }).collect(),
    }
}

/// Every document exactly once; every GPU in exactly one group per micro-batch; groups aligned to
/// nodes; every group within the memory limit.
fn check_plan(ctx: &Ctx, b: &Batch, p: &Priced) -> Result<(), TestCaseError> {
    let mut seen = vec![0u32; b.docs.len()];
    for m in &p.micro {
        let mut owner = vec![0u32; ctx.gpus as usize];
        for g in &m.groups {
            let size = g.shape.size();
            prop_assert_eq!(g.ranks.len() as u32, size);
            let first = g.ranks[0];
            prop_assert!(g.ranks.iter().enumerate().all(|(i, &r)| r == first + i as u32), "ranks contiguous");
            if size >= ctx.gpus_per_domain {
                prop_assert_eq!(first % ctx.gpus_per_domain, 0, "multi-node groups start at a node boundary");
                prop_assert_eq!(size % ctx.gpus_per_domain, 0, "multi-node groups are whole nodes");
            } else {
                prop_assert_eq!(first % size, 0, "small groups are aligned inside a node");
                prop_assert_eq!(first / ctx.gpus_per_domain, (first + size - 1) / ctx.gpus_per_domain);
            }
            for &r in &g.ranks {
                owner[r as usize] += 1;
            }
            for &d in &g.docs {
                seen[d] += 1;
            }
            prop_assert!(g.cost.memory_bytes <= ctx.limit_bytes, "group over the memory limit: {}", g.cost.memory_bytes);
            g.shape.check(&ctx.cm.model, &ctx.cm.cluster).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert!(owner.iter().all(|&c| c == 1), "every GPU in exactly one group: {:?}", owner);
    }
    prop_assert!(seen.iter().all(|&c| c == 1), "every document exactly once: {:?}", seen);
    let slowest: f64 = p.micro.iter().map(|m| m.time_s).sum();
    prop_assert!((p.step_s - slowest - p.grad_sync_exposed_s).abs() < 1e-9);
    Ok(())
}

fn lengths() -> impl Strategy<Value = Vec<u32>> {
    // Mostly short documents with a long tail, as real traces have.
    let len = prop_oneof![8 => 16u32..4_000, 3 => 4_000u32..20_000, 1 => 20_000u32..MAX_LEN];
    prop::collection::vec(len, 1..64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn hsap_plans_are_valid_and_deterministic(lens in lengths()) {
        let ctx = ctx();
        let b = batch(&lens);
        let opts = HsapOptions::default();
        let p = hsap(ctx, &b, &opts, &[]).unwrap();
        check_plan(ctx, &b, &p)?;
        let again = hsap(ctx, &b, &opts, &[]).unwrap();
        prop_assert_eq!(p, again);
    }

    #[test]
    fn megatron_dcp_plans_are_valid(lens in lengths()) {
        let ctx = ctx();
        let b = batch(&lens);
        let dcp = MegatronDcp::new(ctx);
        for per_rank in [dcp.rank_capacity_tokens(), dcp.rank_capacity_tokens() / 4] {
            let sol = dcp.plan(ctx, &b, per_rank).unwrap();
            let p = ctx.finish(&b, &sol).unwrap();
            // DCP sizes CP groups by tokens per rank alone: check the partition, not its speed.
            check_plan(ctx, &b, &p)?;
        }
    }
}

/// A document a little over one GPU's capacity: a CP group of twice the ranks does not hold
/// twice the tokens (model states and buffers stay per rank), so DCP must go up a size.
#[test]
fn megatron_dcp_sizes_groups_by_what_they_hold_in_memory() {
    let cluster = Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(2).unwrap();
    let cm = CostModel::new(ModelShape::resolve("gpt-7b").unwrap(), cluster, TrainConfig::default()).unwrap();
    let ctx = Ctx::new(cm, 200_000).unwrap();
    let dcp = MegatronDcp::new(&ctx);
    let cap = dcp.rank_capacity_tokens() as u32;
    let ring2 = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 2, variant: RingVariant::Zigzag };
    let fits2 = |len: u32| ctx.group_cost(&ring2, &[len]).memory_bytes <= ctx.limit_bytes;
    // The longest document two ranks hold, by bisection.
    let (mut lo, mut hi) = (cap, 2 * cap);
    assert!(fits2(lo) && !fits2(hi), "two ranks hold more than one and less than twice one");
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits2(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let b = batch(&[hi, 3000, 5000]);
    let p = ctx.finish(&b, &dcp.plan(&ctx, &b, u64::from(cap)).unwrap()).unwrap();
    check_plan(&ctx, &b, &p).unwrap();
    let long = p.micro[0].groups.iter().find(|g| g.docs.contains(&0)).unwrap();
    assert_eq!(long.shape.size(), 4, "{hi} tokens need four ranks, not {:?}", long.shape);
}

#[test]
fn an_incumbent_better_than_the_search_wins() {
    let ctx = ctx();
    let b = batch(&[500, 700, 900]);
    let mut fake = hsap(ctx, &b, &HsapOptions::default(), &[]).unwrap();
    fake.step_s *= 0.5;
    fake.source = "fake".into();
    let p = hsap(ctx, &b, &HsapOptions::default(), &[fake.clone()]).unwrap();
    assert_eq!(p.source, "incumbent:fake");
    assert_eq!(p.step_s, fake.step_s);
}
