//! Running every strategy over a trace's batches (in parallel, with progress on stderr), and the
//! rows written to batches.csv and groups.csv.

use super::baselines::{static_family, Family, MegatronDcp, StaticChoice};
use super::flexsp::{Flexsp, FlexspOptions};
use super::hsap::{hsap, HsapOptions};
use super::{Ctx, Priced};
use crate::error::{Error, Result};
use crate::trace::Batch;
use crate::progress::{Mode, Progress};
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
    /// How progress is shown on stderr.
    pub progress: Mode,
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

/// Plans every batch with hsap and the chosen baselines. hsap sees each batch's baseline plans as
/// incumbents, so on every batch it is at least as good as each of them.
pub fn run_all(ctx: &Ctx, batches: &[Batch], opts: &RunOptions) -> Result<RunResult> {
    run_all_with(ctx, batches, opts, &mut |_, _| Ok(()))
}

/// Batches hsap plans in parallel before handing them on in order: a few per thread, so that
/// plans leave the planner (and can be written) as batches finish.
const BATCHES_PER_ROUND: usize = 256;

/// [`run_all`], handing every hsap plan to `planned` in batch order as soon as its round of
/// [`BATCHES_PER_ROUND`] batches is planned.
pub fn run_all_with(
    ctx: &Ctx,
    batches: &[Batch],
    opts: &RunOptions,
    planned: &mut dyn FnMut(&Batch, &Priced) -> Result<()>,
) -> Result<RunResult> {
    let mut strategies = Vec::new();
    let mut static_choices = Vec::new();
    let mut skipped = Vec::new();
    let flexsp = (opts.baselines.contains(&Strategy::Flexsp) && ctx.pods == 1).then(|| Flexsp::new(ctx, opts.flexsp.clone()));
    for &s in &opts.baselines {
        if ctx.pods > 1 {
            let why = format!(
                "the cluster is planned as {} pods of {} nodes; the baselines plan clusters of at most {} nodes whole",
                ctx.pods,
                ctx.gpus / ctx.cm.cluster.gpus_per_node,
                super::MAX_POD_NODES
            );
            skipped.push((s.name().to_string(), why));
            continue;
        }
        if ctx.cm.model.has_linear_layers() {
            let why = format!(
                "{} has {} linear-attention layers, which only the LASP schemes split (hsap plans them)",
                ctx.cm.model.name,
                ctx.cm.model.layer_counts().1
            );
            skipped.push((s.name().to_string(), why));
            continue;
        }
        let pb = Progress::stderr(opts.progress, &format!("planning {}", s.name()), batches.len() as u64, "batches");
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
                    pb.inc(batches.len() as u64);
                    (detail, Some(sols.into_iter().map(|s| (s, f64::NAN)).collect()))
                }
                None => (String::new(), None),
            },
            Strategy::MegatronDcp => match MegatronDcp::new(ctx).tune(ctx, batches) {
                Some(choice) => {
                    pb.inc(batches.len() as u64);
                    let detail = format!("{} tokens/rank", choice.max_tokens_per_rank);
                    (detail, Some(choice.solutions.into_iter().map(|s| (s, f64::NAN)).collect()))
                }
                None => (String::new(), None),
            },
            Strategy::Flexsp => {
                let f = flexsp.as_ref().ok_or_else(|| Error::internal("flexsp was not prepared"))?;
                let detail = format!("time limit {} s", f.opts.time_limit_s);
                (detail, batches.par_iter().map(|b| timed(&|b| f.solve(ctx, b), b)).collect())
            }
            Strategy::Hsap => continue,
        };
        pb.finish();
        let Some(sols) = sols else {
            skipped.push((s.name().to_string(), "no configuration holds the longest document in memory".to_string()));
            continue;
        };
        let priced: Vec<Priced> = batches
            .par_iter()
            .zip(&sols)
            .map(|(b, (sol, _))| {
                let mut p = ctx.finish(b, sol)?;
                // Keep a more specific source (e.g. flexsp-uniform); name the rest by strategy.
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
    let pb = Progress::stderr(opts.progress, "planning hsap", batches.len() as u64, "batches");
    let (mut priced, mut solve_ms) = (Vec::with_capacity(batches.len()), Vec::with_capacity(batches.len()));
    for (round, chunk) in batches.chunks(BATCHES_PER_ROUND).enumerate() {
        let first = round * BATCHES_PER_ROUND;
        let solved: Vec<(Priced, f64)> = chunk
            .par_iter()
            .enumerate()
            .map(|(j, b)| {
                let incumbents: Vec<Priced> = strategies.iter().map(|s| s.priced[first + j].clone()).collect();
                let t0 = Instant::now();
                let p = hsap(ctx, b, &opts.hsap, &incumbents)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                pb.inc(1);
                Ok((p, ms))
            })
            .collect::<Result<_>>()?;
        for (b, (p, ms)) in chunk.iter().zip(solved) {
            planned(b, &p)?;
            priced.push(p);
            solve_ms.push(ms);
        }
    }
    pb.finish();
    strategies.insert(
        0,
        StrategyResult { name: "hsap".into(), detail: String::new(), priced, solve_ms },
    );
    Ok(RunResult { strategies, static_choices, skipped })
}
