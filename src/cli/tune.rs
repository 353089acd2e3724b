//! `hsap-tune` (the default command) and `hsap-tune tune`: plan every batch of a trace with hsap
//! and the baselines, print the comparison, and write the plans and per-batch data.

use super::{io_out, thousands, ClusterArgs, ModelArgs, TraceArgs, TrainArgs};
use crate::error::Result;
use crate::formats::run::Summary;
use crate::solver::{GroupSizes, Strategy};
use crate::tune::{TuneInputs, TuneOptions};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

pub use crate::tune::{DEFAULT_FLEXSP_TIME_LIMIT_S, DEFAULT_MAX_SEQ};

/// Where a run is written when --out is not given.
pub const DEFAULT_OUT: &str = "hsap-run";

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
    /// Consider every group size (every whole number of nodes) instead of the size ladder
    /// (powers of two of nodes while they run the longest document faster, and the nodes it
    /// needs): slower to set up on large clusters, kept to compare plans with.
    #[arg(long)]
    pub all_group_sizes: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn tune(args: &TuneArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let mut opts = TuneOptions {
        out: args.out.clone(),
        baseline_plans: args.baseline_plans,
        simulate: !args.no_simulate,
        report: !args.no_report,
        hsap_time_limit_s: args.time_limit,
        milp_rounds: args.milp_rounds,
        flexsp_time_limit_s: args.flexsp_time_limit,
        baselines: Vec::new(),
        group_sizes: if args.all_group_sizes { GroupSizes::All } else { GroupSizes::Ladder },
        progress: true,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    opts.check()?;
    opts.baselines = parse_baselines(&args.baselines)?;
    let trace = args.trace.load()?;
    super::inspect::warn_skipped(&trace, err)?;
    let (model, cluster, train) = args.train.apply(args.model.load()?, args.cluster.load()?)?;
    let inputs = TuneInputs {
        trace,
        batching: args.trace.batch_spec(),
        limit_batches: args.limit_batches,
        model,
        cluster,
        train,
        measurements: args.measurements.clone(),
    };
    let outcome = crate::tune::tune(&inputs, &opts, &mut |n| writeln!(err, "note: {n}").map_err(io_out))?;
    let summary = &outcome.run.summary;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, summary).map_err(|e| io_out(e.into()))?;
        writeln!(out).map_err(io_out)?;
    } else {
        write_table(summary, out).map_err(io_out)?;
        write_recommendation(&outcome.recommendation, out).map_err(io_out)?;
    }
    writeln!(err, "wrote {}", args.out.display()).map_err(io_out)?;
    if let Some(r) = outcome.report {
        for w in &r.warnings {
            writeln!(err, "warning: {w}").map_err(io_out)?;
        }
        writeln!(err, "report: {}", r.index_html.display()).map_err(io_out)?;
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
        "setup     {} on {} x {} nodes ({} GPUs{}), memory limit {:.1} GiB per GPU",
        s.model,
        s.cluster,
        s.nodes,
        s.gpus(),
        s.domains_words(),
        d.memory_limit_bytes / crate::units::GIB
    )?;
    if d.pods > 1 {
        writeln!(
            out,
            "pods      planned as {} identical pods of {} nodes ({} GPUs each): documents dealt to pods by work, no group spans two",
            d.pods,
            d.pod_nodes,
            d.pod_nodes * s.gpus_per_node
        )?;
    }
    if let Some(bar) = s.error_bar {
        writeln!(
            out,
            "stack     {}: error bar {:+.0}% to {:+.0}% (development set); 'overlaps' marks a total whose interval meets hsap's",
            s.stack,
            100.0 * bar.low,
            100.0 * bar.high
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<18} {:>12} {:>14} {:>10} {:>16} {:>14}",
        "strategy", "configuration", "total (s)", "mean step (s)", "speedup", "hsap's per batch", "simulated (s)"
    )?;
    let hsap_total = s.strategies.first().map(|st| st.total_time_s);
    for st in &s.strategies {
        let speedup = st.speedup_vs_best_static.map_or("-".into(), |x| format!("{x:.3}x"));
        let per_batch = st.hsap_speedup_per_batch.map_or("-".into(), |x| format!("{x:.3}x"));
        let simulated = st.simulated_total_s.map_or("-".into(), |x| format!("{x:.2}"));
        let overlaps = match (s.error_bar, hsap_total) {
            (Some(bar), Some(h)) if st.name != "hsap" && bar.overlap(h, st.total_time_s) => "  overlaps",
            _ => "",
        };
        writeln!(
            out,
            "{:<16} {:<18} {:>12.2} {:>14.4} {:>10} {:>16} {:>14}{overlaps}",
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
        "total: the cost model's step times (groups sharing NICs priced in closed form); simulated: the same plans replayed event by event"
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
        writeln!(out, "{name} LP/MILP outcome per batch: {}", c.join(", "))?;
    }
    if d.milp_status.iter().flat_map(|(_, c)| c).any(|(n, _)| n == "proved_within_gap" || n == "lp_room") {
        writeln!(
            out,
            "  proved_within_gap: the LP relaxation proved that no plan is 2% faster (under the planner's type model); lp_room: the LP saw room it could not prove away (--milp-rounds searches it)"
        )?;
    }
    super::predict::write_uncalibrated(s.uncalibrated.as_deref(), out)?;
    super::predict::write_priced_by(&s.priced_by, out)?;
    writeln!(out, "planned in {:.1} s, simulated in {:.1} s", d.plan_wall_s, d.simulate_wall_s)
}

/// The verdict, then each framework's launch settings on one line (recommendation.md has them in
/// full, with the notes).
fn write_recommendation(r: &crate::formats::recommendation::Recommendation, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "\nverdict: {}", r.verdict.paragraph)?;
    let Some(l) = &r.launch else { return Ok(()) };
    writeln!(
        out,
        "launch {} ({} x {}, {}) per framework (recommendation.md has the notes):",
        l.strategy,
        l.ulysses,
        l.ring,
        l.scheme.name()
    )?;
    for f in &r.frameworks {
        let settings = if f.expressible {
            f.settings
                .iter()
                .map(|s| match &s.value {
                    serde_json::Value::Null => s.key.clone(),
                    serde_json::Value::String(v) => format!("{}={v}", s.key),
                    v => format!("{}={v}", s.key),
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            format!("cannot run it: {}", f.notes.first().map_or("", |n| n.as_str()))
        };
        writeln!(out, "  {:<14} {:<40} {settings}", f.framework, f.version)?;
    }
    Ok(())
}
