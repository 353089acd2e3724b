//! What users run today, priced by the same cost model on the same batches:
//! - static: one (u, r) for the whole trace, the same groups for every batch, per family
//!   (DeepSpeed-Ulysses, ring context parallel with Megatron's THD zigzag padding, USP);
//! - Megatron dynamic context parallel: per document a power-of-two CP size from the tokens a
//!   rank may hold (the user's setting, tried over a few values per trace), groups formed
//!   greedily with s^2/cp load balancing.

use super::assign::{earliest_finish, split_microbatches, Bin};
use super::local::{improve, Search};
use super::surrogate::Candidate;
use super::{fill_idle, Ctx, Group, Micro, Solution};
use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::trace::Batch;
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// DeepSpeed-Ulysses: u = group size, r = 1 (may span nodes).
    Ulysses,
    /// Ring attention / Megatron context parallel, zigzag THD layout: u = 1.
    Ring,
    /// USP: u inside a node (u >= 2), ring across (r >= 2), zigzag.
    Usp,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Ulysses, Family::Ring, Family::Usp];

    pub fn name(self) -> &'static str {
        match self {
            Family::Ulysses => "static-ulysses",
            Family::Ring => "static-ring",
            Family::Usp => "static-usp",
        }
    }

    /// Every valid (u, r) of the family on this cluster: group sizes that divide the GPUs and
    /// align to nodes, Ulysses degrees that divide the heads.
    pub fn shapes(self, ctx: &Ctx) -> Vec<GroupShape> {
        let (gpus, gpn, heads) = (ctx.gpus, ctx.gpus_per_domain, ctx.cm.model.heads);
        let sizes = (1..=gpus).filter(|&g| gpus % g == 0 && (if g < gpn { gpn % g == 0 } else { g % gpn == 0 }));
        let mut out = Vec::new();
        for g in sizes {
            let shape = |scheme, u: u32| GroupShape { scheme, ulysses: u, ring: g / u, variant: RingVariant::Zigzag };
            match self {
                Family::Ulysses if heads % g == 0 => out.push(shape(Scheme::Ulysses, g)),
                Family::Ring => out.push(shape(if g == 1 { Scheme::Ulysses } else { Scheme::Ring }, 1)),
                Family::Usp => {
                    let mut u = 2;
                    while u <= gpn.min(g / 2) {
                        if g % u == 0 && heads % u == 0 {
                            out.push(shape(Scheme::Usp, u));
                        }
                        u *= 2;
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// The (u, r) a static family settled on for the trace.
#[derive(Debug, Clone, Serialize)]
pub struct StaticChoice {
    pub family: Family,
    pub shape: GroupShape,
    /// Sum over batches of the exact step times (before gradient synchronisation).
    pub total_s: f64,
    /// Every (u, r) tried with its total, or why it was left out.
    pub tried: Vec<(String, Option<f64>)>,
}

/// Cost-model calls the static plans' local search may spend per micro-batch: the baselines get
/// the same balancing machinery as the planner, with a smaller budget.
const STATIC_LOCAL_EVALS: usize = 200;
/// How many of a family's (u, r), ranked by the surrogate, are priced exactly over the trace.
const STATIC_EXACT: usize = 2;

/// Plans every batch with `shape` on every group: the fewest micro-batches that fit memory, each
/// micro-batch's documents spread by earliest finish and then balanced by the exact local search.
/// None when some document fits no group of the shape.
pub fn static_plan(ctx: &Ctx, cand: &Candidate, batch: &Batch, exact: bool) -> Option<Solution> {
    let n = (ctx.gpus / cand.size) as usize;
    let lw = ctx.cm.hsap_params().linear_weight;
    if batch.docs.iter().any(|d| !cand.fits(u64::from(d.len))) {
        return None;
    }
    let per_micro = cand.capacity_tokens() * n as u64;
    let mut min_micro = 1;
    loop {
        let parts = split_microbatches(batch, per_micro, min_micro, lw);
        let mut micro = Vec::with_capacity(parts.len());
        let mut ok = true;
        for docs in &parts {
            let mut bins: Vec<Bin<'_>> = (0..n).map(|_| Bin::new(cand)).collect();
            if !earliest_finish(&mut bins, batch, docs) {
                ok = false;
                break;
            }
            let mut groups: Vec<Group> = bins
                .into_iter()
                .map(|b| {
                    let mut docs = b.docs;
                    docs.sort_unstable();
                    Group { shape: cand.shape, docs }
                })
                .collect();
            if exact {
                improve(ctx, batch, &mut groups, std::slice::from_ref(cand), Search { budget: STATIC_LOCAL_EVALS, resize: false });
            }
            micro.push(Micro { groups });
        }
        if ok {
            return Some(Solution { micro, source: "static".into(), milp: None });
        }
        min_micro = parts.len() + 1;
    }
}

/// Surrogate step time of a static plan (sum over micro-batches of the slowest group).
fn surrogate_step(cand: &Candidate, batch: &Batch, sol: &Solution) -> f64 {
    sol.micro
        .iter()
        .map(|m| {
            m.groups
                .iter()
                .filter(|g| !g.docs.is_empty())
                .map(|g| cand.time_s(g.docs.iter().map(|&d| batch.docs[d].len)))
                .fold(0.0, f64::max)
        })
        .sum()
}

/// Chooses a family's (u, r) for the whole trace: every valid shape that holds every document is
/// ranked by the surrogate over all batches; the best few are priced exactly, and the fastest
/// in total wins. Returns the choice and its per-batch solutions, or None when no shape of the
/// family holds the longest document.
pub fn static_family(ctx: &Ctx, family: Family, batches: &[Batch]) -> Option<(StaticChoice, Vec<Solution>)> {
    let shapes = family.shapes(ctx);
    let cands = ctx.fixed_tables(&shapes);
    let mut tried: Vec<(String, Option<f64>)> = Vec::new();
    let mut ranked: Vec<(f64, &Candidate)> = Vec::new();
    for c in &cands {
        let totals: Option<Vec<f64>> = batches
            .par_iter()
            .map(|b| static_plan(ctx, c, b, false).map(|s| surrogate_step(c, b, &s)))
            .collect();
        match totals {
            Some(t) => ranked.push((t.iter().sum(), c)),
            None => tried.push((label(&c.shape), None)),
        }
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<(f64, &Candidate, Vec<Solution>)> = None;
    for &(_, c) in ranked.iter().take(STATIC_EXACT) {
        let sols: Option<Vec<Solution>> = batches.par_iter().map(|b| static_plan(ctx, c, b, true)).collect();
        let Some(sols) = sols else { continue };
        let total: f64 = batches
            .par_iter()
            .zip(&sols)
            .map(|(b, s)| ctx.busy_s(b, s))
            .sum();
        tried.push((label(&c.shape), Some(total)));
        if best.as_ref().is_none_or(|b| total < b.0) {
            best = Some((total, c, sols));
        }
    }
    for &(t, c) in ranked.iter().skip(STATIC_EXACT) {
        tried.push((format!("{} (surrogate)", label(&c.shape)), Some(t)));
    }
    let (total_s, cand, sols) = best?;
    Some((StaticChoice { family, shape: cand.shape, total_s, tried }, sols))
}

fn label(s: &GroupShape) -> String {
    format!("u{}xr{}", s.ulysses, s.ring)
}

/// Megatron dynamic context parallel: ring (zigzag) groups of power-of-two CP sizes, each
/// document in the smallest group whose ranks hold at most `max_tokens_per_rank` of it and whose
/// memory holds it (Megatron's `max_seqlen_per_dp_cp_rank`). Documents go, heaviest by s^2/cp
/// first, to a new group of their CP size while GPUs remain, else to the least-loaded group of
/// that size with room for them, else to the next micro-batch. `max_tokens_per_rank` is the
/// user's setting: [`MegatronDcp::tune`] picks it for a trace as a user would, by trying it.
pub struct MegatronDcp {
    /// Ring groups of 1, 2, 4, ... GPUs, smallest first.
    cands: Vec<Candidate>,
}

/// Settings of `max_tokens_per_rank` tried, as fractions of what one GPU holds in memory.
const DCP_RANK_FRACTIONS: [u64; 6] = [1, 2, 4, 8, 16, 32];

/// The chosen setting and each batch's plan.
pub struct DcpChoice {
    pub max_tokens_per_rank: u64,
    pub solutions: Vec<Solution>,
}

impl MegatronDcp {
    pub fn new(ctx: &Ctx) -> MegatronDcp {
        let shapes: Vec<GroupShape> = std::iter::successors(Some(1u32), |s| Some(s * 2))
            .take_while(|&s| s <= ctx.gpus)
            .filter(|&s| ctx.packs(s))
            .map(|s| {
                let scheme = if s == 1 { Scheme::Ulysses } else { Scheme::Ring };
                GroupShape { scheme, ulysses: 1, ring: s, variant: RingVariant::Zigzag }
            })
            .collect();
        MegatronDcp { cands: ctx.fixed_tables(&shapes) }
    }

    /// What one GPU holds in memory, the largest sensible `max_tokens_per_rank`.
    pub fn rank_capacity_tokens(&self) -> u64 {
        self.cands.first().map_or(0, Candidate::capacity_tokens)
    }

    /// Tries each setting of `max_tokens_per_rank` on every batch and keeps the one with the
    /// shortest exact total. None when no setting plans every batch.
    pub fn tune(&self, ctx: &Ctx, batches: &[Batch]) -> Option<DcpChoice> {
        let cap = self.rank_capacity_tokens();
        let mut best: Option<(f64, DcpChoice)> = None;
        for per_rank in DCP_RANK_FRACTIONS.iter().map(|f| cap / f).filter(|&t| t > 0) {
            let sols: Option<Vec<Solution>> = batches.par_iter().map(|b| self.plan(ctx, b, per_rank)).collect();
            let Some(solutions) = sols else { continue };
            let total: f64 = batches.par_iter().zip(&solutions).map(|(b, s)| ctx.busy_s(b, s)).sum();
            if best.as_ref().is_none_or(|b| total < b.0) {
                best = Some((total, DcpChoice { max_tokens_per_rank: per_rank, solutions }));
            }
        }
        best.map(|b| b.1)
    }

    /// Plans one batch with `max_tokens_per_rank`. None when a document fits no group.
    pub fn plan(&self, ctx: &Ctx, batch: &Batch, max_tokens_per_rank: u64) -> Option<Solution> {
        let per_rank = max_tokens_per_rank.max(1);
        let cp_of = |len: u32| {
            self.cands
                .iter()
                .position(|c| u64::from(len) <= u64::from(c.size) * per_rank && c.fits(u64::from(len)))
        };
        let cps: Vec<usize> = batch.docs.iter().map(|d| cp_of(d.len)).collect::<Option<_>>()?;
        let load = |d: usize| f64::from(batch.docs[d].len).powi(2) / f64::from(self.cands[cps[d]].size);
        let mut remaining: Vec<usize> = (0..batch.docs.len()).collect();
        remaining.sort_by(|&a, &b| load(b).total_cmp(&load(a)).then(a.cmp(&b)));
        let mut micro = Vec::new();
        while !remaining.is_empty() {
            // (candidate, docs, load, tokens)
            let mut groups: Vec<(usize, Vec<usize>, f64, u64)> = Vec::new();
            let mut free = ctx.gpus;
            let mut deferred = Vec::new();
            for &d in &remaining {
                let (k, len) = (cps[d], u64::from(batch.docs[d].len));
                let c = &self.cands[k];
                if free >= c.size {
                    free -= c.size;
                    groups.push((k, vec![d], load(d), len));
                    continue;
                }
                let room = groups
                    .iter_mut()
                    .filter(|g| g.0 == k && g.3 + len <= u64::from(c.size) * per_rank && c.fits(g.3 + len))
                    .min_by(|a, b| a.2.total_cmp(&b.2));
                match room {
                    Some(g) => {
                        g.1.push(d);
                        g.2 += load(d);
                        g.3 += len;
                    }
                    None => deferred.push(d),
                }
            }
            let mut gs: Vec<Group> = groups
                .into_iter()
                .map(|(k, mut docs, _, _)| {
                    docs.sort_unstable();
                    Group { shape: self.cands[k].shape, docs }
                })
                .collect();
            fill_idle(&mut gs, ctx.gpus);
            micro.push(Micro { groups: gs });
            remaining = deferred;
        }
        Some(Solution { micro, source: "megatron-dcp".into(), milp: None })
    }
}
