//! The per-batch planner (`hsap`) and the baselines it is compared with, all priced by the same
//! cost model on the same batches. docs/planner.md describes the method.
//!
//! Every strategy produces, per global batch, a [`Solution`]: micro-batches, each a partition of
//! all GPUs into SP groups with the documents each group runs. [`Ctx::finish`] prices a solution
//! exactly with the cost model; [`Ctx::to_batch_plan`] turns it into the plan.json form.

mod assign;
pub mod exact;
mod baselines;
mod flexsp;
mod hsap;
mod local;
mod milp;
mod run;
mod surrogate;

pub use assign::split_microbatches;
pub use baselines::{static_family, static_plan, DcpChoice, Family, MegatronDcp, StaticChoice};
pub use flexsp::{Flexsp, FlexspOptions};
pub use hsap::{hsap, HsapOptions};
pub use milp::{MilpStatus, Solve};
pub use run::{run_all, run_all_with, RunOptions, RunResult, StrategyResult, Strategy};
pub use surrogate::{Candidate, DocCost};


use crate::cost::{CostModel, GroupCost, Program};
use crate::model::ModelShape;
use crate::error::{Error, Result};
use crate::plan::{BatchPlan, GroupPlan, MicroBatch, RankLayout};
use crate::scheme::{layout, GroupShape, RingVariant, Scheme};
use crate::progress::{Mode, Progress};
use crate::trace::Batch;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One SP group of a micro-batch: its shape and the documents it runs (indices into the batch's
/// `docs`, in packing order).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub shape: GroupShape,
    pub docs: Vec<usize>,
}

/// A micro-batch: groups covering every GPU once (groups may have no documents).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Micro {
    pub groups: Vec<Group>,
}

/// A strategy's answer for one batch, before pricing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Solution {
    pub micro: Vec<Micro>,
    /// Where the answer came from (e.g. `milp`, `greedy`, `incumbent:static-usp`), for the record.
    pub source: String,
    /// What the LP/MILP stage found, when one ran.
    pub milp: Option<Solve>,
}

/// A group priced exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PricedGroup {
    pub shape: GroupShape,
    pub docs: Vec<usize>,
    /// Global ranks, local-rank order.
    pub ranks: Vec<u32>,
    /// Priced alone (`CostModel::group`).
    pub cost: GroupCost,
    /// Its time in the micro-batch, the NICs shared with the other groups
    /// (`CostModel::shared_times_s`): at least `cost.time_s`.
    pub shared_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PricedMicro {
    pub groups: Vec<PricedGroup>,
    pub time_s: f64,
}

/// A solution priced exactly by the cost model: the numbers every comparison uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Priced {
    pub micro: Vec<PricedMicro>,
    /// Sum over micro-batches of the slowest group, plus the exposed gradient synchronisation.
    pub step_s: f64,
    pub grad_sync_exposed_s: f64,
    /// GPU-averaged split of the step: busy compute, exposed communication, idle (waiting on the
    /// group's own slower ranks or on slower groups). They add up to `step_s - grad_sync_exposed_s`.
    pub compute_s: f64,
    pub exposed_comm_s: f64,
    pub idle_s: f64,
    pub peak_memory_bytes: f64,
    pub source: String,
    pub milp: Option<Solve>,
}

/// Which group sizes the planner considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupSizes {
    /// 1, 2, 4, ... GPUs inside a node, then powers of two of nodes while a doubling still runs
    /// the longest document faster, 3, 6, 12, ... nodes between them, and the nodes the longest
    /// document needs: logarithmic in the cluster ([`size_ladder`]).
    #[default]
    Ladder,
    /// Every size: 1, 2, 4, ... GPUs inside a node and every whole number of nodes (the search
    /// before the ladder, kept to compare with).
    All,
}

/// How the planner's context is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct CtxOptions {
    pub sizes: GroupSizes,
    /// Progress of the surrogate tables' setup on stderr.
    pub progress: Mode,
}

/// Largest pod the planner plans as one: clusters of more nodes are planned as identical pods
/// of at most this many nodes ([`pod_nodes`]).
pub const MAX_POD_NODES: u32 = 128;

/// A longer group is worth considering only while a doubling of its size runs the longest
/// document at least this much faster alone (relative).
const LADDER_MIN_GAIN: f64 = 0.05;

/// What the planner and the baselines share for one run: the cost model and the candidate group
/// shapes with their tabulated costs.
pub struct Ctx {
    pub cm: CostModel,
    /// GPUs of the unit the planner partitions into groups: the cluster, or one pod of it.
    pub gpus: u32,
    /// Identical pods the cluster is planned as (1: the cluster is planned whole). Each
    /// micro-batch's documents are dealt to the pods by work and each pod is planned with the
    /// same candidate shapes; groups never span pods.
    pub pods: u32,
    /// GPUs of one NVLink domain (`Cluster::gpus_per_domain`: a node, or a rack on NVL72): the
    /// unit groups are sized and placed by.
    pub gpus_per_domain: u32,
    pub limit_bytes: f64,
    /// The longest document the run plans for.
    pub max_len: u32,
    /// Candidate shapes of the hierarchical planner (one per size, u, r; scheme chosen per group).
    pub candidates: Vec<Candidate>,
    /// The group sizes the candidates have, ascending.
    pub sizes: Vec<u32>,
    /// Exact prices already computed ([`Ctx::group_cost`]), shared with [`Ctx::restricted`]'s
    /// contexts, which price with the same cost model.
    prices: Arc<PriceMemo>,
    /// The baselines' surrogate tables by shape ([`Ctx::fixed_tables`]).
    fixed: Arc<Mutex<HashMap<GroupShape, Candidate>>>,
    /// Micro-batches already priced with shared links ([`Ctx::shared_s`]).
    shared: Arc<Mutex<HashMap<SharedKey, Vec<f64>>>>,
}

/// A micro-batch as the shared-link pricing sees it: each group's shape, document lengths and
/// ranks.
type SharedKey = Vec<(GroupShape, Box<[u32]>, Box<[u32]>)>;

/// Micro-batches the shared-link memo holds before it is emptied: the memo only has to carry a
/// plan from the rebalancing's last pricing to the final one.
const SHARED_MEMO_ENTRIES: usize = 256;

/// Exact group programs and prices by shape and document lengths. A batch's searches price the
/// same group several times (its scheme's choice, the local search's start, the repair's check,
/// the shared-link pricing, the final pricing), and `CostModel::program` is a pure function of
/// them. Bounded: emptied when full, which only costs the repeats.
#[derive(Default)]
struct PriceMemo(Mutex<HashMap<(GroupShape, Box<[u32]>), Priced1>>);

/// A memoised group: its program (the shared-link pricing reads it) and its cost.
type Priced1 = (Arc<Program>, GroupCost);

/// Entries the memo holds before it is emptied: a few batches' worth on 64 GPUs (a program is a
/// few kilobytes).
const PRICE_MEMO_ENTRIES: usize = 1 << 13;

impl PriceMemo {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(GroupShape, Box<[u32]>), Priced1>> {
        // A panic elsewhere while the lock was held leaves whole entries: the map is still valid.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Ctx {
    /// Builds the context for documents up to `max_len` tokens, with the default options: the
    /// size ladder, no progress.
    pub fn new(cm: CostModel, max_len: u32) -> Result<Ctx> {
        Ctx::with(cm, max_len, &CtxOptions::default())
    }

    /// Builds the context for documents up to `max_len` tokens. Clusters of more than
    /// [`MAX_POD_NODES`] nodes are planned as identical pods ([`pod_nodes`]).
    pub fn with(cm: CostModel, max_len: u32, opts: &CtxOptions) -> Result<Ctx> {
        let gpus_per_domain = cm.cluster.gpus_per_domain();
        let limit_bytes = cm.memory_limit_bytes();
        let states = cm.static_memory_bytes(cm.data_parallel_gpus());
        if states >= limit_bytes {
            let gib = crate::units::GIB;
            return Err(Error::invalid(
                format!(
                    "{}'s model states alone need {:.1} GiB per GPU (weights, gradients and Adam states of {:.2}B parameters, ZeRO-{} over {}), more than the {:.1} GiB usable on a {}: no tokens fit",
                    cm.model.name,
                    states / gib,
                    cm.model.params() as f64 / 1e9,
                    cm.train.zero,
                    match cm.data_parallel_gpus() {
                        1 => "1 GPU".to_string(),
                        n => format!("{n} GPUs"),
                    },
                    limit_bytes / gib,
                    cm.cluster.gpu.name
                ),
                "raise --nodes so that ZeRO shards the states over more GPUs, or use GPUs with more memory",
            ));
        }
        let max_len = max_len.max(1);
        let pod = pod_nodes(cm.cluster.domains());
        let pods = cm.cluster.domains() / pod;
        let sizes = match opts.sizes {
            GroupSizes::All => all_sizes(gpus_per_domain, pod),
            GroupSizes::Ladder => size_ladder(&cm, pod, max_len, limit_bytes),
        };
        let shapes = group_shapes(&cm, &sizes);
        let progress = Progress::stderr(opts.progress, "setup: surrogate tables", shapes.len() as u64, "group shapes");
        let candidates = surrogate::tabulate(&cm, &shapes, max_len, limit_bytes, &progress);
        progress.finish();
        Ok(Ctx {
            cm,
            gpus: pod * gpus_per_domain,
            pods,
            gpus_per_domain,
            limit_bytes,
            max_len,
            candidates,
            sizes,
            prices: Arc::default(),
            fixed: Arc::default(),
            shared: Arc::default(),
        })
    }

    /// Whether groups of `size` GPUs always pack into the domains: a size of [`domain_sizes`] or
    /// whole domains.
    pub fn packs(&self, size: u32) -> bool {
        size % self.gpus_per_domain == 0 || domain_sizes(self.gpus_per_domain).contains(&size)
    }

    /// Every GPU of the cluster (all pods).
    pub fn cluster_gpus(&self) -> u32 {
        self.gpus * self.pods
    }

    pub fn candidate(&self, shape: &GroupShape) -> Option<&Candidate> {
        self.candidates
            .iter()
            .find(|c| c.shape.ulysses == shape.ulysses && c.shape.ring == shape.ring)
    }

    /// Exact cost of a group running `lens` (`CostModel::group`, memoised).
    pub fn group_cost(&self, shape: &GroupShape, lens: &[u32]) -> GroupCost {
        self.priced(shape, lens).1
    }

    /// The program of a group running `lens` (`CostModel::program`, memoised).
    pub fn program(&self, shape: &GroupShape, lens: &[u32]) -> Arc<Program> {
        self.priced(shape, lens).0
    }

    fn priced(&self, shape: &GroupShape, lens: &[u32]) -> Priced1 {
        let key = (*shape, Box::<[u32]>::from(lens));
        if let Some(p) = self.prices.map().get(&key) {
            return p.clone();
        }
        let program = self.cm.program(shape, lens);
        let cost = program.cost(&self.cm.cluster);
        let priced = (Arc::new(program), cost);
        let mut map = self.prices.map();
        if map.len() >= PRICE_MEMO_ENTRIES {
            map.clear();
        }
        map.insert(key, priced.clone());
        priced
    }

    /// The surrogate tables of shapes that run exactly their own scheme (the baselines'), each
    /// shape tabulated once per run: static-ring and megatron-dcp share their ring shapes,
    /// static-ulysses and flexsp their Ulysses ones, and a ring of 1,024 GPUs takes tens of
    /// seconds to tabulate.
    pub fn fixed_tables(&self, shapes: &[GroupShape]) -> Vec<Candidate> {
        let lock = || self.fixed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut missing: Vec<GroupShape> = {
            let known = lock();
            shapes.iter().filter(|s| !known.contains_key(s)).copied().collect()
        };
        missing.sort_unstable();
        missing.dedup();
        let made = surrogate::tabulate_fixed(&self.cm, &missing, self.max_len, self.limit_bytes);
        let mut known = lock();
        for c in made {
            known.insert(c.shape, c);
        }
        shapes.iter().filter_map(|s| known.get(s).cloned()).collect()
    }

    /// The best scheme for a (u, r) group running `lens`: the fastest that fits in memory (the
    /// least memory when none fits). Ulysses when r = 1; otherwise the sequence-aware scheme,
    /// USP, and for u = 1 ring and all-gather, and double ring across nodes.
    pub fn best_scheme(&self, ulysses: u32, ring: u32, lens: &[u32]) -> (GroupShape, GroupCost) {
        let mut best: Option<(GroupShape, GroupCost)> = None;
        for shape in model_scheme_options(&self.cm.model, ulysses, ring, self.gpus_per_domain) {
            let cost = self.group_cost(&shape, lens);
            let better = match &best {
                None => true,
                Some((_, b)) => {
                    let (fits, b_fits) = (cost.memory_bytes <= self.limit_bytes, b.memory_bytes <= self.limit_bytes);
                    match (fits, b_fits) {
                        (true, false) => true,
                        (false, true) => false,
                        (true, true) => cost.time_s < b.time_s,
                        (false, false) => cost.memory_bytes < b.memory_bytes,
                    }
                }
            };
            if better {
                best = Some((shape, cost));
            }
        }
        best.unwrap_or_else(|| {
            let shape = GroupShape { scheme: Scheme::Ulysses, ulysses, ring, variant: RingVariant::Zigzag };
            (shape, self.group_cost(&shape, lens))
        })
    }

    /// Prices a solution exactly: every group's cost, each micro-batch's slowest group, the
    /// gradient synchronisation after the last micro-batch (the one with the longest backward
    /// pass goes last, so that it hides the most), placement of groups on ranks.
    pub fn finish(&self, batch: &Batch, sol: &Solution) -> Result<Priced> {
        let lens = |docs: &[usize]| docs.iter().map(|&d| batch.docs[d].len).collect::<Vec<u32>>();
        let mut micro: Vec<PricedMicro> = Vec::with_capacity(sol.micro.len());
        let mut syncs = Vec::with_capacity(sol.micro.len());
        for m in &sol.micro {
            let ranks = place_pods(&m.groups, self.pods, self.gpus, self.gpus_per_domain)?;
            let programs: Vec<Arc<Program>> = m.groups.iter().map(|g| self.program(&g.shape, &lens(&g.docs))).collect();
            // The groups run at once: each one's time with the NICs shared (`cost::links`).
            let shared = self.shared_s(&m.groups, &lens, &programs, &ranks);
            // The micro-batch that hides the most of the gradient synchronisation goes last.
            let busy: Vec<&Program> = programs.iter().zip(&m.groups).filter(|(_, g)| !g.docs.is_empty()).map(|(p, _)| p.as_ref()).collect();
            syncs.push(self.cm.grad_sync_after(self.cluster_gpus(), &busy));
            let mut groups: Vec<PricedGroup> = m
                .groups
                .iter()
                .zip(ranks)
                .zip(programs.iter().zip(shared))
                .map(|((g, ranks), (program, shared_s))| PricedGroup {
                    shape: g.shape,
                    docs: g.docs.clone(),
                    ranks,
                    cost: program.cost(&self.cm.cluster),
                    shared_s,
                })
                .collect();
            // Listed in rank order, as a reader of the plan expects.
            groups.sort_by_key(|g| g.ranks.first().copied());
            let time_s = groups.iter().map(|g| g.shared_s).fold(0.0, f64::max);
            micro.push(PricedMicro { groups, time_s });
        }
        let last = (0..micro.len()).min_by(|&a, &b| syncs[a].exposed_s.total_cmp(&syncs[b].exposed_s).then(a.cmp(&b)));
        if let Some(last) = last {
            let m = micro.remove(last);
            micro.push(m);
        }
        let sync = last.map_or_else(|| self.cm.grad_sync(self.cluster_gpus(), 0.0), |l| syncs[l]);
        let (mut compute_s, mut exposed_comm_s, mut idle_s, mut peak) = (0.0, 0.0, 0.0, 0.0f64);
        let g = f64::from(self.cluster_gpus());
        for m in &micro {
            for grp in &m.groups {
                let w = f64::from(grp.shape.size()) / g;
                compute_s += w * grp.cost.compute_s;
                // Waiting on links another group shares is communication, not idling.
                exposed_comm_s += w * (grp.cost.exposed_comm_s() + (grp.shared_s - grp.cost.time_s).max(0.0));
                idle_s += w * (grp.cost.idle_s + (m.time_s - grp.shared_s));
                peak = peak.max(grp.cost.memory_bytes);
            }
        }
        let busy: f64 = micro.iter().map(|m| m.time_s).sum();
        Ok(Priced {
            micro,
            step_s: busy + sync.exposed_s,
            grad_sync_exposed_s: sync.exposed_s,
            compute_s,
            exposed_comm_s,
            idle_s,
            peak_memory_bytes: peak,
            source: sol.source.clone(),
            milp: sol.milp.clone(),
        })
    }

    /// The same context with only the candidates `keep` accepts: what a search may choose from
    /// when a shape the surrogate priced far too low is set aside for one micro-batch.
    pub fn restricted(&self, keep: impl Fn(&Candidate) -> bool) -> Ctx {
        let candidates: Vec<Candidate> = self.candidates.iter().filter(|c| keep(c)).cloned().collect();
        let mut sizes: Vec<u32> = candidates.iter().map(|c| c.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        Ctx {
            cm: self.cm.clone(),
            gpus: self.gpus,
            pods: self.pods,
            gpus_per_domain: self.gpus_per_domain,
            limit_bytes: self.limit_bytes,
            max_len: self.max_len,
            candidates,
            sizes,
            prices: Arc::clone(&self.prices),
            fixed: Arc::clone(&self.fixed),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Each group's time in a micro-batch of `groups` (on this context's GPUs, the idle ones
    /// filled) running at once: (with the NICs shared, alone), both infinite past memory, 0 for a
    /// group without documents. `None` when the groups cannot be placed.
    pub fn shared_times(&self, batch: &Batch, groups: &[Group]) -> Option<Vec<(f64, f64)>> {
        let mut all = groups.to_vec();
        fill_idle(&mut all, self.gpus);
        let ranks = place(&all, self.gpus, self.gpus_per_domain).ok()?;
        let lens = |docs: &[usize]| docs.iter().map(|&d| batch.docs[d].len).collect::<Vec<u32>>();
        let programs: Vec<Arc<Program>> = all.iter().map(|g| self.program(&g.shape, &lens(&g.docs))).collect();
        let shared = self.shared_s(&all, &lens, &programs, &ranks);
        let times = groups.iter().zip(&programs).zip(shared).map(|((g, p), shared)| {
            if g.docs.is_empty() {
                (0.0, 0.0)
            } else if p.memory_bytes > self.limit_bytes {
                (f64::INFINITY, f64::INFINITY)
            } else {
                (shared, p.time_s())
            }
        });
        Some(times.collect())
    }

    /// `CostModel::shared_times_s` of `groups` (their `programs` on `ranks`), memoised: the
    /// rebalancing's last pricing of a plan is the final pricing's, and it is a pure function of
    /// the groups' shapes, document lengths and ranks.
    fn shared_s(&self, groups: &[Group], lens: &dyn Fn(&[usize]) -> Vec<u32>, programs: &[Arc<Program>], ranks: &[Vec<u32>]) -> Vec<f64> {
        let key: SharedKey = groups.iter().zip(ranks).map(|(g, r)| (g.shape, lens(&g.docs).into(), r.as_slice().into())).collect();
        let lock = || self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(times) = lock().get(&key) {
            return times.clone();
        }
        let placed: Vec<(&Program, &[u32])> = programs.iter().zip(ranks).map(|(p, r)| (p.as_ref(), r.as_slice())).collect();
        let times = self.cm.shared_times_s(&placed);
        let mut map = lock();
        if map.len() >= SHARED_MEMO_ENTRIES {
            map.clear();
        }
        map.insert(key, times.clone());
        times
    }

    /// Sum over micro-batches of the slowest group's exact time (no gradient synchronisation);
    /// infinite when a group exceeds memory.
    pub fn busy_s(&self, batch: &Batch, sol: &Solution) -> f64 {
        sol.micro.iter().map(|m| self.makespan(batch, &m.groups)).sum()
    }

    /// The slowest group's exact time; infinite when a group exceeds memory.
    pub fn makespan(&self, batch: &Batch, groups: &[Group]) -> f64 {
        groups
            .iter()
            .filter(|g| !g.docs.is_empty())
            .map(|g| {
                let lens: Vec<u32> = g.docs.iter().map(|&d| batch.docs[d].len).collect();
                self.time_within_memory(&self.group_cost(&g.shape, &lens))
            })
            .fold(0.0, f64::max)
    }

    /// A group's time, infinite when it exceeds the memory limit: what the searches compare.
    pub fn time_within_memory(&self, cost: &GroupCost) -> f64 {
        if cost.memory_bytes <= self.limit_bytes {
            cost.time_s
        } else {
            f64::INFINITY
        }
    }

    /// The plan.json form of a priced batch.
    pub fn to_batch_plan(&self, batch: &Batch, priced: &Priced) -> BatchPlan {
        let hsap = self.cm.hsap_params();
        let microbatches = priced
            .micro
            .iter()
            .map(|m| MicroBatch {
                groups: m
                    .groups
                    .iter()
                    .map(|g| {
                        let docs: Vec<_> = g.docs.iter().map(|&d| batch.docs[d]).collect();
                        let lens: Vec<u32> = docs.iter().map(|d| d.len).collect();
                        let l = layout(&g.shape, &lens, &hsap);
                        GroupPlan {
                            ranks: g.ranks.clone(),
                            ulysses: g.shape.ulysses,
                            ring: g.shape.ring,
                            scheme: g.shape.scheme,
                            ring_variant: g.shape.variant,
                            sequences: docs.iter().map(|d| d.index).collect(),
                            rank_layouts: RankLayout::from_layout(&l, &g.ranks),
                            docs,
                            predicted_time_s: g.cost.time_s,
                            predicted_memory_bytes: g.cost.memory_bytes,
                        }
                    })
                    .collect(),
                predicted_time_s: m.time_s,
            })
            .collect();
        BatchPlan {
            index: batch.index,
            docs: batch.docs.clone(),
            microbatches,
            predicted_step_s: priced.step_s,
            predicted_peak_memory_bytes: priced.peak_memory_bytes,
            grad_sync_exposed_s: priced.grad_sync_exposed_s,
            source: priced.source.clone(),
        }
    }
}

/// The (u, r) splits of the given group sizes: Ulysses degree a power of two that divides the
/// heads and stays inside an NVLink domain; ring over the rest. A model with linear-attention
/// layers is split over the ring only (the LASP schemes).
pub fn group_shapes(cm: &CostModel, sizes: &[u32]) -> Vec<GroupShape> {
    let gpn = cm.cluster.gpus_per_domain();
    let mut shapes = Vec::new();
    if cm.model.has_linear_layers() {
        for &g in sizes {
            shapes.extend(model_scheme_options(&cm.model, 1, g, gpn).into_iter().take(1));
        }
        return shapes;
    }
    for &g in sizes {
        let mut u = 1;
        while u <= g.min(gpn) {
            if g % u == 0 && cm.model.heads % u == 0 {
                let r = g / u;
                let scheme = if r == 1 { Scheme::Ulysses } else { Scheme::Hsap };
                shapes.push(GroupShape { scheme, ulysses: u, ring: r, variant: RingVariant::Zigzag });
            }
            u *= 2;
        }
    }
    shapes
}

/// The sizes inside a domain, then every whole number of domains up to `domains`.
pub fn all_sizes(gpus_per_domain: u32, domains: u32) -> Vec<u32> {
    let mut sizes = domain_sizes(gpus_per_domain);
    sizes.extend((1..=domains).map(|k| k * gpus_per_domain));
    sizes
}

/// Group sizes below a domain of `d` GPUs: 1, 2, 4, ... up to the largest power of two that
/// divides `d`, then that times the rest of `d`'s prime factors, smallest first (a 72-GPU NVL72
/// rack: 1, 2, 4, 8, 24; a node of 8: 1, 2, 4). Each size divides the next and `d`, so groups
/// placed largest first never straddle two domains and any sizes that add up to the GPUs fill
/// them exactly: the planner counts only GPUs, never placement.
pub fn domain_sizes(d: u32) -> Vec<u32> {
    let d = d.max(1);
    let twos = d.trailing_zeros();
    let mut sizes: Vec<u32> = (0..=twos).map(|k| 1u32 << k).filter(|&s| s < d).collect();
    let mut size = 1u32 << twos;
    let mut rest = d >> twos;
    let mut p = 3;
    while rest > 1 {
        while rest % p != 0 {
            p += 2;
        }
        rest /= p;
        size *= p;
        if size < d {
            sizes.push(size);
        }
    }
    sizes
}

/// The nodes of one pod: the cluster itself up to [`MAX_POD_NODES`] nodes, else the largest
/// divisor of the node count that is at most that (so that the pods are identical).
pub fn pod_nodes(nodes: u32) -> u32 {
    if nodes <= MAX_POD_NODES {
        return nodes.max(1);
    }
    (1..=MAX_POD_NODES).rev().find(|p| nodes % p == 0).unwrap_or(1)
}

/// The group sizes worth considering on `nodes` nodes for documents up to `max_len` tokens,
/// logarithmic in the cluster: 1, 2, 4, ... GPUs inside a node; 1, 2, 4, ... nodes while
/// doubling the group still runs the longest document at least [`LADDER_MIN_GAIN`] faster alone
/// (past that, a larger group only adds collectives; smaller groups in parallel use the GPUs
/// better), and always up to the smallest power of two of nodes that holds it; eight steps per
/// octave between them (3; 5, 6, 7; 9, 10, ..., 15; 18, 20, ..., 30; ... nodes) up to half again
/// the largest of those; and the smallest number of nodes that holds the longest document, when
/// that is not among them. Each test
/// prices one document alone, which costs little next to tabulating a shape.
pub fn size_ladder(cm: &CostModel, nodes: u32, max_len: u32, limit_bytes: f64) -> Vec<u32> {
    let gpn = cm.cluster.gpus_per_domain();
    let mut sizes = domain_sizes(gpn);
    let mut memo = std::collections::BTreeMap::new();
    let mut alone = |k: u32| *memo.entry(k).or_insert_with(|| longest_alone_s(cm, k * gpn, max_len, limit_bytes));
    let (mut k, mut prev) = (1, alone(1));
    sizes.push(gpn);
    while k * 2 <= nodes {
        let next = alone(k * 2);
        if prev.is_finite() && next >= prev * (1.0 - LADDER_MIN_GAIN) {
            break;
        }
        k *= 2;
        sizes.push(k * gpn);
        prev = next;
    }
    // The fewest nodes that hold the longest document (memory per GPU falls as nodes are added):
    // between the last power of two that does not and the first that does (or the cluster).
    let powers: Vec<u32> = std::iter::successors(Some(1u32), |p| Some(p * 2)).take_while(|&p| p <= k).collect();
    let first = match powers.into_iter().find(|&p| alone(p).is_finite()) {
        Some(p) => Some(p),
        None => (nodes > k && alone(nodes).is_finite()).then_some(nodes),
    };
    if let Some(first) = first {
        let (mut lo, mut hi) = (if first <= k { first / 2 } else { k }, first);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if alone(mid).is_finite() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        for extra in [hi, first] {
            if !sizes.contains(&(extra * gpn)) {
                sizes.push(extra * gpn);
            }
        }
    }
    // Eight steps per octave between the powers of two (3; 5, 6, 7; 9, 10, ..., 15; 18, 20,
    // ..., 30; ... nodes: each odd multiplier below 16 times the powers of two) up to 1.5 times
    // the top of the ladder. A long document is often best on a group whose size balances its
    // time against what the rest of the GPUs take for the others: with powers of two only, the
    // 1M-document trace on 8 nodes planned 1.8% slower than with every size; with 3, 6, 12, ...
    // added, ShareGPT (one 161,309-token document) on 8 nodes still planned 2-3% slower, its
    // best group for that batch being 5 nodes; with four steps per octave, the Wikipedia trace
    // on 16 nodes planned 1.35% slower (its 121,543-token document best on 11 nodes).
    let top = sizes.iter().copied().max().unwrap_or(gpn) / gpn;
    for odd in [3, 5, 7, 9, 11, 13, 15] {
        let mut k = odd;
        while k <= nodes && 2 * k <= 3 * top {
            if !sizes.contains(&(k * gpn)) {
                sizes.push(k * gpn);
            }
            k *= 2;
        }
    }
    sizes.sort_unstable();
    sizes
}

/// The time of one document of `len` tokens alone on the best split and scheme of `size` GPUs
/// that holds it in memory; infinite when none does.
fn longest_alone_s(cm: &CostModel, size: u32, len: u32, limit_bytes: f64) -> f64 {
    let gpn = cm.cluster.gpus_per_domain();
    group_shapes(cm, &[size])
        .iter()
        .flat_map(|s| model_scheme_options(&cm.model, s.ulysses, s.ring, gpn))
        .map(|s| cm.group(&s, &[len]))
        .filter(|c| c.memory_bytes <= limit_bytes)
        .map(|c| c.time_s)
        .fold(f64::INFINITY, f64::min)
}

/// The schemes a (u, r) group of `model` may run: [`scheme_options`] for softmax models; for a
/// model with linear-attention layers, with u = 1, LASP-2 and LASP-1 (LASP-2H when it also has
/// softmax layers), and one GPU alone.
pub fn model_scheme_options(model: &ModelShape, ulysses: u32, ring: u32, gpus_per_domain: u32) -> Vec<GroupShape> {
    if !model.has_linear_layers() {
        return scheme_options(ulysses, ring, gpus_per_domain);
    }
    let s = |scheme| GroupShape { scheme, ulysses, ring, variant: RingVariant::Basic };
    match (ulysses, ring) {
        (1, 1) => vec![s(Scheme::Ulysses)],
        (1, _) if model.layer_counts().0 > 0 => vec![s(Scheme::Lasp2h)],
        (1, _) => vec![s(Scheme::Lasp2), s(Scheme::Lasp1)],
        _ => Vec::new(),
    }
}

/// The schemes a (u, r) group of a softmax model may run.
pub fn scheme_options(ulysses: u32, ring: u32, gpus_per_domain: u32) -> Vec<GroupShape> {
    let s = |scheme| GroupShape { scheme, ulysses, ring, variant: RingVariant::Zigzag };
    if ring == 1 {
        return vec![s(Scheme::Ulysses)];
    }
    let mut v = vec![s(Scheme::Hsap), s(Scheme::Usp)];
    if ulysses == 1 {
        v.extend([s(Scheme::Ring), s(Scheme::Allgather)]);
    }
    if ulysses * ring > gpus_per_domain {
        v.push(s(Scheme::DoubleRing));
    }
    v
}

/// Places groups on global ranks, aligned to NVLink domains: groups of whole domains first, in
/// order, then smaller groups largest first into the remaining domains (their sizes,
/// [`domain_sizes`], keep every group inside one domain). Every GPU must be covered exactly once.
pub fn place(groups: &[Group], gpus: u32, gpus_per_domain: u32) -> Result<Vec<Vec<u32>>> {
    let total: u32 = groups.iter().map(|g| g.shape.size()).sum();
    if total != gpus {
        return Err(Error::invalid(
            format!("a micro-batch's groups cover {total} GPUs, the cluster has {gpus}"),
            "this is a planner bug: every GPU belongs to exactly one group",
        ));
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    // Stable: equal sizes keep their order, so placement is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(groups[i].shape.size()));
    let mut ranks = vec![Vec::new(); groups.len()];
    let mut next = 0u32;
    for i in order {
        let g = groups[i].shape.size();
        let aligned = if g >= gpus_per_domain { g % gpus_per_domain == 0 } else { gpus_per_domain % g == 0 };
        if !aligned || next % g.min(gpus_per_domain) != 0 {
            return Err(Error::invalid(
                format!("a group of {g} GPUs cannot be aligned to NVLink domains of {gpus_per_domain} GPUs"),
                "groups divide a domain (a node, or a rack on NVL72) or are whole domains",
            ));
        }
        ranks[i] = (next..next + g).collect();
        next += g;
    }
    Ok(ranks)
}

/// Places the groups of `pods` pods of `pod_gpus` GPUs each: the groups are listed pod by pod
/// (each pod's covering its GPUs exactly), and each pod's are placed inside it ([`place`]), so
/// that no group spans two pods.
pub fn place_pods(groups: &[Group], pods: u32, pod_gpus: u32, gpus_per_domain: u32) -> Result<Vec<Vec<u32>>> {
    if pods <= 1 {
        return place(groups, pod_gpus, gpus_per_domain);
    }
    let mut ranks = Vec::with_capacity(groups.len());
    let mut start = 0;
    for pod in 0..pods {
        let mut used = 0u32;
        let mut end = start;
        while end < groups.len() && used < pod_gpus {
            used += groups[end].shape.size();
            end += 1;
        }
        let offset = pod * pod_gpus;
        for group in place(&groups[start..end], pod_gpus, gpus_per_domain)? {
            ranks.push(group.into_iter().map(|r| r + offset).collect());
        }
        start = end;
    }
    if start != groups.len() {
        return Err(Error::internal(format!("a micro-batch's groups cover more than its {pods} pods")));
    }
    Ok(ranks)
}

/// Fills the GPUs no group uses with single-GPU groups without documents.
pub fn fill_idle(groups: &mut Vec<Group>, gpus: u32) {
    let used: u32 = groups.iter().map(|g| g.shape.size()).sum();
    for _ in used..gpus {
        groups.push(Group {
            shape: GroupShape { scheme: Scheme::Ulysses, ulysses: 1, ring: 1, variant: RingVariant::Zigzag },
            docs: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(u: u32, r: u32) -> Group {
        Group { shape: GroupShape { scheme: Scheme::Hsap, ulysses: u, ring: r, variant: RingVariant::Zigzag }, docs: vec![] }
    }

    #[test]
    fn placement_puts_node_groups_first_and_packs_small_ones() {
        let groups = vec![g(1, 1), g(2, 1), g(8, 2), g(4, 1), g(1, 1), g(8, 1)];
        let ranks = place(&groups, 32, 8).unwrap();
        assert_eq!(ranks[2], (0..16).collect::<Vec<_>>());
        assert_eq!(ranks[5], (16..24).collect::<Vec<_>>());
        assert_eq!(ranks[3], vec![24, 25, 26, 27]);
        assert_eq!(ranks[1], vec![28, 29]);
        assert_eq!((ranks[0].clone(), ranks[4].clone()), (vec![30], vec![31]));
    }

    #[test]
    fn domain_sizes_divide_each_other_and_the_domain() {
        assert_eq!(domain_sizes(8), vec![1, 2, 4]);
        assert_eq!(domain_sizes(72), vec![1, 2, 4, 8, 24]);
        assert_eq!(domain_sizes(20), vec![1, 2, 4]);
        assert_eq!(domain_sizes(1), Vec::<u32>::new());
        // On two NVL72 racks, groups of those sizes placed largest first never straddle a rack.
        let groups = vec![g(1, 1), g(8, 3), g(2, 1), g(8, 1), g(8, 9), g(4, 1), g(4, 2), g(8, 3), g(1, 1)];
        let ranks = place(&groups, 144, 72).unwrap();
        assert_eq!(ranks[4], (0..72).collect::<Vec<_>>());
        for r in &ranks {
            assert_eq!(r[0] / 72, r[r.len() - 1] / 72, "{r:?}");
        }
    }

    #[test]
    fn placement_refuses_a_partial_cover() {
        assert!(place(&[g(8, 1)], 16, 8).is_err());
        assert!(place(&[g(4, 3)], 12, 8).is_err());
    }
}
