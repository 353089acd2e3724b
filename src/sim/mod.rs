//! The step simulator: replays a plan's batch as events, with the groups of a micro-batch running
//! at once and sharing the network.
//!
//! Each group runs its cost-model [`Program`] stage by stage. A transfer has a latency, an
//! intra-node part and a network part; the network part is a set of flows on the NICs of every
//! node the group spans, and flows of all groups on one node share its NICs by max-min fairness
//! (water-filling, each flow capped by what one GPU can drive). NVSwitch is non-blocking, so
//! intra-node parts do not contend. With no two groups on the network at once, the simulated
//! time equals the cost model's to rounding; where they share NICs it exceeds it by the modelled
//! slowdown. docs/simulator.md states the model.

mod fluid;
pub mod timeline;

use crate::cluster::Collective;
use crate::cost::{CostModel, Program};
use crate::plan::BatchPlan;
use serde::Serialize;

pub use fluid::{simulate_microbatch, simulate_microbatch_with_sync, GroupRun, MicroBatchRun};
pub use timeline::Timeline;

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Record spans for a Perfetto timeline.
    pub timeline: bool,
}

/// What the simulator reports for one batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSim {
    pub batch: usize,
    pub step_s: f64,
    /// The cost model's step time for the same plan (groups priced in isolation).
    pub isolated_step_s: f64,
    pub microbatches: Vec<MicroBatchSim>,
    pub grad_sync_s: f64,
    pub grad_sync_exposed_s: f64,
    pub optimizer_s: f64,
    /// Compute time per GPU (global rank order), and the rest of the step.
    pub gpu_busy_s: Vec<f64>,
    pub gpu_idle_s: Vec<f64>,
    /// Per collective: time a GPU spends waiting on it, averaged over all GPUs.
    pub exposed_comm_s: Vec<(Collective, f64)>,
    /// All compute spread perfectly over all GPUs with no communication: the floor under the model.
    pub ideal_step_s: f64,
    pub ratio_to_ideal: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MicroBatchSim {
    pub time_s: f64,
    pub isolated_time_s: f64,
    /// Index of the group that finished last.
    pub straggler: usize,
    pub group_times_s: Vec<f64>,
}

/// Simulates one batch of a plan.
pub fn simulate_batch(cm: &CostModel, batch: &BatchPlan, options: &SimOptions) -> (BatchSim, Option<Timeline>) {
    let gpus = cm.cluster.gpus();
    let mut timeline = options.timeline.then(|| Timeline::new(&cm.cluster));
    let mut clock = 0.0;
    let mut busy = vec![0.0; gpus as usize];
    let mut exposed: Vec<(Collective, f64)> = Vec::new();
    let mut microbatches = Vec::new();
    let mut compute_gpu_s = 0.0;
    let (overlapped_sync, after_sync) = cm.sync_transfers(gpus);
    let (mut sync_isolated, mut sync_end) = (None, clock);
    for (k, mb) in batch.microbatches.iter().enumerate() {
        let programs: Vec<(Program, Vec<u32>)> = mb
            .groups
            .iter()
            .map(|g| (cm.program(&g.shape(), &g.doc_lengths()), g.ranks.clone()))
            .collect();
        let isolated = programs.iter().map(|(p, _)| p.time_s()).fold(0.0, f64::max);
        let last = k + 1 == batch.microbatches.len();
        if last {
            let refs: Vec<&Program> = programs.iter().map(|(p, _)| p).collect();
            sync_isolated = Some(cm.grad_sync_after(gpus, &refs));
        }
        let run = match overlapped_sync.filter(|_| last && cm.grad_sync_overlaps()) {
            Some(sync) => simulate_microbatch_with_sync(cm, &programs, clock, sync, timeline.as_mut()),
            None => simulate_microbatch(cm, &programs, clock, timeline.as_mut()),
        };
        for (g, (_, ranks)) in run.groups.iter().zip(&programs) {
            for &r in ranks {
                if let Some(b) = busy.get_mut(r as usize) {
                    *b += g.compute_s;
                }
            }
            compute_gpu_s += ranks.len() as f64 * g.compute_s;
            for &(c, t) in &g.exposed_s {
                add(&mut exposed, c, t * ranks.len() as f64 / f64::from(gpus));
            }
        }
        if let Some((start, end)) = run.background {
            if let Some(t) = timeline.as_mut() {
                t.collective_all(gpus, "gradient sync", clock + start, end - start);
            }
            sync_end = clock + end;
        }
        microbatches.push(MicroBatchSim {
            time_s: run.time_s(),
            isolated_time_s: isolated,
            straggler: run.straggler(),
            group_times_s: run.groups.iter().map(|g| g.time_s).collect(),
        });
        clock += run.time_s();
    }
    let time = |t: Option<crate::cost::Transfer>| t.map_or(0.0, |t| cm.step_transfer_s(&t));
    // The overlappable part ran beside the last micro-batch (what is left of it is exposed), or,
    // without overlap, alone after it; the rest (ZeRO 1/2 weight all-gathers) runs after it.
    // The weights' all-gather is exposed unless the stack runs it during the next forward.
    let overlapped_exposed_s = if cm.grad_sync_overlaps() {
        (sync_end - clock).max(0.0)
    } else {
        time(overlapped_sync)
    };
    let after_total_s = time(after_sync);
    let after_s = if cm.param_gather_overlaps() { 0.0 } else { after_total_s };
    let grad_sync_s = time(overlapped_sync) + after_total_s;
    let grad_sync_exposed_s = overlapped_exposed_s + after_s;
    if let Some(t) = timeline.as_mut() {
        let start = if cm.grad_sync_overlaps() { clock + overlapped_exposed_s } else { clock };
        if !cm.grad_sync_overlaps() && overlapped_exposed_s > 0.0 {
            t.collective_all(gpus, "gradient sync", clock, overlapped_exposed_s);
        }
        if after_s > 0.0 {
            t.collective_all(gpus, "weight all-gather", start.max(clock + overlapped_exposed_s), after_s);
        }
    }
    let optimizer_s = cm.optimizer_s(gpus);
    let sync_isolated_exposed = sync_isolated.map_or(grad_sync_exposed_s + optimizer_s, |s| s.exposed_s);
    if let Some(t) = timeline.as_mut() {
        t.compute_all(gpus, "optimizer step", clock + grad_sync_exposed_s, optimizer_s);
    }
    let step_s = clock + grad_sync_exposed_s + optimizer_s;
    let isolated_step_s = microbatches.iter().map(|m| m.isolated_time_s).sum::<f64>() + sync_isolated_exposed;
    for b in &mut busy {
        *b += optimizer_s;
    }
    let ideal_step_s = compute_gpu_s / f64::from(gpus) + optimizer_s;
    let sim = BatchSim {
        batch: batch.index,
        step_s,
        isolated_step_s,
        microbatches,
        grad_sync_s,
        grad_sync_exposed_s,
        optimizer_s,
        gpu_idle_s: busy.iter().map(|b| (step_s - b).max(0.0)).collect(),
        gpu_busy_s: busy,
        exposed_comm_s: exposed,
        ideal_step_s,
        ratio_to_ideal: step_s / ideal_step_s,
    };
    (sim, timeline)
}

fn add(list: &mut Vec<(Collective, f64)>, c: Collective, v: f64) {
    match list.iter_mut().find(|(k, _)| *k == c) {
        Some((_, x)) => *x += v,
        None => list.push((c, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, LinkLevel};
    use crate::cost::{Part, TrainConfig, Transfer};
    use crate::model::ModelShape;
    use crate::plan::{GroupPlan, MicroBatch, RankLayout};
    use crate::scheme::{layout, GroupShape, RingVariant, Scheme};
    use crate::trace::Doc;

    fn model(nodes: u32, overlap_grad_sync: bool) -> CostModel {
        model_with(nodes, TrainConfig { overlap_grad_sync, ..TrainConfig::default() })
    }

    fn model_with(nodes: u32, train: TrainConfig) -> CostModel {
        let cluster = Cluster::resolve("a100-40g-ib400").unwrap().with_nodes(nodes).unwrap();
        CostModel::new(ModelShape::resolve("gpt-7b").unwrap(), cluster, train).unwrap()
    }

    fn group(cm: &CostModel, scheme: Scheme, u: u32, r: u32, first_rank: u32, docs: &[u32]) -> GroupPlan {
        let shape = GroupShape { scheme, ulysses: u, ring: r, variant: RingVariant::Zigzag };
        let ranks: Vec<u32> = (first_rank..first_rank + u * r).collect();
        let l = layout(&shape, docs, &cm.hsap_params());
        let cost = cm.group(&shape, docs);
        GroupPlan {
            rank_layouts: RankLayout::from_layout(&l, &ranks),
            ranks,
            ulysses: u,
            ring: r,
            scheme,
            ring_variant: RingVariant::Zigzag,
            sequences: (0..docs.len() as u32).collect(),
            docs: docs.iter().enumerate().map(|(i, &len)| Doc { index: i as u32, offset: 0, len }).collect(),
            predicted_time_s: cost.time_s,
            predicted_memory_bytes: cost.memory_bytes,
        }
    }

    fn batch(groups: Vec<Vec<GroupPlan>>) -> BatchPlan {
        BatchPlan {
            index: 0,
            docs: groups.iter().flatten().flat_map(|g| g.docs.iter().copied()).collect(),
            microbatches: groups
                .into_iter()
                .map(|groups| MicroBatch {
                    predicted_time_s: groups.iter().map(|g| g.predicted_time_s).fold(0.0, f64::max),
                    groups,
                })
                .collect(),
            predicted_step_s: 0.0,
            predicted_peak_memory_bytes: 0.0,
            grad_sync_exposed_s: 0.0,
            source: String::new(),
        }
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b
    }

    #[test]
    fn without_shared_links_the_simulator_is_the_cost_model() {
        // Three node-local groups and the gradient sync: the sync has the network to itself.
        let cm = model(2, true);
        let b = batch(vec![
            vec![
                group(&cm, Scheme::Ulysses, 8, 1, 0, &[4000, 900, 12000]),
                group(&cm, Scheme::Usp, 2, 2, 8, &[3000, 3000]),
                group(&cm, Scheme::Ring, 1, 4, 12, &[7000, 20]),
            ],
            vec![group(&cm, Scheme::Hsap, 8, 2, 0, &[30000, 700, 5])],
        ]);
        let (sim, _) = simulate_batch(&cm, &b, &SimOptions::default());
        assert!(rel(sim.step_s, sim.isolated_step_s) < 1e-9, "{} vs {}", sim.step_s, sim.isolated_step_s);
        for m in &sim.microbatches {
            assert!(rel(m.time_s, m.isolated_time_s) < 1e-9);
        }
        assert!(sim.ratio_to_ideal >= 1.0);
    }

    #[test]
    fn a_cross_node_group_alone_on_the_network_matches_the_cost_model() {
        let cm = model(2, false);
        let b = batch(vec![vec![group(&cm, Scheme::Usp, 8, 2, 0, &[60000, 3000])]]);
        let (sim, _) = simulate_batch(&cm, &b, &SimOptions::default());
        assert!(rel(sim.step_s, sim.isolated_step_s) < 1e-9, "{} vs {}", sim.step_s, sim.isolated_step_s);
    }

    #[test]
    fn overlapped_gradient_sync_slows_cross_node_all_to_alls() {
        // ZeRO 0: the gradient all-reduce and the backward all-to-alls of a 16-GPU Ulysses group
        // share the NICs; the isolated model lets them overlap for free.
        let cm = model_with(2, TrainConfig { zero: 0, ..TrainConfig::default() });
        let b = batch(vec![vec![group(&cm, Scheme::Ulysses, 16, 1, 0, &[60000, 3000])]]);
        let (sim, _) = simulate_batch(&cm, &b, &SimOptions::default());
        assert!(sim.step_s > sim.isolated_step_s * 1.001, "{} vs {}", sim.step_s, sim.isolated_step_s);
    }

    #[test]
    fn zero3_traffic_of_one_group_slows_another_groups_all_to_alls() {
        // ZeRO-3's per-layer weight gathers cross every node; a 16-GPU Ulysses group on nodes 0-1
        // shares its NICs with the gathers that the group on nodes 2-3 drives.
        let cm = model(4, true);
        let alone = batch(vec![vec![group(&cm, Scheme::Ulysses, 16, 1, 0, &[60000, 3000])]]);
        let (sim_alone, _) = simulate_batch(&cm, &alone, &SimOptions::default());
        assert!(rel(sim_alone.step_s, sim_alone.isolated_step_s) < 1e-9);
        let both = batch(vec![vec![
            group(&cm, Scheme::Ulysses, 16, 1, 0, &[60000, 3000]),
            group(&cm, Scheme::Ulysses, 16, 1, 16, &[20000, 20000, 3000]),
        ]]);
        let (sim, _) = simulate_batch(&cm, &both, &SimOptions::default());
        assert!(sim.step_s > sim.isolated_step_s * 1.001, "{} vs {}", sim.step_s, sim.isolated_step_s);
    }

    /// One exposed cross-node send/recv of `bytes` between ranks `i` and `8 + i`.
    fn p2p_program(bytes: f64) -> Program {
        let t = Transfer::new(Collective::SendRecv, 2, 2, bytes).with_network_senders(1);
        assert_eq!(t.level, LinkLevel::Inter);
        let cluster = Cluster::resolve("a100-40g-ib400").unwrap();
        let shape = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 2, variant: RingVariant::Basic };
        crate::cost::one_transfer(shape, Part::Attention, t, crate::cost::comm::time_s(&cluster, &t))
    }

    #[test]
    fn four_flows_on_two_nics_take_twice_the_network_time() {
        // a100-40g-ib400: 2 NICs x 24 GB/s per node, one NIC per flow at most. Alone, a 1 GB hop
        // runs at 24 GB/s; four hops from one node share 48 GB/s: 12 GB/s each. Latency is
        // 8.4 us + 14 us (one network step).
        let cm = model(2, false);
        let latency = 22.4e-6;
        let alone = simulate_microbatch(&cm, &[(p2p_program(1e9), vec![0, 8])], 0.0, None);
        assert!(rel(alone.time_s(), latency + 1e9 / 24e9) < 1e-9, "{}", alone.time_s());
        let programs: Vec<(Program, Vec<u32>)> = (0..4).map(|i| (p2p_program(1e9), vec![i, 8 + i])).collect();
        let shared = simulate_microbatch(&cm, &programs, 0.0, None);
        for g in &shared.groups {
            assert!(rel(g.time_s, latency + 1e9 / 12e9) < 1e-9, "{}", g.time_s);
        }
    }
}
