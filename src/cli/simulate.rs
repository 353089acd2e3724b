//! `hsap-tune simulate`: replays a plan's batches with the groups of each micro-batch sharing
//! the network, and writes a Perfetto timeline of one batch.

use super::io_out;
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::sim::{simulate_batch, BatchSim, SimOptions};
use crate::stack::Stack;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// A plan written by the planner: DIR/plan.jsonl (or its DIR/plan-header.json), DIR/plan.json,
    /// or a baseline's DIR/plans/<strategy>.jsonl or .json.
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Simulate only this batch (default: every batch, summarised).
    #[arg(long, value_name = "K")]
    pub batch: Option<usize>,
    /// Write the batch's Chrome/Perfetto trace-event timeline here (needs --batch).
    #[arg(long, value_name = "FILE", requires = "batch")]
    pub timeline: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Replay with this software stack instead of the plan's: a preset of models/stacks/ or a
    /// stack TOML.
    #[arg(long, value_name = "NAME|FILE")]
    pub stack: Option<String>,
}

pub fn simulate(args: &SimulateArgs, out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    // One batch of a streamed plan is read without holding the others.
    let plan = match args.batch {
        Some(k) => Plan::read_batch(&args.plan, k)?,
        None => Plan::read(&args.plan)?,
    };
    let mut train = plan.train.clone();
    if let Some(stack) = &args.stack {
        train.stack = Stack::resolve(stack)?;
    }
    let cm = CostModel::new(plan.model.clone(), plan.cluster.clone(), train)?;
    let options = SimOptions {
        timeline: args.timeline.is_some(),
    };
    let batches: Vec<_> = match args.batch {
        Some(k) => vec![plan.batch(k)?],
        None => plan.batches.iter().collect(),
    };
    if batches.is_empty() {
        return Err(Error::input(&args.plan, 0, "the plan has no batches", "plan a non-empty trace"));
    }
    let mut sims = Vec::with_capacity(batches.len());
    for b in batches {
        let (sim, timeline) = simulate_batch(&cm, b, &options);
        if let (Some(path), Some(t)) = (&args.timeline, timeline) {
            let json = serde_json::to_vec(&t).map_err(|e| Error::internal(format!("cannot encode the timeline: {e}")))?;
            crate::output::write_atomic(path, &json)?;
        }
        sims.push(sim);
    }
    if args.json {
        let value = if sims.len() == 1 { serde_json::to_value(&sims[0]) } else { serde_json::to_value(&sims) };
        let value = value.map_err(|e| Error::internal(format!("cannot encode the simulation: {e}")))?;
        writeln!(out, "{value:#}").map_err(io_out)?;
        return Ok(());
    }
    match sims.as_slice() {
        [one] => write_batch(&plan, one, out).map_err(io_out)?,
        many => write_summary(many, out).map_err(io_out)?,
    }
    if let Some(path) = &args.timeline {
        writeln!(out, "timeline: {} (open in https://ui.perfetto.dev or chrome://tracing)", path.display()).map_err(io_out)?;
    }
    Ok(())
}

fn write_batch(plan: &Plan, s: &BatchSim, out: &mut dyn Write) -> std::io::Result<()> {
    let shared = 100.0 * (s.step_s / s.isolated_step_s - 1.0);
    writeln!(
        out,
        "batch {}: simulated step {:.4} s; cost model (groups in isolation) {:.4} s ({shared:+.2}% from shared links)",
        s.batch, s.step_s, s.isolated_step_s
    )?;
    writeln!(out, "ideal step {:.4} s (all compute spread over all GPUs, no communication): ratio {:.3}", s.ideal_step_s, s.ratio_to_ideal)?;
    writeln!(out, "{:<12} {:>10} {:>10}  straggler", "micro-batch", "time (s)", "isolated")?;
    let batch = plan.batch(s.batch).ok();
    for (k, m) in s.microbatches.iter().enumerate() {
        let straggler = batch
            .and_then(|b| b.microbatches.get(k))
            .and_then(|mb| mb.groups.get(m.straggler))
            .map(|g| format!("group {} ({} u{}xr{}, GPUs {}-{})", m.straggler, g.scheme.name(), g.ulysses, g.ring, g.ranks[0], g.ranks[g.ranks.len() - 1]))
            .unwrap_or_else(|| format!("group {}", m.straggler));
        writeln!(out, "{k:<12} {:>10.4} {:>10.4}  {straggler}", m.time_s, m.isolated_time_s)?;
    }
    writeln!(out, "gradient sync {:.4} s (exposed {:.4} s); optimizer step {:.4} s", s.grad_sync_s, s.grad_sync_exposed_s, s.optimizer_s)?;
    let exposed: Vec<String> = s.exposed_comm_s.iter().map(|(c, t)| format!("{} {:.4} s", c.name(), t)).collect();
    writeln!(out, "exposed communication per GPU: {}", if exposed.is_empty() { "none".into() } else { exposed.join(", ") })?;
    let (min, max) = s.gpu_busy_s.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &b| (lo.min(b), hi.max(b)));
    let mean = s.gpu_busy_s.iter().sum::<f64>() / s.gpu_busy_s.len() as f64;
    writeln!(out, "GPU busy: min {min:.4} s, mean {mean:.4} s, max {max:.4} s of {:.4} s", s.step_s)
}

fn write_summary(sims: &[BatchSim], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{:>6} {:>12} {:>12} {:>9} {:>9}", "batch", "simulated s", "isolated s", "shared %", "vs ideal")?;
    for s in sims {
        writeln!(
            out,
            "{:>6} {:>12.4} {:>12.4} {:>+9.2} {:>9.3}",
            s.batch,
            s.step_s,
            s.isolated_step_s,
            100.0 * (s.step_s / s.isolated_step_s - 1.0),
            s.ratio_to_ideal
        )?;
    }
    let total: f64 = sims.iter().map(|s| s.step_s).sum();
    let isolated: f64 = sims.iter().map(|s| s.isolated_step_s).sum();
    writeln!(out, "total {total:.3} s simulated, {isolated:.3} s by the cost model ({:+.2}%)", 100.0 * (total / isolated - 1.0))
}
