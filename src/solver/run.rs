//! Running every strategy over a trace's batches (in parallel, with progress on stderr), and the
//! rows written to batches.csv and groups.csv.

use super::baselines::{static_family, Family, MegatronDcp, StaticChoice};
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

/// A progress bar on stderr for `len` batches (hidden unless `progress`).
pub fn progress_bar(progress: bool, len: usize, what: &str) -> ProgressBar {
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
        let pb = progress_bar(opts.progress, batches.len(), s.name());
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
            Strategy::MegatronDcp => match MegatronDcp::new(ctx).tune(ctx, batches) {
                Some(choice) => {
                    pb.set_position(batches.len() as u64);
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
    let pb = progress_bar(opts.progress, batches.len(), "hsap");
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
