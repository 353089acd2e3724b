//! `hsap-tune` (the default command) and `hsap-tune tune`: plan every batch of a trace with hsap
//! and the baselines, print the comparison, and write the plans and per-batch data.

use super::{io_out, thousands, ClusterArgs, ModelArgs, TraceArgs};
use crate::cost::{CostModel, TrainConfig};
use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::plan::{Plan, PLAN_FORMAT_VERSION};
use crate::solver::{
    run_all, BatchRow, Ctx, FlexspOptions, GroupRow, HsapOptions, RunOptions, RunResult, Strategy,
};
use crate::trace::{make_batches, Batch};
use clap::Args;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

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
    /// Write plan.json, plans/<strategy>.json, batches.csv, groups.csv and summary.json here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
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

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; zeros for no samples.
    pub fn of(samples: &[f64]) -> Percentiles {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Percentiles { median: 0.0, p99: 0.0, max: 0.0 };
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles { median: at(50.0), p99: at(99.0), max: v[v.len() - 1] }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StrategySummary {
    pub name: String,
    /// The configuration a strategy settled on (a static family's u x r), or its options.
    pub detail: String,
    pub total_time_s: f64,
    pub mean_step_s: f64,
    /// Best static total over this total; null when no static plan holds the trace.
    pub speedup_vs_best_static: Option<f64>,
    /// Mean over batches of this strategy's step over hsap's on the same batch (1 for hsap).
    pub hsap_speedup_per_batch: f64,
    /// Solve time per batch (ms), for the strategies that solve batch by batch.
    pub solve_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trace: String,
    pub model: String,
    pub cluster: String,
    pub nodes: u32,
    pub gpus: u32,
    pub global_batch: String,
    pub max_seq: u32,
    pub documents: usize,
    pub dropped: usize,
    pub batches: usize,
    pub memory_limit_bytes: f64,
    pub strategies: Vec<StrategySummary>,
    pub best_static: Option<String>,
    /// hsap's solve time per batch, milliseconds.
    pub solve_ms: Percentiles,
    /// How many of hsap's batch plans came from each source (milp, greedy, incumbent:<name>).
    pub hsap_sources: Vec<(String, usize)>,
    /// MILP statuses over the batches, per strategy that ran one.
    pub milp_status: Vec<(String, Vec<(String, usize)>)>,
    pub skipped: Vec<(String, String)>,
    pub flexsp_time_limit_s: f64,
    pub hsap_time_limit_s: f64,
    /// Seconds spent planning (all strategies, excluding writing files).
    pub wall_s: f64,
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
    let model = args.model.load()?;
    let cluster = args.cluster.load()?;
    let cm = CostModel::new(model, cluster, TrainConfig::default())?;
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
    let summary = summarize(args, &trace, &batches, &ctx, &result, max_seq, started.elapsed().as_secs_f64());
    if let Some(dir) = &args.out {
        write_outputs(dir, &ctx, &trace.source, &batches.batches, &result, &summary)?;
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &summary).map_err(|e| io_out(e.into()))?;
        writeln!(out).map_err(io_out)?;
    } else {
        write_table(&summary, out).map_err(io_out)?;
    }
    if let Some(dir) = &args.out {
        writeln!(err, "wrote {}", dir.display()).map_err(io_out)?;
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

fn summarize(
    args: &TuneArgs,
    trace: &crate::trace::Trace,
    batches: &crate::trace::Batches,
    ctx: &Ctx,
    result: &RunResult,
    max_seq: u32,
    wall_s: f64,
) -> Summary {
    let best_static = result
        .strategies
        .iter()
        .filter(|s| s.name.starts_with("static-"))
        .min_by(|a, b| a.total_time_s().total_cmp(&b.total_time_s()));
    let best_total = best_static.map(|s| s.total_time_s());
    let hsap_steps: Vec<f64> = result.strategies[0].priced.iter().map(|p| p.step_s).collect();
    let strategies = result
        .strategies
        .iter()
        .map(|s| StrategySummary {
            hsap_speedup_per_batch: s.priced.iter().zip(&hsap_steps).map(|(p, h)| p.step_s / h).sum::<f64>()
                / hsap_steps.len().max(1) as f64,
            name: s.name.clone(),
            detail: s.detail.clone(),
            total_time_s: s.total_time_s(),
            mean_step_s: s.mean_step_s(),
            speedup_vs_best_static: best_total.map(|b| b / s.total_time_s()),
            solve_ms: (!s.solve_ms.is_empty()).then(|| Percentiles::of(&s.solve_ms)),
        })
        .collect();
    let hsap = &result.strategies[0];
    let mut hsap_sources: Vec<(String, usize)> = Vec::new();
    for p in &hsap.priced {
        match hsap_sources.iter_mut().find(|(s, _)| *s == p.source) {
            Some(e) => e.1 += 1,
            None => hsap_sources.push((p.source.clone(), 1)),
        }
    }
    hsap_sources.sort();
    let milp_status = result
        .strategies
        .iter()
        .filter_map(|s| {
            let mut counts: Vec<(String, usize)> = Vec::new();
            for st in s.priced.iter().filter_map(|p| p.milp.as_ref()) {
                match counts.iter_mut().find(|(n, _)| n == st.name()) {
                    Some(e) => e.1 += 1,
                    None => counts.push((st.name().to_string(), 1)),
                }
            }
            counts.sort();
            (!counts.is_empty()).then(|| (s.name.clone(), counts))
        })
        .collect();
    let global_batch = match args.trace.batch_tokens {
        Some(t) => format!("{t} tokens"),
        None => format!("{} documents", args.trace.global_batch),
    };
    Summary {
        trace: trace.source.display().to_string(),
        model: ctx.cm.model.name.clone(),
        cluster: ctx.cm.cluster.name.clone(),
        nodes: ctx.cm.cluster.nodes,
        gpus: ctx.gpus,
        global_batch,
        max_seq,
        documents: batches.batches.iter().map(|b| b.docs.len()).sum(),
        dropped: batches.dropped,
        batches: batches.batches.len(),
        memory_limit_bytes: ctx.limit_bytes,
        strategies,
        best_static: best_static.map(|s| s.name.clone()),
        solve_ms: Percentiles::of(&hsap.solve_ms),
        hsap_sources,
        milp_status,
        skipped: result.skipped.clone(),
        flexsp_time_limit_s: args.flexsp_time_limit,
        hsap_time_limit_s: args.time_limit,
        wall_s,
    }
}

fn write_table(s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "trace     {}: {} documents in {} batches of {} (max seq {}, {} dropped)",
        s.trace,
        thousands(s.documents as u64),
        thousands(s.batches as u64),
        s.global_batch,
        thousands(u64::from(s.max_seq)),
        thousands(s.dropped as u64)
    )?;
    writeln!(
        out,
        "setup     {} on {} x {} nodes ({} GPUs), memory limit {:.1} GiB per GPU",
        s.model,
        s.cluster,
        s.nodes,
        s.gpus,
        s.memory_limit_bytes / crate::cluster::GIB
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<18} {:>12} {:>14} {:>10} {:>16}",
        "strategy", "configuration", "total (s)", "mean step (s)", "speedup", "hsap's per batch"
    )?;
    for st in &s.strategies {
        let speedup = st.speedup_vs_best_static.map_or("-".to_string(), |x| format!("{x:.3}x"));
        writeln!(
            out,
            "{:<16} {:<18} {:>12.2} {:>14.4} {:>10} {:>15.3}x",
            st.name, st.detail, st.total_time_s, st.mean_step_s, speedup, st.hsap_speedup_per_batch
        )?;
    }
    for (name, why) in &s.skipped {
        writeln!(out, "{name:<16} skipped: {why}")?;
    }
    writeln!(out)?;
    match &s.best_static {
        Some(b) => writeln!(
            out,
            "speedup: the best static plan's ({b}) total over each total; hsap's per batch: the mean over batches of each strategy's step over hsap's"
        )?,
        None => writeln!(out, "no static plan holds every document: speedups are not defined")?,
    }
    writeln!(
        out,
        "hsap solve time per batch: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.solve_ms.median, s.solve_ms.p99, s.solve_ms.max
    )?;
    let sources: Vec<String> = s.hsap_sources.iter().map(|(n, c)| format!("{n} {c}")).collect();
    writeln!(out, "hsap plans by source: {}", sources.join(", "))?;
    for (name, counts) in &s.milp_status {
        let c: Vec<String> = counts.iter().map(|(n, c)| format!("{n} {c}")).collect();
        writeln!(out, "{name} MILP status per batch: {}", c.join(", "))?;
    }
    writeln!(out, "planned in {:.1} s", s.wall_s)
}

fn write_outputs(dir: &Path, ctx: &Ctx, trace: &Path, batches: &[Batch], result: &RunResult, summary: &Summary) -> Result<()> {
    let mut batch_rows = Vec::new();
    let mut group_rows = Vec::new();
    for s in &result.strategies {
        let plan = Plan {
            format_version: PLAN_FORMAT_VERSION,
            strategy: s.name.clone(),
            trace: trace.display().to_string(),
            model: ctx.cm.model.clone(),
            cluster: ctx.cm.cluster.clone(),
            train: ctx.cm.train.clone(),
            memory_limit_bytes: ctx.limit_bytes,
            batches: batches.iter().zip(&s.priced).map(|(b, p)| ctx.to_batch_plan(b, p)).collect(),
        };
        let json = serde_json::to_vec(&plan).map_err(|e| Error::invalid(format!("serialising the plan: {e}"), "this is a bug"))?;
        let path = if s.name == "hsap" { dir.join("plan.json") } else { dir.join("plans").join(format!("{}.json", s.name)) };
        write_atomic(&path, &json)?;
        for (b, p) in batches.iter().zip(&s.priced) {
            batch_rows.push(BatchRow::of(ctx, b, &s.name, p));
            group_rows.extend(GroupRow::of(ctx, b, &s.name, p));
        }
    }
    write_csv(&dir.join("batches.csv"), &batch_rows)?;
    write_csv(&dir.join("groups.csv"), &group_rows)?;
    let json = serde_json::to_vec_pretty(summary).map_err(|e| Error::invalid(format!("serialising the summary: {e}"), "this is a bug"))?;
    write_atomic(&dir.join("summary.json"), &json)
}

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| Error::invalid(format!("{}: {e}", path.display()), "this is a bug"))?;
    }
    let bytes = w.into_inner().map_err(|e| Error::invalid(format!("{}: {e}", path.display()), "this is a bug"))?;
    write_atomic(path, &bytes)
}
