//! `hsap-tune` (the default command) and `hsap-tune tune`: plan every batch of a trace with hsap
//! and the baselines, print the comparison, and write the plans and per-batch data.

use super::{io_out, thousands, ClusterArgs, ModelArgs, TraceArgs, TrainArgs};
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::plan::{Plan, PLAN_FORMAT_VERSION};
use crate::report::data::{
    strategy_summaries, BatchRow, GroupRow, PlannerDetails, RunData, SolveMs, Summary, TraceInfo,
    SUMMARY_FORMAT_VERSION,
};
use crate::sim::{simulate_batch, SimOptions};
use crate::solver::{run_all, Ctx, FlexspOptions, HsapOptions, Priced, RunOptions, RunResult, Strategy};
use crate::trace::{make_batches, Batch, Trace};
use clap::Args;
use rayon::prelude::*;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Where a run is written when --out is not given.
pub const DEFAULT_OUT: &str = "hsap-run";

/// The longest document planned by default: FlexSP's 192K.
pub const DEFAULT_MAX_SEQ: u32 = 196_608;
/// FlexSP's HiGHS time limit per micro-batch by default. The paper's is 5 s; at 5 s the default
/// trace's 153 batches take over six minutes on two cores, so the default is 1 s and the output
/// says so. `--flexsp-time-limit 5` restores the paper's.
pub const DEFAULT_FLEXSP_TIME_LIMIT_S: f64 = 1.0;
/// The paper's FlexSP time limit, for the notice.
const FLEXSP_PAPER_TIME_LIMIT_S: f64 = 5.0;

#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Write the run here: plan.json, batches.csv, groups.csv, trace.json, summary.json and
    /// report/index.html (docs/report.md).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Also write each baseline's plan as plans/<strategy>.json (large on long traces: every
    /// rank's token ranges of every batch).
    #[arg(long)]
    pub baseline_plans: bool,
    /// Skip replaying every strategy's plans in the simulator (the report then shows the cost
    /// model's times only).
    #[arg(long)]
    pub no_simulate: bool,
    /// Skip drawing report/index.html (`hsap-tune report --from DIR` draws it later).
    #[arg(long)]
    pub no_report: bool,
    /// Measurements CSV (docs/measurements.md, e.g. from `hsap-tune validate`) to show predicted
    /// against measured in the report.
    #[arg(long, value_name = "CSV")]
    pub measurements: Option<PathBuf>,
    /// Seconds hsap's LP/MILP stage may spend on one batch (the greedy plan is always there;
    /// 0 skips the stage).
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub time_limit: f64,
    /// Rounds of hsap's integer type MILP per micro-batch when the LP relaxation finds room for
    /// improvement (0: the LP certificate only).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub milp_rounds: usize,
    /// Seconds FlexSP's MILP may spend on one micro-batch (the paper's is 5).
    #[arg(long, value_name = "S", default_value_t = DEFAULT_FLEXSP_TIME_LIMIT_S)]
    pub flexsp_time_limit: f64,
    /// Baselines to compare with, comma-separated, or `none`.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "static-ulysses,static-ring,static-usp,flexsp,megatron-dcp"
    )]
    pub baselines: Vec<String>,
    /// Plan only the first N batches.
    #[arg(long, value_name = "N")]
    pub limit_batches: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn tune(args: &TuneArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let started = std::time::Instant::now();
    if !(args.time_limit.is_finite() && args.time_limit >= 0.0) {
        return Err(Error::invalid(format!("--time-limit {} must be a non-negative number of seconds", args.time_limit), "try --time-limit 2"));
    }
    if !(args.flexsp_time_limit.is_finite() && args.flexsp_time_limit > 0.0) {
        return Err(Error::invalid(
            format!("--flexsp-time-limit {} must be a positive number of seconds", args.flexsp_time_limit),
            "the paper's is 5; leave flexsp out with --baselines",
        ));
    }
    let baselines = parse_baselines(&args.baselines)?;
    let trace = args.trace.load()?;
    super::inspect::warn_skipped(&trace, err)?;
    let mut spec = args.trace.batch_spec();
    let max_seq = spec.max_seq.unwrap_or(DEFAULT_MAX_SEQ);
    spec.max_seq = Some(max_seq);
    let mut batches = make_batches(&trace.lengths, &spec)?;
    if let Some(n) = args.limit_batches {
        batches.batches.truncate(n);
    }
    if batches.batches.is_empty() {
        return Err(Error::invalid(
            format!("{}: no batch to plan (every document is longer than --max-seq {max_seq}?)", trace.source.display()),
            "raise --max-seq or use --over-long split",
        ));
    }
    if batches.dropped > 0 {
        writeln!(
            err,
            "note: dropped {} documents ({} tokens) longer than --max-seq {}",
            thousands(batches.dropped as u64),
            thousands(batches.dropped_tokens),
            thousands(u64::from(max_seq))
        )
        .map_err(io_out)?;
    }
    let (model, cluster, train) = args.train.apply(args.model.load()?, args.cluster.load()?)?;
    let cm = CostModel::new(model, cluster, train)?;
    let max_len = batches.batches.iter().flat_map(|b| b.docs.iter().map(|d| d.len)).max().unwrap_or(1);
    let ctx = Ctx::new(cm, max_len)?;
    let holdable = ctx.candidates.iter().map(|c| c.max_tokens).max().unwrap_or(0);
    if max_len > holdable {
        return Err(Error::invalid(
            format!(
                "a {}-token document does not fit in memory on any SP group of {} x {} GPUs (the largest holds {} tokens)",
                thousands(u64::from(max_len)),
                ctx.cm.cluster.nodes,
                ctx.gpus_per_node,
                thousands(u64::from(holdable))
            ),
            "raise --nodes, lower --max-seq, or cut long documents with --over-long split",
        ));
    }
    if baselines.contains(&Strategy::Flexsp) && args.flexsp_time_limit < FLEXSP_PAPER_TIME_LIMIT_S {
        writeln!(
            err,
            "note: flexsp's MILP runs with a {} s time limit per micro-batch (the paper's is {} s; --flexsp-time-limit {} restores it)",
            args.flexsp_time_limit, FLEXSP_PAPER_TIME_LIMIT_S, FLEXSP_PAPER_TIME_LIMIT_S
        )
        .map_err(io_out)?;
    }
    let opts = RunOptions {
        hsap: HsapOptions {
            time_limit_s: args.time_limit,
            max_milp_solves: args.milp_rounds,
            use_milp: args.time_limit > 0.0,
            ..HsapOptions::default()
        },
        flexsp: FlexspOptions { time_limit_s: args.flexsp_time_limit, ..FlexspOptions::default() },
        baselines,
        progress: std::io::stderr().is_terminal(),
    };
    let result = run_all(&ctx, &batches.batches, &opts)?;
    let plan_wall_s = started.elapsed().as_secs_f64();
    let plans: Vec<Plan> = result
        .strategies
        .iter()
        .map(|s| plan_of(&ctx, &trace.source, &batches.batches, &s.name, &s.priced))
        .collect();
    let simulated = if args.no_simulate { None } else { Some(simulate_all(&ctx, &plans, opts.progress)) };
    let simulate_wall_s = started.elapsed().as_secs_f64() - plan_wall_s;
    let run = run_data(args, &trace, &batches, &ctx, &result, simulated.as_deref(), max_seq, plan_wall_s, simulate_wall_s)?;
    write_run(&args.out, &run, &plans, args.baseline_plans)?;
    let report = if args.no_report { None } else { Some(crate::report::render(&args.out)?) };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &run.summary).map_err(|e| io_out(e.into()))?;
        writeln!(out).map_err(io_out)?;
    } else {
        write_table(&run.summary, out).map_err(io_out)?;
    }
    writeln!(err, "wrote {}", args.out.display()).map_err(io_out)?;
    if let Some(r) = report {
        for w in &r.warnings {
            writeln!(err, "warning: {w}").map_err(io_out)?;
        }
        writeln!(err, "report: {}", r.index_html.display()).map_err(io_out)?;
    }
    Ok(())
}

/// The plan.json form of one strategy's plans.
fn plan_of(ctx: &Ctx, trace: &Path, batches: &[Batch], name: &str, priced: &[Priced]) -> Plan {
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        strategy: name.to_string(),
        trace: trace.display().to_string(),
        model: ctx.cm.model.clone(),
        cluster: ctx.cm.cluster.clone(),
        train: ctx.cm.train.clone(),
        memory_limit_bytes: ctx.limit_bytes,
        batches: batches.iter().zip(priced).map(|(b, p)| ctx.to_batch_plan(b, p)).collect(),
    }
}

/// Every strategy's every batch replayed in the simulator: simulated step times per strategy.
fn simulate_all(ctx: &Ctx, plans: &[Plan], progress: bool) -> Vec<Vec<f64>> {
    let total = plans.iter().map(|p| p.batches.len()).sum::<usize>();
    let pb = crate::solver::progress_bar(progress, total, "simulate");
    let steps = plans
        .iter()
        .map(|plan| {
            plan.batches
                .par_iter()
                .map(|b| {
                    let (sim, _) = simulate_batch(&ctx.cm, b, &SimOptions::default());
                    pb.inc(1);
                    sim.step_s
                })
                .collect()
        })
        .collect();
    pb.finish_and_clear();
    steps
}

#[allow(clippy::too_many_arguments)]
fn run_data(
    args: &TuneArgs,
    trace: &Trace,
    batches: &crate::trace::Batches,
    ctx: &Ctx,
    result: &RunResult,
    simulated: Option<&[Vec<f64>]>,
    max_seq: u32,
    plan_wall_s: f64,
    simulate_wall_s: f64,
) -> Result<RunData> {
    let mut batch_rows = Vec::new();
    let mut group_rows = Vec::new();
    for (k, s) in result.strategies.iter().enumerate() {
        for (i, (b, p)) in batches.batches.iter().zip(&s.priced).enumerate() {
            let sim = simulated.map(|steps| steps[k][i]);
            batch_rows.push(batch_row(ctx, b, &s.name, p, sim));
            group_rows.extend(group_rows_of(ctx, b, &s.name, p));
        }
    }
    let (mut strategies, best_static) = strategy_summaries(&batch_rows);
    let hsap_steps: Vec<f64> = result.strategies[0].priced.iter().map(|p| p.step_s).collect();
    for st in &mut strategies {
        let Some(r) = result.strategies.iter().find(|r| r.name == st.name) else { continue };
        st.detail = r.detail.clone();
        st.hsap_speedup_per_batch = Some(
            r.priced.iter().zip(&hsap_steps).map(|(p, h)| p.step_s / h).sum::<f64>() / hsap_steps.len().max(1) as f64,
        );
        st.solve_ms = (!r.solve_ms.is_empty()).then(|| SolveMs::of(&r.solve_ms));
    }
    let hsap = &result.strategies[0];
    let summary = Summary {
        format_version: SUMMARY_FORMAT_VERSION,
        trace: trace.source.display().to_string(),
        model: ctx.cm.model.name.clone(),
        cluster: ctx.cm.cluster.name.clone(),
        nodes: ctx.cm.cluster.nodes,
        gpus_per_node: ctx.gpus_per_node,
        global_batch: args.trace.batch_tokens.is_none().then_some(args.trace.global_batch),
        batch_tokens: args.trace.batch_tokens,
        max_seq: Some(max_seq),
        batches: batches.batches.len(),
        strategies,
        best_static: best_static.unwrap_or_default(),
        solve_ms: SolveMs::of(&hsap.solve_ms),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        planner: PlannerDetails {
            documents: batches.batches.iter().map(|b| b.docs.len()).sum(),
            dropped: batches.dropped,
            memory_limit_bytes: ctx.limit_bytes,
            hsap_sources: counts(hsap.priced.iter().map(|p| p.source.clone())),
            milp_status: result
                .strategies
                .iter()
                .map(|s| (s.name.clone(), counts(s.priced.iter().filter_map(|p| p.milp.as_ref()).map(|m| m.name().to_string()))))
                .filter(|(_, c)| !c.is_empty())
                .collect(),
            skipped: result.skipped.clone(),
            hsap_time_limit_s: args.time_limit,
            flexsp_time_limit_s: args.flexsp_time_limit,
            plan_wall_s,
            simulate_wall_s,
        },
    };
    let measurements = match &args.measurements {
        Some(path) => crate::calibrate::measurements::read(path)?,
        None => Vec::new(),
    };
    Ok(RunData {
        summary,
        trace: TraceInfo {
            source: trace.source.display().to_string(),
            format: trace.format,
            skipped_empty: trace.skipped_empty,
            stats: trace.stats(Some(max_seq)),
        },
        batches: batch_rows,
        groups: group_rows,
        measurements,
        fit_points: crate::report::data::fit_points_of(&ctx.cm.cluster),
        warnings: Vec::new(),
    })
}

/// How often each value occurs, sorted by value.
fn counts(values: impl Iterator<Item = String>) -> Vec<(String, usize)> {
    let mut map = std::collections::BTreeMap::new();
    for v in values {
        *map.entry(v).or_insert(0) += 1;
    }
    map.into_iter().collect()
}

/// One row of batches.csv. The breakdown averages over GPUs and adds up to the step.
fn batch_row(ctx: &Ctx, batch: &Batch, strategy: &str, p: &Priced, simulated_step_s: Option<f64>) -> BatchRow {
    BatchRow {
        batch: batch.index,
        strategy: strategy.to_string(),
        documents: batch.docs.len(),
        tokens: batch.tokens(),
        predicted_step_s: p.step_s,
        simulated_step_s,
        compute_s: p.compute_s,
        exposed_comm_s: p.exposed_comm_s,
        idle_s: p.idle_s,
        grad_sync_s: p.grad_sync_exposed_s,
        peak_memory_bytes: p.peak_memory_bytes,
        memory_limit_bytes: ctx.limit_bytes,
        microbatches: p.micro.len() as u32,
        groups: p.micro.iter().map(|m| m.groups.len() as u32).sum(),
        source: p.source.clone(),
        milp_status: p.milp.as_ref().map_or(String::new(), |s| s.name().to_string()),
    }
}

/// The rows of groups.csv for one batch under one strategy.
fn group_rows_of(ctx: &Ctx, batch: &Batch, strategy: &str, p: &Priced) -> Vec<GroupRow> {
    let mut rows = Vec::new();
    for (m, micro) in p.micro.iter().enumerate() {
        for g in &micro.groups {
            let mut nodes: Vec<u32> = g.ranks.iter().map(|r| r / ctx.gpus_per_node).collect();
            nodes.dedup();
            rows.push(GroupRow {
                batch: batch.index,
                strategy: strategy.to_string(),
                microbatch: m as u32,
                size: g.shape.size(),
                ulysses: g.shape.ulysses,
                ring: g.shape.ring,
                scheme: g.shape.scheme,
                nodes: nodes.len() as u32,
                documents: g.docs.len(),
                tokens: g.docs.iter().map(|&d| u64::from(batch.docs[d].len)).sum(),
                predicted_s: g.cost.time_s,
            });
        }
    }
    rows
}

/// Writes the run directory: its data files, hsap's plan, and the baselines' plans if asked.
fn write_run(dir: &Path, run: &RunData, plans: &[Plan], baseline_plans: bool) -> Result<()> {
    run.write(dir)?;
    for plan in plans {
        let hsap = plan.strategy == crate::report::data::HSAP;
        if !hsap && !baseline_plans {
            continue;
        }
        let json = serde_json::to_vec(plan).map_err(|e| Error::invalid(format!("serialising the plan: {e}"), "this is a bug"))?;
        let path = if hsap { dir.join("plan.json") } else { dir.join("plans").join(format!("{}.json", plan.strategy)) };
        write_atomic(&path, &json)?;
    }
    Ok(())
}

fn parse_baselines(names: &[String]) -> Result<Vec<Strategy>> {
    let names: Vec<&str> = names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if names == ["none"] {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for n in names {
        let s = Strategy::from_name(n)?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

fn write_table(s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    let d = &s.planner;
    let batch = match (s.global_batch, s.batch_tokens) {
        (_, Some(t)) => format!("{} tokens", thousands(t)),
        (Some(n), None) => format!("{n} documents"),
        (None, None) => "?".into(),
    };
    writeln!(
        out,
        "trace     {}: {} documents in {} batches of {} (max seq {}, {} dropped)",
        s.trace,
        thousands(d.documents as u64),
        thousands(s.batches as u64),
        batch,
        thousands(u64::from(s.max_seq.unwrap_or(0))),
        thousands(d.dropped as u64)
    )?;
    writeln!(
        out,
        "setup     {} on {} x {} nodes ({} GPUs), memory limit {:.1} GiB per GPU",
        s.model,
        s.cluster,
        s.nodes,
        s.gpus(),
        d.memory_limit_bytes / crate::cluster::GIB
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<18} {:>12} {:>14} {:>10} {:>16} {:>14}",
        "strategy", "configuration", "total (s)", "mean step (s)", "speedup", "hsap's per batch", "simulated (s)"
    )?;
    for st in &s.strategies {
        let speedup = st.speedup_vs_best_static.map_or("-".into(), |x| format!("{x:.3}x"));
        let per_batch = st.hsap_speedup_per_batch.map_or("-".into(), |x| format!("{x:.3}x"));
        let simulated = st.simulated_total_s.map_or("-".into(), |x| format!("{x:.2}"));
        writeln!(
            out,
            "{:<16} {:<18} {:>12.2} {:>14.4} {:>10} {:>16} {:>14}",
            st.name, st.detail, st.total_time_s, st.mean_step_s, speedup, per_batch, simulated
        )?;
    }
    for (name, why) in &d.skipped {
        writeln!(out, "{name:<16} skipped: {why}")?;
    }
    writeln!(out)?;
    if s.best_static.is_empty() {
        writeln!(out, "no static plan holds every document: speedups are not defined")?;
    } else {
        writeln!(
            out,
            "speedup: the best static plan's ({}) total over each total; hsap's per batch: the mean over batches of each strategy's step over hsap's",
            s.best_static
        )?;
    }
    writeln!(
        out,
        "total: the cost model's step times (groups in isolation); simulated: the same plans replayed with groups sharing the network"
    )?;
    writeln!(
        out,
        "hsap solve time per batch: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.solve_ms.median, s.solve_ms.p99, s.solve_ms.max
    )?;
    let sources: Vec<String> = d.hsap_sources.iter().map(|(n, c)| format!("{n} {c}")).collect();
    writeln!(out, "hsap plans by source: {}", sources.join(", "))?;
    for (name, counts) in &d.milp_status {
        let c: Vec<String> = counts.iter().map(|(n, c)| format!("{n} {c}")).collect();
        writeln!(out, "{name} MILP status per batch: {}", c.join(", "))?;
    }
    writeln!(out, "planned in {:.1} s, simulated in {:.1} s", d.plan_wall_s, d.simulate_wall_s)
}
