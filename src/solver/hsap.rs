//! The hierarchical planner. Per micro-batch:
//! 1. a greedy plan: the smallest makespan T (bisection) for which first-fit-decreasing with
//!    "open the smallest group that runs this document within T" needs at most the cluster's
//!    GPUs; its group counts, idle GPUs as single-GPU groups, documents re-spread by earliest
//!    finish;
//! 2. an LP over group *types* (u, r) with counts and aggregate time and memory capacities per
//!    type, asked for a makespan 2% below the best plan: infeasible is a certificate; otherwise,
//!    with MILP rounds allowed, the integer MILP's counts and shares are packed. No binary per
//!    candidate group, so none of FlexSP's symmetry;
//! 3. exact packing: each group's scheme chosen by the cost model, then a local search priced by
//!    the exact cost model.
//!
//! The result is the best of these and of the incumbents passed in (the baselines' plans of the
//! same batch), priced exactly: never worse than any incumbent.

use super::assign::{choose_schemes, deal, earliest_finish, makespan, split_microbatches, Bin};
use super::local::{improve, improve_scaled, Search};
use super::milp::{MilpStatus, Solve};
use super::{fill_idle, Candidate, Ctx, DocCost, Group, Micro, Priced, Solution};
use crate::error::{Error, Result};
use crate::trace::Batch;
use good_lp::{constraint, variable, Expression, ProblemVariables, Solution as _, SolverModel, Variable};
use rayon::prelude::*;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct HsapOptions {
    /// Wall-clock safety limit for one batch's LP/MILP work (seconds). The greedy plan is always
    /// produced.
    pub time_limit_s: f64,
    /// The improvement the MILP is asked for at each round (relative); the LP relaxation proving
    /// it impossible ends the search.
    pub rel_gap: f64,
    /// Rounds of the integer type MILP per micro-batch after the LP relaxation found room for
    /// improvement (0: the LP certificate only). Measured on four traces, MILP rounds never
    /// improved the plan and cost 8-10x the solve time (docs/planner.md), hence the default.
    pub max_milp_solves: usize,
    /// Cost-model calls the exact local search may spend per micro-batch.
    pub local_evals: usize,
    /// Run the LP/MILP stage at all (false: greedy and local search only).
    pub use_milp: bool,
}

impl Default for HsapOptions {
    fn default() -> Self {
        HsapOptions {
            time_limit_s: 2.0,
            rel_gap: 0.02,
            max_milp_solves: 0,
            local_evals: 600,
            use_milp: true,
        }
    }
}

/// Branch-and-bound nodes one type-MILP solve may explore.
const MILP_MAX_NODES: i32 = 50;

/// Plans one batch. `incumbents` are other plans of the same batch (already priced); the best
/// memory-feasible plan wins.
pub fn hsap(ctx: &Ctx, batch: &Batch, opts: &HsapOptions, incumbents: &[Priced]) -> Result<Priced> {
    let start = Instant::now();
    let deadline = start + std::time::Duration::from_secs_f64(opts.time_limit_s.max(0.0));
    let per_gpu = ctx.candidates.iter().filter(|c| c.size == 1).map(|c| c.max_tokens).max().unwrap_or(0);
    let tokens_per_micro = (f64::from(per_gpu) * f64::from(ctx.cluster_gpus()) * 0.9) as u64;
    let lw = ctx.cm.hsap_params().linear_weight;
    let parts = split_microbatches(batch, tokens_per_micro, 1, lw);
    let mut micro = Vec::with_capacity(parts.len());
    let mut statuses = Vec::new();
    let mut from_milp = false;
    for docs in &parts {
        let mut groups = Vec::new();
        for (pod_groups, origin, status) in plan_pods(ctx, batch, docs, opts, deadline, tokens_per_micro) {
            statuses.extend(summarize_micro(&status));
            from_milp |= origin == Origin::Milp;
            groups.extend(pod_groups);
        }
        micro.push(Micro { groups });
    }
    let milp = summarize(&statuses);
    let sol = Solution {
        micro,
        source: if from_milp { "milp".into() } else { "greedy".into() },
        milp,
    };
    let mut best = ctx.finish(batch, &sol)?;
    for inc in incumbents {
        let better = match (fits(ctx, inc), fits(ctx, &best)) {
            (true, false) => true,
            (true, true) => inc.step_s < best.step_s,
            _ => false,
        };
        if better {
            let mut won = inc.clone();
            won.source = format!("incumbent:{}", inc.source);
            won.milp = best.milp.clone();
            best = won;
        }
    }
    if !fits(ctx, &best) {
        return Err(Error::invalid(
            format!(
                "batch {}: no plan fits in memory (the best needs {:.1} GiB on a GPU, the limit is {:.1} GiB)",
                batch.index,
                best.peak_memory_bytes / crate::units::GIB,
                ctx.limit_bytes / crate::units::GIB
            ),
            "raise --nodes, lower --max-seq, or cut long documents with --over-long split",
        ));
    }
    Ok(best)
}

fn fits(ctx: &Ctx, p: &Priced) -> bool {
    p.peak_memory_bytes <= ctx.limit_bytes
}

/// How much a solve's answer says against the plan: errors and limits first, then LP room, then
/// answers that bound it (a MILP's, then the LP's proof).
fn rank(s: &Solve) -> u8 {
    match (s.relaxation, &s.status) {
        (_, MilpStatus::Error(_)) => 0,
        (_, MilpStatus::TimeLimitNoSolution) => 1,
        (_, MilpStatus::TimeLimit) => 2,
        (_, MilpStatus::GapLimit) => 3,
        (true, MilpStatus::Optimal) => 4,
        (false, MilpStatus::Infeasible) => 5,
        (false, MilpStatus::Optimal) => 6,
        (true, MilpStatus::Infeasible) => 7,
    }
}

/// A micro-batch's outcome: an error or a limit if any, else its last question's answer (a later
/// LP may prove what an earlier one left open).
fn summarize_micro(statuses: &[Solve]) -> Option<Solve> {
    statuses.iter().filter(|s| rank(s) <= 3).min_by_key(|s| rank(s)).or(statuses.last()).cloned()
}

/// A batch's outcome: its least conclusive micro-batch's (proved only if every one was).
fn summarize(micros: &[Solve]) -> Option<Solve> {
    micros.iter().min_by_key(|s| rank(s)).cloned()
}

/// Plans one micro-batch on every pod ([`Ctx::pods`]): its documents dealt to the pods by work
/// (each pod within its share of the micro-batch's tokens when that can be), each pod planned
/// alone, in parallel. One pod: the micro-batch planned whole.
fn plan_pods(
    ctx: &Ctx,
    batch: &Batch,
    docs: &[usize],
    opts: &HsapOptions,
    deadline: Instant,
    tokens_per_micro: u64,
) -> Vec<(Vec<Group>, Origin, Vec<Solve>)> {
    if ctx.pods <= 1 {
        return vec![plan_micro(ctx, batch, docs, opts, deadline)];
    }
    let lw = ctx.cm.hsap_params().linear_weight;
    let pods = ctx.pods as usize;
    let share = tokens_per_micro.div_ceil(u64::from(ctx.pods));
    let dealt = deal(batch, docs, pods, share, lw).or_else(|| deal(batch, docs, pods, u64::MAX, lw)).unwrap_or_default();
    dealt.par_iter().map(|pod_docs| plan_micro(ctx, batch, pod_docs, opts, deadline)).collect()
}

/// Plans one micro-batch on `ctx.gpus` GPUs: greedy, then the type MILP within the deadline,
/// then exact packing.
fn plan_micro(
    ctx: &Ctx,
    batch: &Batch,
    docs: &[usize],
    opts: &HsapOptions,
    deadline: Instant,
) -> (Vec<Group>, Origin, Vec<Solve>) {
    let lens: Vec<u32> = docs.iter().map(|&d| batch.docs[d].len).collect();
    let lower = lower_bound(ctx, &lens);
    // (origin, groups), best by the surrogate last.
    let mut candidates: Vec<(Origin, Vec<Group>)> = Vec::new();
    let mut statuses = Vec::new();
    let greedy = best_greedy(ctx, batch, docs, lower);
    let mut upper = f64::INFINITY;
    if let Some((groups, t)) = greedy {
        upper = t;
        candidates.push((Origin::Greedy, groups));
    }
    // LP-guided improvement: ask whether the makespan can be (1 - rel_gap) of the best so far.
    // The LP relaxation answers "no" cheaply: a proof, under the surrogate, that the plan is
    // within rel_gap of the type model's optimum. Otherwise (and only with MILP rounds allowed)
    // the MILP gives group counts and shares, which are packed, and the target moves down.
    if opts.use_milp && upper.is_finite() {
        let mut round = 0;
        loop {
            let target = upper * (1.0 - opts.rel_gap);
            let left = || deadline.saturating_duration_since(Instant::now()).as_secs_f64();
            if target < lower || left() <= 0.0 {
                break;
            }
            let (lp, lp_status) = type_milp(ctx, batch, docs, target, left(), false);
            statuses.push(Solve::lp(lp_status));
            let Some(lp) = lp else { break };
            if round >= opts.max_milp_solves {
                break;
            }
            round += 1;
            // The LP's counts rounded up satisfy every row but the GPU budget: when they fit, they
            // are an integer solution already and the MILP is not needed.
            let plan = if gpus_of(ctx, &lp.counts) <= ctx.gpus {
                lp
            } else {
                if left() <= 0.0 {
                    break;
                }
                let (plan, status) = type_milp(ctx, batch, docs, target, left(), true);
                statuses.push(Solve::milp(status));
                let Some(plan) = plan else { break };
                plan
            };
            match pack_types(ctx, batch, docs, &plan.counts, Some(&plan.prefer)) {
                Some((groups, span)) if span < upper => {
                    upper = span;
                    candidates.push((Origin::Milp, groups));
                }
                _ => break,
            }
        }
    }
    if candidates.is_empty() {
        // Nothing fitted by the surrogate: fall back to one group of the whole cluster.
        candidates.push((Origin::Greedy, whole_cluster(ctx, docs)));
    }
    // Exact packing of the greedy plan and of the MILP's best (by the surrogate): the surrogate
    // ranks them, the cost model decides.
    let last = candidates.len().saturating_sub(1);
    let finalists = candidates.into_iter().enumerate().filter(|(i, _)| *i == 0 || *i == last).map(|(_, c)| c);
    let mut best: Option<(f64, Origin, Vec<Group>)> = None;
    for (origin, mut groups) in finalists {
        // Schemes first, so that the local search prices what will run.
        choose_schemes(ctx, batch, &mut groups);
        improve(ctx, batch, &mut groups, &ctx.candidates, Search { budget: opts.local_evals, resize: true });
        let span = ctx.makespan(batch, &groups);
        if best.as_ref().is_none_or(|b| span < b.0) {
            best = Some((span, origin, groups));
        }
    }
    if let Some(b) = best.as_mut() {
        repair(ctx, batch, docs, lower, opts, b);
        balance_shared(ctx, batch, opts, &mut b.2);
    }
    match best {
        Some((_, origin, groups)) => (groups, origin, statuses),
        None => (Vec::new(), Origin::Greedy, statuses),
    }
}

/// Rounds of re-planning without a shape the surrogate priced far too low.
const REPAIR_ROUNDS: usize = 2;
/// Share of the local search's budget each repair round's plan gets: a round only has to show
/// that another size wins, and at 1,024 GPUs most batches have a mispriced large ring.
const REPAIR_BUDGET_SHARE: usize = 4;
/// A slowest group whose exact time exceeds the surrogate's time for it by more than this share
/// was chosen on a wrong price.
const MISPRICED: f64 = 0.10;

/// The surrogate ranks; when the exact price of the plan's slowest group is far above what the
/// surrogate said of it, the plan was chosen on a wrong price (a large ring lightly filled around
/// a few long documents, whose anchor gain the surrogate overstates). Plans the greedy again
/// without that group's size and keeps whichever plan the cost model prices faster, a few rounds.
fn repair(ctx: &Ctx, batch: &Batch, docs: &[usize], lower: f64, opts: &HsapOptions, best: &mut (f64, Origin, Vec<Group>)) {
    // A plan within the gap of the surrogate's lower bound has nothing left to win.
    if best.0 <= lower * (1.0 + opts.rel_gap) {
        return;
    }
    let mut banned: Vec<u32> = Vec::new();
    let mut current = best.2.clone();
    let mut times: Vec<f64> = current.iter().map(|g| exact_s(ctx, batch, g)).collect();
    for _ in 0..REPAIR_ROUNDS {
        let Some(size) = mispriced_slowest(ctx, batch, &current, &times) else { return };
        banned.push(size);
        let sub = ctx.restricted(|c| !banned.contains(&c.size));
        let Some((mut groups, _)) = best_greedy(&sub, batch, docs, lower) else { return };
        choose_schemes(&sub, batch, &mut groups);
        // Polished by the local search before it is compared: an unpolished greedy re-plan is
        // often a quarter slower than the same plan polished, and the polished one can win.
        improve(&sub, batch, &mut groups, &sub.candidates, Search { budget: opts.local_evals / REPAIR_BUDGET_SHARE, resize: true });
        // Each group's exact time: the plan's makespan, and what the next round's check reads.
        times = groups.iter().map(|g| exact_s(ctx, batch, g)).collect();
        let span = times.iter().copied().fold(0.0, f64::max);
        if span < best.0 {
            *best = (span, Origin::Greedy, groups.clone());
        }
        current = groups;
    }
}

/// Rounds of moving documents on shared-link prices.
const SHARED_ROUNDS: usize = 2;

/// The searches price groups alone; running together, groups whose network traffic another
/// group's shares (a ZeRO gather beside another group's reduce-scatter, a ring's hops beside
/// both) take longer, and the slowest of them sets the micro-batch's time. Moves documents off
/// those groups: the local search with each group's time scaled by what sharing adds to it
/// (`Ctx::shared_times`), kept when the shared makespan drops, a few rounds.
fn balance_shared(ctx: &Ctx, batch: &Batch, opts: &HsapOptions, groups: &mut Vec<Group>) {
    let Some(mut times) = ctx.shared_times(batch, groups) else { return };
    let span = |t: &[(f64, f64)]| t.iter().map(|x| x.0).fold(0.0, f64::max);
    for _ in 0..SHARED_ROUNDS {
        let factors: Vec<f64> = times.iter().map(|&(shared, alone)| if alone > 0.0 && alone.is_finite() { shared / alone } else { 1.0 }).collect();
        if factors.iter().all(|&f| f <= 1.0 + 1e-9) {
            return;
        }
        let mut next = groups.clone();
        let search = Search { budget: opts.local_evals / REPAIR_BUDGET_SHARE, resize: false };
        improve_scaled(ctx, batch, &mut next, &ctx.candidates, search, &factors);
        // Nothing moved: the shared times would be the same.
        if next == *groups {
            return;
        }
        let Some(next_times) = ctx.shared_times(batch, &next) else { return };
        if span(&next_times) >= span(&times) {
            return;
        }
        *groups = next;
        times = next_times;
    }
}

/// A group's exact time on its shape (0 when it runs nothing; infinite past memory).
fn exact_s(ctx: &Ctx, batch: &Batch, g: &Group) -> f64 {
    if g.docs.is_empty() {
        return 0.0;
    }
    let lens: Vec<u32> = g.docs.iter().map(|&d| batch.docs[d].len).collect();
    ctx.time_within_memory(&ctx.group_cost(&g.shape, &lens))
}

/// The size of the plan's slowest group (by `times`, each group's exact time) when that time is
/// more than [`MISPRICED`] above the surrogate's time for the same documents.
fn mispriced_slowest(ctx: &Ctx, batch: &Batch, groups: &[Group], times: &[f64]) -> Option<u32> {
    let (group, &exact) = groups.iter().zip(times).filter(|(g, _)| !g.docs.is_empty()).max_by(|a, b| a.1.total_cmp(b.1))?;
    let cand = ctx.candidate(&group.shape)?;
    let surrogate = cand.time_s(group.docs.iter().map(|&d| batch.docs[d].len));
    (exact > surrogate * (1.0 + MISPRICED)).then_some(group.shape.size())
}

fn gpus_of(ctx: &Ctx, counts: &[u32]) -> u32 {
    ctx.candidates.iter().zip(counts).map(|(c, &n)| c.size * n).sum()
}

/// Which search produced a micro-batch's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Greedy,
    Milp,
}

/// Every document on one group of the largest candidate size (the whole cluster or pod when
/// the candidates have it), the other GPUs idle.
fn whole_cluster(ctx: &Ctx, docs: &[usize]) -> Vec<Group> {
    let largest = ctx.sizes.last().copied().unwrap_or(1);
    let shape = ctx
        .candidates
        .iter()
        .filter(|c| c.size == largest)
        .max_by_key(|c| (c.max_tokens, c.shape.ulysses))
        .map(|c| c.shape)
        .unwrap_or(crate::scheme::GroupShape {
            scheme: crate::scheme::Scheme::Ulysses,
            ulysses: 1,
            ring: 1,
            variant: crate::scheme::RingVariant::Zigzag,
        });
    let mut groups = vec![Group { shape, docs: docs.to_vec() }];
    fill_idle(&mut groups, ctx.gpus);
    groups
}

fn capacity(c: &Candidate) -> u64 {
    c.capacity_tokens()
}

/// Surrogate lower bound on the makespan: the longest document's best time on any group, and
/// all documents' least GPU-time spread over every GPU.
fn lower_bound(ctx: &Ctx, lens: &[u32]) -> f64 {
    let mut longest: f64 = 0.0;
    let mut gpu_time = 0.0;
    for &l in lens {
        let fitting = ctx.candidates.iter().filter(|c| capacity(c) >= u64::from(l));
        let (best_time, best_work) = fitting.fold((f64::INFINITY, f64::INFINITY), |(t, w), c| {
            let doc = c.doc(l);
            (t.min(c.single_of(&doc)), w.min(f64::from(c.size) * doc.marginal_s))
        });
        longest = longest.max(best_time);
        gpu_time += best_work;
    }
    longest.max(gpu_time / f64::from(ctx.gpus))
}

/// Every document's figures on every candidate shape, in the greedy's order: the bisection asks
/// for them at each of its makespans.
struct OrderCosts<'a> {
    ctx: &'a Ctx,
    order: Vec<usize>,
    lens: Vec<u32>,
    /// `costs[k * candidates + c]`: document `order[k]` on candidate `c`.
    costs: Vec<DocCost>,
    /// [`Candidate::single_s`] of the same pairs.
    single_s: Vec<f64>,
}

impl<'a> OrderCosts<'a> {
    /// The documents longest first (ties by index).
    fn new(ctx: &'a Ctx, batch: &Batch, docs: &[usize]) -> OrderCosts<'a> {
        let mut order = docs.to_vec();
        order.sort_by(|&a, &b| batch.docs[b].len.cmp(&batch.docs[a].len).then(a.cmp(&b)));
        let lens: Vec<u32> = order.iter().map(|&d| batch.docs[d].len).collect();
        let costs: Vec<DocCost> = lens.iter().flat_map(|&l| ctx.candidates.iter().map(move |c| c.doc(l))).collect();
        let n = ctx.candidates.len().max(1);
        let single_s = costs.iter().enumerate().map(|(i, dc)| ctx.candidates[i % n].single_of(dc)).collect();
        OrderCosts { ctx, order, lens, costs, single_s }
    }

    fn at(&self, k: usize, c: usize) -> (&DocCost, f64) {
        let i = k * self.ctx.candidates.len() + c;
        (&self.costs[i], self.single_s[i])
    }
}

/// First-fit decreasing at makespan `t`: each document goes to the open group with the least room
/// left that still finishes by `t` and has memory; otherwise it opens the smallest group (then the
/// fastest) that runs it by `t`. None when that needs more than the cluster's GPUs.
fn greedy_at<'a>(oc: &OrderCosts<'a>, t: f64) -> Option<Vec<Bin<'a>>> {
    let ctx = oc.ctx;
    // Each bin with its candidate's index, for the table.
    let mut bins: Vec<(usize, Bin<'a>)> = Vec::new();
    let mut used = 0u32;
    for (k, (&d, &len)) in oc.order.iter().zip(&oc.lens).enumerate() {
        let fit = bins
            .iter()
            .enumerate()
            .filter(|(_, (_, b))| capacity(b.cand) >= b.tokens + u64::from(len))
            .map(|(i, (c, b))| (i, b.finish_with(oc.at(k, *c).0)))
            .filter(|&(_, finish)| finish <= t)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let i = match fit {
            Some((i, _)) => i,
            None => {
                let (c, cand, _) = ctx
                    .candidates
                    .iter()
                    .enumerate()
                    .map(|(c, cand)| (c, cand, oc.at(k, c).1))
                    .filter(|&(_, cand, single)| capacity(cand) >= u64::from(len) && single <= t)
                    .min_by(|a, b| a.1.size.cmp(&b.1.size).then(a.2.total_cmp(&b.2)))?;
                used += cand.size;
                if used > ctx.gpus {
                    return None;
                }
                bins.push((c, Bin::new(cand)));
                bins.len() - 1
            }
        };
        let (c, bin) = &mut bins[i];
        bin.push_with(d, len, oc.at(k, *c).0);
    }
    Some(bins.into_iter().map(|(_, b)| b).collect())
}

/// The greedy plan at the smallest feasible makespan (bisection), with idle GPUs turned into
/// single-GPU groups and documents re-spread over all groups by earliest finish.
fn best_greedy(ctx: &Ctx, batch: &Batch, docs: &[usize], lower: f64) -> Option<(Vec<Group>, f64)> {
    let oc = OrderCosts::new(ctx, batch, docs);
    let mut hi = lower.max(1e-6);
    let mut found = None;
    for _ in 0..40 {
        if let Some(bins) = greedy_at(&oc, hi) {
            found = Some(bins);
            break;
        }
        hi *= 2.0;
    }
    let mut best_bins = found?;
    let mut lo = lower;
    for _ in 0..14 {
        if hi - lo <= 0.002 * hi {
            break;
        }
        let mid = 0.5 * (lo + hi);
        match greedy_at(&oc, mid) {
            Some(bins) => {
                best_bins = bins;
                hi = mid;
            }
            None => lo = mid,
        }
    }
    let counts = type_counts(ctx, &best_bins);
    let packed = pack_types(ctx, batch, docs, &counts, None);
    // The re-spread plan uses every GPU; the first-fit plan leaves the GPUs it did not need idle,
    // which the surrogate cannot see the worth of: it is kept only when the re-spread fails.
    match packed {
        Some(p) => Some(p),
        None => Some((bins_to_groups(ctx, &best_bins), makespan(&best_bins))),
    }
}

fn type_counts(ctx: &Ctx, bins: &[Bin<'_>]) -> Vec<u32> {
    ctx.candidates
        .iter()
        .map(|c| bins.iter().filter(|b| std::ptr::eq(b.cand, c)).count() as u32)
        .collect()
}

fn bins_to_groups(ctx: &Ctx, bins: &[Bin<'_>]) -> Vec<Group> {
    let mut groups: Vec<Group> = bins
        .iter()
        .map(|b| {
            let mut docs = b.docs.clone();
            docs.sort_unstable();
            Group { shape: b.cand.shape, docs }
        })
        .collect();
    fill_idle(&mut groups, ctx.gpus);
    groups
}

/// Packing of documents into `counts[t]` groups of each candidate type (idle GPUs become
/// single-GPU groups): longest first, each to the earliest-finishing group (by the surrogate)
/// with memory for it, among the groups of its preferred type when it has one and one fits.
/// Returns the groups and the surrogate makespan, or None when some document fits no group.
fn pack_types(
    ctx: &Ctx,
    batch: &Batch,
    docs: &[usize],
    counts: &[u32],
    prefer: Option<&[Option<usize>]>,
) -> Option<(Vec<Group>, f64)> {
    let mut bins: Vec<(usize, Bin<'_>)> = Vec::new();
    let mut used = 0;
    for (i, (c, &n)) in ctx.candidates.iter().zip(counts).enumerate() {
        for _ in 0..n {
            bins.push((i, Bin::new(c)));
            used += c.size;
        }
    }
    let (single_i, single) = ctx.candidates.iter().enumerate().find(|(_, c)| c.size == 1)?;
    for _ in used..ctx.gpus {
        bins.push((single_i, Bin::new(single)));
    }
    let Some(prefer) = prefer else {
        let mut plain: Vec<Bin<'_>> = bins.into_iter().map(|b| b.1).collect();
        if !earliest_finish(&mut plain, batch, docs) {
            return None;
        }
        return Some((bins_to_groups(ctx, &plain), makespan(&plain)));
    };
    let mut order = docs.to_vec();
    order.sort_by(|&a, &b| batch.docs[b].len.cmp(&batch.docs[a].len).then(a.cmp(&b)));
    for d in order {
        let len = batch.docs[d].len;
        let costs: Vec<DocCost> = ctx.candidates.iter().map(|c| c.doc(len)).collect();
        let pick = |typed: bool| {
            bins.iter()
                .enumerate()
                .filter(|(_, (t, b))| (!typed || Some(*t) == prefer[d]) && b.fits(len))
                .map(|(i, (t, b))| (i, b.finish_with(&costs[*t]), b.load_s))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.total_cmp(&b.2)).then(a.0.cmp(&b.0)))
        };
        let (i, _, _) = pick(true).or_else(|| pick(false))?;
        let t = bins[i].0;
        bins[i].1.push_with(d, len, &costs[t]);
    }
    let plain: Vec<Bin<'_>> = bins.into_iter().map(|b| b.1).collect();
    Some((bins_to_groups(ctx, &plain), makespan(&plain)))
}

/// The types worth a variable at makespan `t`: those whose fixed time leaves room, less those
/// dominated by a type with no more GPUs, no more fixed time, no less memory and no more
/// time on every bucket.
fn useful_types<'a>(ctx: &'a Ctx, bks: &[Bucket], t: f64) -> Vec<(usize, &'a Candidate)> {
    let open: Vec<(usize, &Candidate, Vec<f64>)> = ctx
        .candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.base_s < t && c.floor_s <= t)
        .map(|(i, c)| (i, c, bks.iter().map(|b| c.marginal_s(b.max_len)).collect()))
        .collect();
    let dominates = |a: &(usize, &Candidate, Vec<f64>), b: &(usize, &Candidate, Vec<f64>)| {
        a.1.size <= b.1.size
            && a.1.base_s <= b.1.base_s
            && a.1.floor_s <= b.1.floor_s
            && capacity(a.1) >= capacity(b.1)
            && a.2.iter().zip(&b.2).all(|(x, y)| x <= y)
    };
    open.iter()
        .enumerate()
        .filter(|(i, b)| !open.iter().enumerate().any(|(j, a)| j != *i && dominates(a, b) && (!dominates(b, a) || j < *i)))
        .map(|(_, (i, c, _))| (*i, *c))
        .collect()
}

/// Length buckets of a micro-batch: documents in the same octave of length.
struct Bucket {
    docs: Vec<usize>,
    max_len: u32,
    tokens: f64,
}

fn buckets(batch: &Batch, docs: &[usize]) -> Vec<Bucket> {
    let key = |len: u32| f64::from(len).log2().floor() as i64;
    let mut sorted = docs.to_vec();
    sorted.sort_by_key(|&d| (batch.docs[d].len, d));
    let mut out: Vec<Bucket> = Vec::new();
    let mut last_key = None;
    for d in sorted {
        let len = batch.docs[d].len;
        if last_key != Some(key(len)) {
            out.push(Bucket { docs: Vec::new(), max_len: 0, tokens: 0.0 });
            last_key = Some(key(len));
        }
        if let Some(b) = out.last_mut() {
            b.docs.push(d);
            b.max_len = b.max_len.max(len);
            b.tokens += f64::from(len);
        }
    }
    out
}

/// The type MILP at makespan `t`: integer group counts n_t per candidate type (continuous with
/// `integer` false: the LP relaxation, whose infeasibility proves a lower bound), continuous
/// bucket shares x_bt with x_bt <= |b| n_t for long documents (a type that runs one has a group),
/// only where one group of the type runs the bucket's longest document within `t` and memory,
/// aggregate time and memory capacity per type, at most the cluster's GPUs. A feasibility
/// problem. Returns the counts (rounded up) when feasible.
fn type_milp(
    ctx: &Ctx,
    batch: &Batch,
    docs: &[usize],
    t: f64,
    time_limit_s: f64,
    integer: bool,
) -> (Option<TypePlan>, MilpStatus) {
    let bks = buckets(batch, docs);
    // Buckets of documents a single GPU runs within t need no link to a group count: the
    // aggregate capacities describe them well, and the rows would only slow the solve.
    let short_len = ctx
        .candidates
        .iter()
        .filter(|c| c.size == 1)
        .flat_map(|c| bks.iter().map(|b| b.max_len).filter(|&l| capacity(c) >= u64::from(l) && c.single_s(l) <= t))
        .max()
        .unwrap_or(0);
    let mut vars = ProblemVariables::new();
    let types = useful_types(ctx, &bks, t);
    let n: Vec<Variable> = types
        .iter()
        .map(|(_, c)| {
            let v = variable().min(0).max(f64::from(ctx.gpus / c.size));
            vars.add(if integer { v.integer() } else { v })
        })
        .collect();
    // x[b][k]: documents of bucket b on type k (None when ineligible).
    let mut x: Vec<Vec<Option<Variable>>> = Vec::with_capacity(bks.len());
    for b in &bks {
        let count = b.docs.len() as f64;
        let row: Vec<Option<Variable>> = types
            .iter()
            .map(|(_, c)| {
                let eligible = capacity(c) >= u64::from(b.max_len) && c.single_s(b.max_len) <= t;
                eligible.then(|| vars.add(variable().min(0).max(count)))
            })
            .collect();
        if row.iter().all(Option::is_none) {
            return (None, MilpStatus::Infeasible);
        }
        x.push(row);
    }
    let gpus_used: Expression = types.iter().zip(&n).map(|((_, c), &v)| f64::from(c.size) * v).sum();
    // A feasibility problem: the first integer solution answers the question, and the packing
    // that follows uses every GPU anyway (spare ones become single-GPU groups).
    let mut problem = vars
        .minimise(Expression::from(0.0))
        .using(good_lp::solvers::highs::highs)
        .set_threads(1)
        .set_time_limit(time_limit_s.max(0.001))
        // A node budget rather than a clock bounds the search, so that the same input gives the
        // same plan on any machine and under any load (the time limit is only a safety net).
        .set_option("mip_max_nodes", MILP_MAX_NODES);
    problem.set_verbose(false);
    problem = problem.with(constraint!(gpus_used <= f64::from(ctx.gpus)));
    for (bi, b) in bks.iter().enumerate() {
        let placed: Expression = x[bi].iter().flatten().map(|&v| Expression::from(v)).sum();
        problem = problem.with(constraint!(placed == b.docs.len() as f64));
    }
    for (k, (_, c)) in types.iter().enumerate() {
        let mut time = Expression::from(0.0);
        let mut tokens = Expression::from(0.0);
        for (bi, b) in bks.iter().enumerate() {
            let Some(v) = x[bi][k] else { continue };
            let count = b.docs.len() as f64;
            let work: f64 = b.docs.iter().map(|&d| c.marginal_s(batch.docs[d].len)).sum::<f64>() / count;
            time += work * v;
            tokens += (b.tokens / count) * v;
            if b.max_len > short_len {
                problem = problem.with(constraint!(v <= count * n[k]));
            }
        }
        problem = problem.with(constraint!(time <= (t - c.base_s) * n[k]));
        problem = problem.with(constraint!(tokens <= capacity(c) as f64 * n[k]));
    }
    let result = problem.solve();
    let status = MilpStatus::of(&result);
    let counts = result.ok().map(|sol| {
        let mut counts = vec![0u32; ctx.candidates.len()];
        for ((i, _), &v) in types.iter().zip(&n) {
            counts[*i] = (sol.value(v) - 1e-6).ceil().max(0.0) as u32;
        }
        // Each bucket's documents, longest first, take the types' shares, largest groups first.
        let mut prefer = vec![None; batch.docs.len()];
        let mut by_size: Vec<usize> = (0..types.len()).collect();
        by_size.sort_by_key(|&k| (std::cmp::Reverse(types[k].1.size), k));
        for (bi, b) in bks.iter().enumerate() {
            let mut docs_desc = b.docs.clone();
            docs_desc.sort_by(|&p, &q| batch.docs[q].len.cmp(&batch.docs[p].len).then(p.cmp(&q)));
            let mut queue = docs_desc.into_iter();
            for &k in &by_size {
                let Some(v) = x[bi][k] else { continue };
                let share = sol.value(v).round().max(0.0) as usize;
                for d in queue.by_ref().take(share) {
                    prefer[d] = Some(types[k].0);
                }
            }
        }
        TypePlan { counts, prefer }
    });
    (counts, status)
}

/// The type MILP's answer: group counts per candidate, and the type each document's bucket share
/// sends it to.
struct TypePlan {
    counts: Vec<u32>,
    /// Per batch document: the candidate index its share went to (None: not in this micro-batch
    /// or left over by rounding).
    prefer: Vec<Option<usize>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_proved_only_when_every_micro_batch_is() {
        let (proved, room) = (Solve::lp(MilpStatus::Infeasible), Solve::lp(MilpStatus::Optimal));
        // A later LP proves what an earlier one and a MILP round left open.
        let micro = summarize_micro(&[room.clone(), Solve::milp(MilpStatus::Optimal), proved.clone()]);
        assert_eq!(micro.as_ref().map(Solve::name).as_deref(), Some("proved_within_gap"));
        assert_eq!(summarize(&[proved.clone(), proved.clone()]).map(|s| s.name()).as_deref(), Some("proved_within_gap"));
        assert_eq!(summarize(&[proved.clone(), room.clone()]).map(|s| s.name()).as_deref(), Some("lp_room"));
        // A limit is what a batch reports, whatever came after it.
        let limited = summarize_micro(&[room, Solve::milp(MilpStatus::TimeLimit), proved]);
        assert_eq!(limited.map(|s| s.name()).as_deref(), Some("time_limit"));
        assert_eq!(summarize(&[]), None);
    }
}

