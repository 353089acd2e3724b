//! The exact MILP of one micro-batch on a small cluster, solved without a time limit: the
//! reference the planner's quality is measured against (tests/solver_exact.rs, docs/planner.md).
//!
//! Every aligned position of every candidate (u, r) is a binary; documents of equal length are
//! interchangeable, so one integer per (distinct length, candidate) counts them: exact, with none
//! of the planner's aggregation. Objective: the slowest group's time under the surrogate
//! (`Candidate::time_s`: the floor, the longest document alone, the loaded line less the best
//! anchor gain), modelled exactly: one binary per (length, position) says whether the group holds
//! a document of that length, and a continuous anchor weight over the lengths it holds picks the
//! gain. Too slow beyond a few nodes: tests only.

use super::milp::MilpStatus;
use super::{fill_idle, Ctx, Group};
use crate::error::{Error, Result};
use crate::trace::Batch;
use good_lp::{constraint, variable, Expression, ProblemVariables, Solution as _, SolverModel, Variable};

/// Relative optimality gap the exact MILP is solved to.
pub const EXACT_REL_GAP: f64 = 1e-3;

/// The optimum: the groups (documents assigned) and the surrogate makespan.
#[derive(Debug, Clone)]
pub struct ExactOptimum {
    pub groups: Vec<Group>,
    pub makespan_s: f64,
    /// HiGHS's proven lower bound is within EXACT_REL_GAP of `makespan_s`.
    pub status: MilpStatus,
}

/// Solves one micro-batch (all of `batch`) exactly (to [`EXACT_REL_GAP`]), without a time limit.
/// Errors when the instance is too large to be meant for this, or when HiGHS does not prove it.
pub fn solve_exact(ctx: &Ctx, batch: &Batch) -> Result<ExactOptimum> {
    if ctx.gpus > 16 || batch.docs.len() > 64 {
        return Err(Error::invalid(
            format!("the exact MILP is for at most 16 GPUs and 64 documents (got {} and {})", ctx.gpus, batch.docs.len()),
            "use the planner for larger instances",
        ));
    }
    let mut lengths: Vec<u32> = batch.docs.iter().map(|d| d.len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let count = |l: u32| batch.docs.iter().filter(|d| d.len == l).count() as f64;
    let mut vars = ProblemVariables::new();
    let t = vars.add(variable().min(0));
    // (candidate index, first GPU, binary)
    let mut slots: Vec<(usize, u32, Variable)> = Vec::new();
    for (ci, c) in ctx.candidates.iter().enumerate() {
        let mut first = 0;
        while first + c.size <= ctx.gpus {
            slots.push((ci, first, vars.add(variable().binary())));
            first += c.size;
        }
    }
    let x: Vec<Vec<Option<Variable>>> = lengths
        .iter()
        .map(|&l| {
            slots
                .iter()
                .map(|&(ci, _, _)| ctx.candidates[ci].fits(u64::from(l)).then(|| vars.add(variable().integer().min(0).max(count(l)))))
                .collect()
        })
        .collect();
    // has[li][j]: position j holds a document of length li; anchor[li][j]: the weight of that
    // length as the group's anchor (its gain is subtracted from the loaded line).
    let mut has: Vec<Vec<Option<Variable>>> = Vec::with_capacity(lengths.len());
    let mut anchor: Vec<Vec<Option<Variable>>> = Vec::with_capacity(lengths.len());
    for row in &x {
        has.push(row.iter().map(|v| v.map(|_| vars.add(variable().binary()))).collect());
        anchor.push(row.iter().map(|v| v.map(|_| vars.add(variable().min(0).max(1)))).collect());
    }
    // Proven to within 0.1% of optimal: twenty times tighter than the 2% the planner is held to.
    let mut problem = vars
        .minimise(t)
        .using(good_lp::solvers::highs::highs)
        .set_threads(1)
        .set_option("mip_rel_gap", EXACT_REL_GAP);
    problem.set_verbose(false);
    // Every GPU in at most one group (idle GPUs become single-GPU groups without documents).
    for gpu in 0..ctx.gpus {
        let covering: Expression = slots
            .iter()
            .filter(|(ci, first, _)| (*first..*first + ctx.candidates[*ci].size).contains(&gpu))
            .map(|&(_, _, y)| Expression::from(y))
            .sum();
        problem = problem.with(constraint!(covering <= 1.0));
    }
    for (li, &l) in lengths.iter().enumerate() {
        let placed: Expression = x[li].iter().flatten().map(|&v| Expression::from(v)).sum();
        problem = problem.with(constraint!(placed == count(l)));
    }
    for (j, &(ci, _, y)) in slots.iter().enumerate() {
        let c = &ctx.candidates[ci];
        let mut load = Expression::from(c.base_s * y);
        let mut tokens = Expression::from(0.0);
        let mut anchors = Expression::from(0.0);
        for (li, &l) in lengths.iter().enumerate() {
            let (Some(v), Some(h), Some(a)) = (x[li][j], has[li][j], anchor[li][j]) else { continue };
            problem = problem.with(constraint!(v <= count(l) * h));
            problem = problem.with(constraint!(h <= v));
            problem = problem.with(constraint!(h <= y));
            problem = problem.with(constraint!(a <= h));
            // The slowest of its documents alone.
            problem = problem.with(constraint!(c.alone_s(l) * h <= t));
            load += c.marginal_s(l) * v + c.anchor_gain_s(l) * a;
            anchors += a;
            tokens += f64::from(l) * v;
        }
        problem = problem.with(constraint!(anchors <= y));
        problem = problem.with(constraint!(load <= t));
        problem = problem.with(constraint!(c.floor_s * y <= t));
        problem = problem.with(constraint!(tokens <= c.capacity_tokens() as f64 * y));
    }
    let result = problem.solve();
    let status = MilpStatus::of(&result);
    let sol = match result {
        Ok(sol) if matches!(status, MilpStatus::Optimal | MilpStatus::GapLimit) => sol,
        _ => return Err(status.to_error("exact MILP")),
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut remaining: Vec<Vec<usize>> = lengths
        .iter()
        .map(|&l| (0..batch.docs.len()).filter(|&d| batch.docs[d].len == l).collect())
        .collect();
    for (j, &(ci, _, y)) in slots.iter().enumerate() {
        if sol.value(y) < 0.5 {
            continue;
        }
        let mut docs = Vec::new();
        for (li, v) in x.iter().map(|row| row[j]).enumerate() {
            let Some(v) = v else { continue };
            let k = sol.value(v).round().max(0.0) as usize;
            let take = k.min(remaining[li].len());
            docs.extend(remaining[li].drain(..take));
        }
        docs.sort_unstable();
        groups.push(Group { shape: ctx.candidates[ci].shape, docs });
    }
    if remaining.iter().any(|r| !r.is_empty()) {
        return Err(Error::Solver {
            what: "exact MILP: the solution leaves documents unplaced after rounding".into(),
            hint: "report this with the input that caused it".into(),
        });
    }
    fill_idle(&mut groups, ctx.gpus);
    Ok(ExactOptimum { groups, makespan_s: sol.value(t), status })
}

/// The surrogate makespan of groups (each priced by its (u, r) candidate's table): the exact
/// MILP's objective, for comparing other plans with its optimum on the same terms.
pub fn surrogate_makespan(ctx: &Ctx, batch: &Batch, groups: &[Group]) -> f64 {
    groups
        .iter()
        .filter(|g| !g.docs.is_empty())
        .map(|g| match ctx.candidate(&g.shape) {
            Some(c) => c.time_s(g.docs.iter().map(|&d| batch.docs[d].len)),
            None => f64::INFINITY,
        })
        .fold(0.0, f64::max)
}
