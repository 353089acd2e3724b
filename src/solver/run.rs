//! Running every strategy over a trace's batches (in parallel, with progress on stderr), and the
//! rows written to batches.csv and groups.csv.

use super::baselines::{megatron_dcp, static_family, Family, StaticChoice};
use super::flexsp::{Flexsp, FlexspOptions};
use super::hsap::{hsap, HsapOptions};
use super::{Ctx, Priced};
use crate::error::{Error, Result};
use crate::trace::Batch;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Strategy {
    Hsap,
    Static(Family),
    Flexsp,
    MegatronDcp,
}

impl Strategy {
    pub const BASELINES: [Strategy; 5] = [
        Strategy::Static(Family::Ulysses),
        Strategy::Static(Family::Ring),
        Strategy::Static(Family::Usp),
        Strategy::Flexsp,
        Strategy::MegatronDcp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Hsap => "hsap",
            Strategy::Static(f) => f.name(),
            Strategy::Flexsp => "flexsp",
            Strategy::MegatronDcp => "megatron-dcp",
        }
    }

    pub fn from_name(name: &str) -> Result<Strategy> {
        Strategy::BASELINES
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| Error::Unknown {
                kind: "baseline",
                name: name.to_string(),
                known: Strategy::BASELINES.iter().map(|s| s.name().to_string()).collect(),
                hint: "list baselines separated by commas, or 'none'".into(),
            })
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub hsap: HsapOptions,
    pub flexsp: FlexspOptions,
    /// Baselines to run (hsap always runs).
    pub baselines: Vec<Strategy>,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
}

/// One strategy over the whole trace.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub name: String,
    /// What the strategy settled on, for the record (a static family's (u, r)).
    pub detail: String,
    pub priced: Vec<Priced>,
    /// Wall time of each batch's solve, milliseconds.
    pub solve_ms: Vec<f64>,
}

impl StrategyResult {
    pub fn total_time_s(&self) -> f64 {
        self.priced.iter().map(|p| p.step_s).sum()
    }

    pub fn mean_step_s(&self) -> f64 {
        self.total_time_s() / self.priced.len().max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// hsap first, then the baselines that ran, in the order asked.
    pub strategies: Vec<StrategyResult>,
    pub static_choices: Vec<StaticChoice>,
    /// Baselines that could not plan the trace, with the reason.
    pub skipped: Vec<(String, String)>,
}

fn bar(progress: bool, len: usize, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} batches, {elapsed} (eta {eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Plans every batch with hsap and the chosen baselines. hsap sees each batch's baseline plans as
/// incumbents, so on every batch it is at least as good as each of them.
pub fn run_all(ctx: &Ctx, batches: &[Batch], opts: &RunOptions) -> Result<RunResult> {
    let mut strategies = Vec::new();
    let mut static_choices = Vec::new();
    let mut skipped = Vec::new();
    let flexsp = opts
        .baselines
        .contains(&Strategy::Flexsp)
        .then(|| Flexsp::new(ctx, opts.flexsp.clone()));
    for &s in &opts.baselines {
        let pb = bar(opts.progress, batches.len(), s.name());
        let timed = |f: &dyn Fn(&Batch) -> Option<super::Solution>, b: &Batch| {
            let t0 = Instant::now();
            let sol = f(b);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            pb.inc(1);
            sol.map(|s| (s, ms))
        };
        let (detail, sols): (String, Option<Vec<(super::Solution, f64)>>) = match s {
            Strategy::Static(family) => match static_family(ctx, family, batches) {
                Some((choice, sols)) => {
                    let detail = format!("u{}xr{}", choice.shape.ulysses, choice.shape.ring);
                    static_choices.push(choice);
                    pb.set_position(batches.len() as u64);
                    (detail, Some(sols.into_iter().map(|s| (s, f64::NAN)).collect()))
                }
                None => (String::new(), None),
            },
            Strategy::MegatronDcp => (String::new(), batches.par_iter().map(|b| timed(&|b| megatron_dcp(ctx, b), b)).collect()),
            Strategy::Flexsp => {
                let f = flexsp.as_ref().ok_or_else(|| Error::invalid("flexsp was not prepared", "this is a bug"))?;
                let detail = format!("time limit {} s", f.opts.time_limit_s);
                (detail, batches.par_iter().map(|b| timed(&|b| f.solve(ctx, b), b)).collect())
            }
            Strategy::Hsap => continue,
        };
        pb.finish_and_clear();
        let Some(sols) = sols else {
            skipped.push((s.name().to_string(), "no configuration holds the longest document in memory".to_string()));
            continue;
        };
        let priced: Vec<Priced> = batches
            .par_iter()
            .zip(&sols)
            .map(|(b, (sol, _))| {
                let mut p = ctx.finish(b, sol)?;
                // Keep a more specific source (e.g. flexsp-fallback); name the rest by strategy.
                if !sol.source.starts_with(s.name()) {
                    p.source = s.name().to_string();
                }
                Ok(p)
            })
            .collect::<Result<_>>()?;
        strategies.push(StrategyResult {
            name: s.name().to_string(),
            detail,
            priced,
            solve_ms: sols.iter().map(|s| s.1).filter(|m| m.is_finite()).collect(),
        });
    }
    let pb = bar(opts.progress, batches.len(), "hsap");
    let planned: Vec<(Priced, f64)> = batches
        .par_iter()
        .enumerate()
        .map(|(i, b)| {
            let incumbents: Vec<Priced> = strategies.iter().map(|s| s.priced[i].clone()).collect();
            let t0 = Instant::now();
            let p = hsap(ctx, b, &opts.hsap, &incumbents)?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            pb.inc(1);
            Ok((p, ms))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let (priced, solve_ms): (Vec<Priced>, Vec<f64>) = planned.into_iter().unzip();
    strategies.insert(
        0,
        StrategyResult { name: "hsap".into(), detail: String::new(), priced, solve_ms },
    );
    Ok(RunResult { strategies, static_choices, skipped })
}

/// One row of batches.csv: one batch under one strategy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchRow {
    pub batch: usize,
    pub strategy: String,
    pub documents: usize,
    pub tokens: u64,
    pub step_s: f64,
    pub compute_s: f64,
    pub exposed_comm_s: f64,
    pub idle_s: f64,
    pub grad_sync_exposed_s: f64,
    pub peak_memory_bytes: f64,
    pub memory_limit_bytes: f64,
    pub microbatches: usize,
    pub groups: usize,
    /// Where the plan came from (hsap: `milp`, `greedy` or `incumbent:<baseline>`).
    pub source: String,
    /// The MILP's status when one ran (`optimal`, `time_limit`, `infeasible`, ...).
    pub milp_status: String,
}

/// One row of groups.csv: one SP group of one micro-batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    pub batch: usize,
    pub strategy: String,
    pub microbatch: usize,
    pub group_size: u32,
    pub ulysses: u32,
    pub ring: u32,
    pub scheme: String,
    pub nodes_spanned: u32,
    pub documents: usize,
    pub tokens: u64,
    pub predicted_time_s: f64,
    pub memory_bytes: f64,
}

impl BatchRow {
    pub fn of(ctx: &Ctx, batch: &Batch, strategy: &str, p: &Priced) -> BatchRow {
        BatchRow {
            batch: batch.index,
            strategy: strategy.to_string(),
            documents: batch.docs.len(),
            tokens: batch.tokens(),
            step_s: p.step_s,
            compute_s: p.compute_s,
            exposed_comm_s: p.exposed_comm_s,
            idle_s: p.idle_s,
            grad_sync_exposed_s: p.grad_sync_exposed_s,
            peak_memory_bytes: p.peak_memory_bytes,
            memory_limit_bytes: ctx.limit_bytes,
            microbatches: p.micro.len(),
            groups: p.micro.iter().map(|m| m.groups.len()).sum(),
            source: p.source.clone(),
            milp_status: p.milp.as_ref().map_or(String::new(), |s| s.name().to_string()),
        }
    }
}

impl GroupRow {
    pub fn of(ctx: &Ctx, batch: &Batch, strategy: &str, p: &Priced) -> Vec<GroupRow> {
        let mut rows = Vec::new();
        for (m, micro) in p.micro.iter().enumerate() {
            for g in &micro.groups {
                let mut nodes: Vec<u32> = g.ranks.iter().map(|r| r / ctx.gpus_per_node).collect();
                nodes.dedup();
                rows.push(GroupRow {
                    batch: batch.index,
                    strategy: strategy.to_string(),
                    microbatch: m,
                    group_size: g.shape.size(),
                    ulysses: g.shape.ulysses,
                    ring: g.shape.ring,
                    scheme: g.shape.scheme.name().to_string(),
                    nodes_spanned: nodes.len() as u32,
                    documents: g.docs.len(),
                    tokens: g.docs.iter().map(|&d| u64::from(batch.docs[d].len)).sum(),
                    predicted_time_s: g.cost.time_s,
                    memory_bytes: g.cost.memory_bytes,
                });
            }
        }
        rows
    }
}
