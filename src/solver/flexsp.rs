//! FlexSP's formulation (Wang et al., "Data-Centric Heterogeneity-Adaptive Sequence Parallelism",
//! ASPLOS'25), priced by this project's cost model: Ulysses-only SP groups of power-of-two sizes;
//! one binary per candidate group (every aligned position of every size), one integer per
//! (length bucket, candidate group), 16 buckets, minimise the slowest group's time, under a time
//! limit (5 s in the paper). Micro-batches are cut by memory first, as FlexSP does, and each is
//! solved on its own. The symmetry between identical candidate groups is the formulation's own:
//! it is kept on purpose.

use super::assign::{earliest_finish, makespan, split_microbatches, Bin};
use super::milp::MilpStatus;
use super::surrogate::{tabulate_fixed, Candidate};
use super::{fill_idle, Ctx, Group, Micro, Solution};
use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::trace::Batch;
use good_lp::{constraint, variable, Expression, ProblemVariables, Solution as _, SolverModel, Variable};

#[derive(Debug, Clone)]
pub struct FlexspOptions {
    /// HiGHS time limit per micro-batch, seconds (the paper's is 5).
    pub time_limit_s: f64,
    /// Length buckets (the paper's is 16).
    pub buckets: usize,
}

impl Default for FlexspOptions {
    fn default() -> Self {
        FlexspOptions { time_limit_s: 5.0, buckets: 16 }
    }
}

/// FlexSP's candidate shapes, tabulated once per run.
pub struct Flexsp {
    pub opts: FlexspOptions,
    cands: Vec<Candidate>,
}

impl Flexsp {
    pub fn new(ctx: &Ctx, opts: FlexspOptions) -> Flexsp {
        let heads = ctx.cm.model.heads;
        let shapes: Vec<GroupShape> = std::iter::successors(Some(1u32), |s| Some(s * 2))
            .take_while(|&s| s <= ctx.gpus)
            .filter(|&s| heads % s == 0 && (s <= ctx.gpus_per_node || s % ctx.gpus_per_node == 0))
            .map(|s| GroupShape { scheme: Scheme::Ulysses, ulysses: s, ring: 1, variant: RingVariant::Zigzag })
            .collect();
        let cands = tabulate_fixed(&ctx.cm, &shapes, ctx.max_len, ctx.limit_bytes);
        Flexsp { opts, cands }
    }

    /// Plans one batch. Falls back to the best uniform Ulysses plan that holds every document
    /// when the MILP returns no solution (its status and the plan's source say so). None when no Ulysses
    /// group holds the longest document.
    pub fn solve(&self, ctx: &Ctx, batch: &Batch) -> Option<Solution> {
        let single = self.cands.iter().find(|c| c.size == 1)?;
        let per_micro = (single.capacity_tokens() as f64 * f64::from(ctx.gpus) * 0.9) as u64;
        let lw = ctx.cm.hsap_params().linear_weight;
        let mut micro = Vec::new();
        let mut statuses = Vec::new();
        let mut fell_back = false;
        for docs in split_microbatches(batch, per_micro, 1, lw) {
            let (groups, status) = self.solve_micro(ctx, batch, &docs);
            statuses.push(status);
            let groups = match groups {
                Some(g) => g,
                None => {
                    fell_back = true;
                    self.uniform(ctx, batch, &docs)?
                }
            };
            micro.push(Micro { groups });
        }
        // The least favourable status of the batch's solves is the one worth reporting.
        let milp = statuses.iter().find(|s| !matches!(s, MilpStatus::Optimal)).or(statuses.first()).cloned();
        let source = if fell_back { "flexsp-fallback" } else { "flexsp" };
        Some(Solution { micro, source: source.into(), milp })
    }

    fn solve_micro(&self, ctx: &Ctx, batch: &Batch, docs: &[usize]) -> (Option<Vec<Group>>, MilpStatus) {
        let buckets = quantile_buckets(batch, docs, self.opts.buckets);
        let mut vars = ProblemVariables::new();
        let t = vars.add(variable().min(0));
        // Candidate groups: every aligned position of every size.
        let mut groups: Vec<(usize, Variable)> = Vec::new();
        for (ci, c) in self.cands.iter().enumerate() {
            for _ in 0..ctx.gpus / c.size {
                groups.push((ci, vars.add(variable().binary())));
            }
        }
        let x: Vec<Vec<Option<Variable>>> = buckets
            .iter()
            .map(|b| {
                groups
                    .iter()
                    .map(|&(ci, _)| {
                        self.cands[ci]
                            .fits(u64::from(b.max_len))
                            .then(|| vars.add(variable().integer().min(0).max(b.docs.len() as f64)))
                    })
                    .collect()
            })
            .collect();
        let mut problem = vars
            .minimise(t)
            .using(good_lp::solvers::highs::highs)
            .set_threads(1)
            .set_time_limit(self.opts.time_limit_s.max(0.001));
        problem.set_verbose(false);
        let gpus: Expression = groups.iter().map(|&(ci, y)| f64::from(self.cands[ci].size) * y).sum();
        problem = problem.with(constraint!(gpus <= f64::from(ctx.gpus)));
        for (bi, b) in buckets.iter().enumerate() {
            let placed: Expression = x[bi].iter().flatten().map(|&v| Expression::from(v)).sum();
            problem = problem.with(constraint!(placed == b.docs.len() as f64));
        }
        for (j, &(ci, y)) in groups.iter().enumerate() {
            let c = &self.cands[ci];
            let mut time = Expression::from(c.base_s * y);
            let mut tokens = Expression::from(0.0);
            for (bi, b) in buckets.iter().enumerate() {
                let Some(v) = x[bi][j] else { continue };
                let n = b.docs.len() as f64;
                problem = problem.with(constraint!(v <= n * y));
                time += b.docs.iter().map(|&d| c.marginal_s(batch.docs[d].len)).sum::<f64>() / n * v;
                tokens += (b.tokens / n) * v;
            }
            problem = problem.with(constraint!(time <= t));
        problem = problem.with(constraint!(c.floor_s * y <= t));
            problem = problem.with(constraint!(tokens <= c.capacity_tokens() as f64 * y));
        }
        let result = problem.solve();
        let status = MilpStatus::of(&result);
        let Ok(sol) = result else { return (None, status) };
        // Documents of each bucket, longest first, to the selected groups in their counts.
        let mut out: Vec<Group> = Vec::new();
        let mut index_of = vec![usize::MAX; groups.len()];
        for (j, &(ci, y)) in groups.iter().enumerate() {
            if sol.value(y) > 0.5 {
                index_of[j] = out.len();
                out.push(Group { shape: self.cands[ci].shape, docs: Vec::new() });
            }
        }
        for (bi, b) in buckets.iter().enumerate() {
            let mut queue = b.docs.iter().copied();
            for (j, v) in x[bi].iter().enumerate() {
                let (Some(v), true) = (v, index_of[j] != usize::MAX) else { continue };
                let count = sol.value(*v).round().max(0.0) as usize;
                out[index_of[j]].docs.extend(queue.by_ref().take(count));
            }
            // Rounding can leave documents over: they join the first selected group that holds them.
            let rest: Vec<usize> = queue.collect();
            if !rest.is_empty() {
                let Some(g) = out.iter_mut().max_by_key(|g| g.shape.size()) else { return (None, status) };
                g.docs.extend(rest);
            }
        }
        for g in &mut out {
            g.docs.sort_unstable();
        }
        if out.iter().map(|g| g.shape.size()).sum::<u32>() > ctx.gpus {
            return (None, status);
        }
        fill_idle(&mut out, ctx.gpus);
        (Some(out), status)
    }

    /// The best uniform Ulysses plan (by the surrogate) that holds every document, spread by
    /// earliest finish: what a FlexSP deployment would fall back to without a solver answer.
    fn uniform(&self, ctx: &Ctx, batch: &Batch, docs: &[usize]) -> Option<Vec<Group>> {
        let mut best: Option<(f64, Vec<Group>)> = None;
        for c in &self.cands {
            let mut bins: Vec<Bin<'_>> = (0..ctx.gpus / c.size).map(|_| Bin::new(c)).collect();
            if !earliest_finish(&mut bins, batch, docs) {
                continue;
            }
            let span = makespan(&bins);
            if best.as_ref().is_some_and(|b| b.0 <= span) {
                continue;
            }
            let mut groups: Vec<Group> = bins
                .into_iter()
                .map(|b| {
                    let mut docs = b.docs;
                    docs.sort_unstable();
                    Group { shape: c.shape, docs }
                })
                .collect();
            fill_idle(&mut groups, ctx.gpus);
            best = Some((span, groups));
        }
        best.map(|b| b.1)
    }
}

struct Bucket {
    docs: Vec<usize>,
    max_len: u32,
    tokens: f64,
}

/// Up to `n` buckets of (nearly) equal document counts over the sorted lengths, longest first in
/// each bucket.
fn quantile_buckets(batch: &Batch, docs: &[usize], n: usize) -> Vec<Bucket> {
    let mut sorted = docs.to_vec();
    sorted.sort_by(|&a, &b| batch.docs[b].len.cmp(&batch.docs[a].len).then(a.cmp(&b)));
    let n = n.clamp(1, sorted.len().max(1));
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let (from, to) = (k * sorted.len() / n, (k + 1) * sorted.len() / n);
        if from == to {
            continue;
        }
        let docs = sorted[from..to].to_vec();
        out.push(Bucket {
            max_len: docs.iter().map(|&d| batch.docs[d].len).max().unwrap_or(0),
            tokens: docs.iter().map(|&d| f64::from(batch.docs[d].len)).sum(),
            docs,
        });
    }
    out
}
