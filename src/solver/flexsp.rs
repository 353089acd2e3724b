//! FlexSP's formulation (Wang et al., "Data-Centric Heterogeneity-Adaptive Sequence Parallelism",
//! ASPLOS'25), priced by this project's cost model: Ulysses-only SP groups of power-of-two sizes;
//! one binary per candidate group (every aligned position of every size), one integer per
//! (length bucket, candidate group), 16 buckets, minimise the slowest group's time, under a time
//! limit (5 s in the paper). Micro-batches are cut by memory first, as FlexSP does, and each is
//! solved on its own. The symmetry between identical candidate groups is the formulation's own:
//! it is kept on purpose.

use super::assign::{earliest_finish, makespan, split_microbatches, Bin};
use super::milp::{MilpStatus, Solve};
use super::surrogate::Candidate;
use super::{fill_idle, Ctx, Group, Micro, Solution};
use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::trace::Batch;
use good_lp::{constraint, variable, Expression, ProblemVariables, Solution as _, SolverModel, Variable, WithInitialSolution};

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
            .filter(|&s| heads % s == 0 && ctx.packs(s))
            .map(|s| GroupShape { scheme: Scheme::Ulysses, ulysses: s, ring: 1, variant: RingVariant::Zigzag })
            .collect();
        let cands = ctx.fixed_tables(&shapes);
        Flexsp { opts, cands }
    }

    /// Plans one batch: per micro-batch, the better (priced exactly) of the MILP's answer and the
    /// best uniform Ulysses plan, which is also the MILP's start. A deployment would not run an
    /// incumbent that a time limit cut short when its own start was faster; the plan's source says
    /// `flexsp-uniform` when any micro-batch kept the uniform plan. None when no Ulysses group
    /// holds the longest document.
    pub fn solve(&self, ctx: &Ctx, batch: &Batch) -> Option<Solution> {
        let single = self.cands.iter().find(|c| c.size == 1)?;
        let per_micro = (single.capacity_tokens() as f64 * f64::from(ctx.gpus) * 0.9) as u64;
        let lw = ctx.cm.hsap_params().linear_weight;
        let mut micro = Vec::new();
        let mut statuses = Vec::new();
        let mut kept_uniform = false;
        for docs in split_microbatches(batch, per_micro, 1, lw) {
            let uniform = self.uniform(ctx, batch, &docs);
            let (milp, status) = self.solve_micro(ctx, batch, &docs, uniform.as_ref());
            statuses.push(status);
            let groups = match (milp, uniform) {
                (Some(m), Some(u)) if ctx.makespan(batch, &u.groups) < ctx.makespan(batch, &m) => {
                    kept_uniform = true;
                    u.groups
                }
                (Some(m), _) => m,
                (None, Some(u)) => {
                    kept_uniform = true;
                    u.groups
                }
                (None, None) => return None,
            };
            micro.push(Micro { groups });
        }
        // The least favourable status of the batch's solves is the one worth reporting.
        let milp = statuses.iter().find(|s| !matches!(s, MilpStatus::Optimal)).or(statuses.first()).cloned().map(Solve::milp);
        let source = if kept_uniform { "flexsp-uniform" } else { "flexsp" };
        Some(Solution { micro, source: source.into(), milp })
    }

    fn solve_micro(&self, ctx: &Ctx, batch: &Batch, docs: &[usize], start: Option<&Uniform>) -> (Option<Vec<Group>>, MilpStatus) {
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
        let initial = start.and_then(|u| self.initial_solution(batch, &buckets, &groups, &x, t, u));
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
        if let Some(initial) = initial {
            problem = problem.with_initial_solution(initial);
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
    /// earliest finish: what a FlexSP deployment runs without a solver.
    fn uniform(&self, ctx: &Ctx, batch: &Batch, docs: &[usize]) -> Option<Uniform> {
        let mut best: Option<(f64, Uniform)> = None;
        for (cand, c) in self.cands.iter().enumerate() {
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
            let used = groups.len();
            fill_idle(&mut groups, ctx.gpus);
            best = Some((span, Uniform { cand, used, groups }));
        }
        best.map(|b| b.1)
    }

    /// The uniform plan as values of the MILP's variables: its groups are the first candidate
    /// groups of its shape, each bucket's count in each group, `t` the slowest group's modelled
    /// time. None when a document sits where the MILP has no variable for its bucket.
    fn initial_solution(
        &self,
        batch: &Batch,
        buckets: &[Bucket],
        groups: &[(usize, Variable)],
        x: &[Vec<Option<Variable>>],
        t: Variable,
        u: &Uniform,
    ) -> Option<Vec<(Variable, f64)>> {
        let mut bucket_of = std::collections::HashMap::new();
        for (bi, b) in buckets.iter().enumerate() {
            bucket_of.extend(b.docs.iter().map(|&d| (d, bi)));
        }
        let c = &self.cands[u.cand];
        let slots = groups.iter().enumerate().filter(|(_, g)| g.0 == u.cand).map(|(j, _)| j);
        let mut values = Vec::new();
        let mut slowest = 0.0f64;
        let mut taken = vec![false; groups.len()];
        for (j, g) in slots.zip(&u.groups[..u.used]) {
            taken[j] = true;
            let mut counts = vec![0usize; buckets.len()];
            for d in &g.docs {
                counts[*bucket_of.get(d)?] += 1;
            }
            let mut time = c.base_s;
            for (bi, &n) in counts.iter().enumerate() {
                let v = x[bi][j];
                if n > 0 {
                    let b = &buckets[bi];
                    time += b.docs.iter().map(|&d| c.marginal_s(batch.docs[d].len)).sum::<f64>() / b.docs.len() as f64 * n as f64;
                }
                match (v, n) {
                    (Some(v), n) => values.push((v, n as f64)),
                    (None, 0) => {}
                    (None, _) => return None,
                }
            }
            slowest = slowest.max(time).max(c.floor_s);
        }
        for (j, &(_, y)) in groups.iter().enumerate() {
            values.push((y, if taken[j] { 1.0 } else { 0.0 }));
            if !taken[j] {
                values.extend(x.iter().filter_map(|row| row[j]).map(|v| (v, 0.0)));
            }
        }
        values.push((t, slowest));
        Some(values)
    }
}

/// The uniform Ulysses plan of a micro-batch: candidate `cand`'s shape on its first `used` groups.
struct Uniform {
    cand: usize,
    used: usize,
    groups: Vec<Group>,
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
