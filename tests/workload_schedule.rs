//! One description of the step: the validator's schedule is laid out from the workload the cost
//! model prices, so pricing the schedule op by op gives the cost model's time for the group. For
//! every group shape and scheme `tune` can emit on two nodes, under ZeRO 0, 1 and 3 and every
//! checkpointing policy, the schedule's time is within 1% of the cost model's; the difference is
//! what the executor does its own way (casts, zeroing, the attention backward's preprocessing,
//! the travelling key/value gradients' adds). A ring step backward sends the key/value block and
//! the travelling gradients as two messages in both: the cost model's transfer says so
//! (`Transfer::messages`), so a flat ring of 16 slots over two nodes, whose backward steps are
//! bound by their transfers, is within 1% like the rest.

mod gpu_common;

use hsap::cluster::Cluster;
use hsap::cost::{Checkpointing, CostModel, TrainConfig};
use hsap::gpu::attention::Tiling;
use hsap::gpu::pricing::CostModelPricer;
use hsap::gpu::schedule::{OpKind, Phase, Schedule, Work};
use hsap::model::ModelShape;
use hsap::plan::{BatchPlan, GroupPlan, MicroBatch, Plan, RankLayout, PLAN_FORMAT_VERSION};
use hsap::scheme::{layout, GroupShape, RingVariant, Scheme};
use hsap::solver::{all_sizes, group_shapes, scheme_options};
use hsap::trace::Doc;

/// Documents of the group under test: long ones that every scheme splits, short ones that the
/// sequence-aware layout keeps whole.
const DOCS: [u32; 5] = [9000, 4100, 1500, 700, 130];

fn cluster() -> Cluster {
    Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(2).unwrap()
}

fn model() -> ModelShape {
    let mut m = ModelShape::resolve("llama3-8b").unwrap();
    m.layers = 4;
    m
}

/// A group laid out as the planner lays it out (`cm.hsap_params()`).
fn group(cm: &CostModel, shape: GroupShape, ranks: Vec<u32>, docs: &[u32], first_doc: u32) -> GroupPlan {
    let l = layout(&shape, docs, &cm.hsap_params());
    GroupPlan {
        rank_layouts: RankLayout::from_layout(&l, &ranks),
        ranks,
        ulysses: shape.ulysses,
        ring: shape.ring,
        scheme: shape.scheme,
        ring_variant: shape.variant,
        sequences: (first_doc..first_doc + docs.len() as u32).collect(),
        docs: docs.iter().enumerate().map(|(i, &len)| Doc { index: first_doc + i as u32, offset: 0, len }).collect(),
        predicted_time_s: cm.group(&shape, docs).time_s,
        predicted_memory_bytes: 0.0,
    }
}

/// One micro-batch: the group under test on the first GPUs, every other GPU a group of its own.
fn plan(cm: &CostModel, shape: GroupShape) -> Plan {
    let gpus = cm.cluster.gpus();
    let size = shape.size();
    let mut groups = vec![group(cm, shape, (0..size).collect(), &DOCS, 0)];
    let one = GroupShape { scheme: Scheme::Ulysses, ulysses: 1, ring: 1, variant: RingVariant::Zigzag };
    for (i, r) in (size..gpus).enumerate() {
        groups.push(group(cm, one, vec![r], &[256], DOCS.len() as u32 + i as u32));
    }
    let docs: Vec<Doc> = groups.iter().flat_map(|g| g.docs.iter().copied()).collect();
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        strategy: "test".into(),
        trace: "test".into(),
        model: cm.model.clone(),
        cluster: cm.cluster.clone(),
        train: cm.train.clone(),
        memory_limit_bytes: 0.0,
        batches: vec![BatchPlan {
            index: 0,
            docs,
            microbatches: vec![MicroBatch { groups, predicted_time_s: 0.0 }],
            predicted_step_s: 0.0,
            predicted_peak_memory_bytes: 0.0,
            grad_sync_exposed_s: 0.0,
            source: String::new(),
        }],
    }
}

/// Every shape the planner and the baselines may give a group on this cluster.
fn shapes(cm: &CostModel) -> Vec<GroupShape> {
    let gpn = cm.cluster.gpus_per_node;
    let mut out: Vec<GroupShape> = Vec::new();
    for s in group_shapes(cm, &all_sizes(gpn, cm.cluster.nodes)) {
        for o in scheme_options(s.ulysses, s.ring, gpn) {
            if !out.contains(&o) {
                out.push(o);
            }
        }
    }
    // Static Ulysses may span nodes (DeepSpeed-Ulysses over 16 GPUs).
    let wide = GroupShape { scheme: Scheme::Ulysses, ulysses: 16, ring: 1, variant: RingVariant::Zigzag };
    if cm.model.heads % 16 == 0 && !out.contains(&wide) {
        out.push(wide);
    }
    out
}

fn cost_model(zero: u8, checkpointing: Checkpointing) -> CostModel {
    CostModel::new(model(), cluster(), TrainConfig { zero, checkpointing, ..TrainConfig::default() }).unwrap()
}

#[test]
fn the_schedule_of_every_shape_prices_to_the_cost_models_time() {
    let mut worst = (0.0f64, String::new());
    let mut failed = Vec::new();
    let mut cases = 0;
    for zero in [0, 1, 3] {
        for checkpointing in [Checkpointing::None, Checkpointing::Selective, Checkpointing::Full] {
            let cm = cost_model(zero, checkpointing);
            let list = shapes(&cm);
            assert!(list.iter().any(|s| s.scheme == Scheme::DoubleRing) && list.iter().any(|s| s.scheme == Scheme::Allgather));
            for shape in list {
                let plan = plan(&cm, shape);
                let mut s = Schedule::build(&plan, &plan.batches[0], Tiling::default()).unwrap();
                s.price(&CostModelPricer::new(&plan).unwrap());
                let (schedule_s, _) = s.group_time_s(0, 0).unwrap_or_else(|| panic!("{shape}: an op is unpriced or untagged"));
                let model_s = cm.group(&shape, &DOCS).time_s;
                let error = schedule_s / model_s - 1.0;
                let case = format!("{shape} zero {zero} {}: schedule {schedule_s:.6} s, cost model {model_s:.6} s", checkpointing.name());
                println!("{case} ({:+.3}%)", 100.0 * error);
                if error.abs() >= 0.01 {
                    failed.push(case.clone());
                }
                if error.abs() > worst.0.abs() {
                    worst = (error, case);
                }
                cases += 1;
            }
        }
    }
    println!("{cases} cases; worst {:+.3}%: {}", 100.0 * worst.0, worst.1);
    assert!(failed.is_empty(), "{} of {cases} cases differ by 1% or more:\n{}", failed.len(), failed.join("\n"));
}

/// The ops carry what the cost model priced: every GEMM and memory-bound kernel of the workload
/// once per rank, ZeRO's collectives over every GPU, and a recomputation block exactly when the
/// policy recomputes.
#[test]
fn the_schedule_runs_the_workloads_zero_traffic_and_recomputation() {
    let shape = GroupShape { scheme: Scheme::Usp, ulysses: 4, ring: 4, variant: RingVariant::Zigzag };
    for zero in [0, 1, 3] {
        for checkpointing in [Checkpointing::None, Checkpointing::Selective, Checkpointing::Full] {
            let cm = cost_model(zero, checkpointing);
            let plan = plan(&cm, shape);
            let s = Schedule::build(&plan, &plan.batches[0], Tiling::default()).unwrap();
            let rank = &s.ranks[5];
            let phases: Vec<Phase> = rank.blocks.iter().map(|b| b.phase).collect();
            let recompute = checkpointing != Checkpointing::None;
            let mut want = vec![Phase::LayerForward, Phase::Head];
            if recompute {
                want.push(Phase::LayerRecompute);
            }
            want.extend([Phase::LayerBackward, Phase::GradSync]);
            assert_eq!(phases, want, "zero {zero} {}", checkpointing.name());
            let dp: Vec<(&Phase, &OpKind)> =
                rank.blocks.iter().flat_map(|b| b.ops.iter().map(move |o| (&b.phase, &o.kind))).filter(|(_, k)| matches!(k, OpKind::DataParallel { .. })).collect();
            for (_, k) in &dp {
                let OpKind::DataParallel { peers, .. } = k else { unreachable!() };
                assert_eq!(peers.len(), 16);
            }
            let in_layers = dp.iter().filter(|(p, _)| **p != Phase::GradSync).count();
            // ZeRO 3: a gather in the forward, one before the backward (the recomputation's, under
            // full checkpointing), a reduce-scatter in the backward. ZeRO 0 and 1: none per layer.
            let per_layer = if zero == 3 { 3 } else { 0 };
            assert_eq!(in_layers, per_layer, "zero {zero} {}", checkpointing.name());
            let sync = dp.iter().filter(|(p, _)| **p == Phase::GradSync).count();
            assert_eq!(sync, [1, 2, 1, 0][zero as usize], "zero {zero}");
            // Every GEMM of the workload, with its shape.
            let work = cm.workload(&shape, &[DOCS.to_vec()], hsap::cost::Scope::Step);
            let gemms_model: usize = work
                .steps
                .iter()
                .map(|st| st.repeat as usize * st.compute.kernels_of(1).iter().filter(|k| matches!(k, hsap::workload::Kernel::Gemm { .. })).count())
                .sum();
            let gemms_schedule: usize = rank
                .blocks
                .iter()
                .map(|b| b.repeat as usize * b.ops.iter().filter(|o| matches!(o.work, Some(Work::Kernel(hsap::workload::Kernel::Gemm { .. })))).count())
                .sum();
            assert_eq!(gemms_schedule, gemms_model, "zero {zero} {}", checkpointing.name());
        }
    }
}

/// What the executor cannot run is refused, not replaced.
#[test]
fn tensor_parallel_plans_are_refused() {
    let cm = CostModel::new(model(), cluster(), TrainConfig { tp: 2, ..TrainConfig::default() }).unwrap();
    let shape = GroupShape { scheme: Scheme::Ulysses, ulysses: 2, ring: 1, variant: RingVariant::Zigzag };
    let plan = plan(&cm, shape);
    let e = Schedule::build(&plan, &plan.batches[0], Tiling::default()).unwrap_err().to_string();
    assert!(e.contains("tensor parallelism"), "{e}");
}
