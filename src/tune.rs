//! The product pipeline behind `hsap-tune`: cut a trace into batches, plan every batch with hsap
//! and the baselines, write the plans and the run directory (docs/report.md), replay every plan in
//! the simulator and draw the report. The command line only maps its flags to [`TuneOptions`] and
//! prints the [`TuneOutcome`]; a library user calls [`tune`] the same way.

use crate::cluster::Cluster;
use crate::cost::{CostModel, TrainConfig};
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::formats::plan::PlanWriter;
use crate::plan::{Plan, PlanHeader, PLAN_FORMAT_VERSION};
use crate::formats::run::{
    is_run_file, strategy_summaries, BatchRow, ErrorBar, GroupRow, PlannerDetails, RunData, SolveMs, Summary, TraceInfo, HSAP, PLANS_DIR,
    PLAN_JSON, PLAN_JSON_MAX_BATCHES, PLAN_STEM, SUMMARY_FORMAT_VERSION,
};
use crate::output::StagedDir;
use crate::report::ReportFiles;
use crate::sim::{simulate_batch, SimOptions};
use crate::solver::{
    run_all_with, Ctx, CtxOptions, FlexspOptions, GroupSizes, HsapOptions, Priced, RunOptions, RunResult, Strategy, StrategyResult,
};
use crate::trace::{make_batches, Batch, BatchBy, BatchSpec, Batches, Trace};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The longest document planned when the batching names none: FlexSP's 192K.
pub const DEFAULT_MAX_SEQ: u32 = 196_608;
/// FlexSP's HiGHS time limit per micro-batch by default. The paper's is 5 s; at 5 s the default
/// trace's 153 batches take over six minutes on two cores, so the default is 1 s and the run
/// says so ([`Notice::FlexspTimeLimit`]).
pub const DEFAULT_FLEXSP_TIME_LIMIT_S: f64 = 1.0;
/// The paper's FlexSP time limit.
pub const FLEXSP_PAPER_TIME_LIMIT_S: f64 = 5.0;

/// What to plan on: the trace, how it is cut into batches, the model and the cluster.
#[derive(Debug, Clone)]
pub struct TuneInputs {
    pub trace: Trace,
    /// How the trace is cut into batches; `max_seq: None` plans up to [`DEFAULT_MAX_SEQ`].
    pub batching: BatchSpec,
    /// Plan only the first N batches.
    pub limit_batches: Option<usize>,
    pub model: ModelShape,
    pub cluster: Cluster,
    /// How training runs (ZeRO, checkpointing, tp, the software stack), as in `predict`'s
    /// scenarios; `model` and `cluster` are already one pipeline stage's when pp > 1.
    pub train: TrainConfig,
    /// A measurements CSV (docs/measurements.md) copied into the run to show predicted against
    /// measured in the report.
    pub measurements: Option<PathBuf>,
}

/// How to plan, and what to write.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The run directory: plan.json, batches.csv, groups.csv, trace.json, summary.json and
    /// report/index.html (docs/report.md).
    pub out: PathBuf,
    /// Also write each baseline's plan as plans/<strategy>.json.
    pub baseline_plans: bool,
    /// Replay every strategy's plans in the simulator.
    pub simulate: bool,
    /// Draw report/index.html.
    pub report: bool,
    /// Seconds hsap's LP/MILP stage may spend on one batch (0 skips the stage).
    pub hsap_time_limit_s: f64,
    /// Rounds of hsap's integer type MILP per micro-batch (0: the LP certificate only).
    pub milp_rounds: usize,
    /// Seconds FlexSP's MILP may spend on one micro-batch.
    pub flexsp_time_limit_s: f64,
    /// Baselines to compare with (hsap always runs).
    pub baselines: Vec<Strategy>,
    /// The group sizes hsap considers (the size ladder by default).
    pub group_sizes: GroupSizes,
    /// Show progress on stderr (a live line on a terminal, periodic lines otherwise).
    pub progress: bool,
    /// The command line recorded in summary.json.
    pub command: String,
}

impl TuneOptions {
    /// Checks the time limits and that the run directory can be written (absent, or a directory
    /// of an earlier run's files only, in a writable place); [`tune`] calls it too, a caller may
    /// call it before loading inputs.
    pub fn check(&self) -> Result<()> {
        self.check_limits()?;
        crate::output::check_replaceable(&self.out, "--out", &is_run_file)
    }

    fn check_limits(&self) -> Result<()> {
        check_time_limits(self.hsap_time_limit_s, self.flexsp_time_limit_s)
    }
}

/// hsap's LP/MILP and FlexSP's time limits, as `tune` and `planner::Planner` take them.
pub fn check_time_limits(hsap_s: f64, flexsp_s: f64) -> Result<()> {
    if !(hsap_s.is_finite() && hsap_s >= 0.0) {
        return Err(Error::invalid(format!("--time-limit {hsap_s} must be a non-negative number of seconds"), "try --time-limit 2"));
    }
    if !(flexsp_s.is_finite() && flexsp_s > 0.0) {
        return Err(Error::invalid(
            format!("--flexsp-time-limit {flexsp_s} must be a positive number of seconds"),
            "the paper's is 5; leave flexsp out with --baselines",
        ));
    }
    Ok(())
}

/// Something the user should know about a run that still goes ahead; told as it happens, so that
/// it precedes a long solve.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Documents longer than `max_seq` were left out.
    Dropped { documents: usize, tokens: u64, max_seq: u32 },
    /// FlexSP's MILP runs with a shorter time limit than the paper's.
    FlexspTimeLimit { limit_s: f64 },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::thousands;
        match self {
            Notice::Dropped { documents, tokens, max_seq } => write!(
                f,
                "dropped {} documents ({} tokens) longer than --max-seq {}",
                thousands(*documents as u64),
                thousands(*tokens),
                thousands(u64::from(*max_seq))
            ),
            Notice::FlexspTimeLimit { limit_s } => write!(
                f,
                "flexsp's MILP runs with a {limit_s} s time limit per micro-batch (the paper's is {FLEXSP_PAPER_TIME_LIMIT_S} s; --flexsp-time-limit {FLEXSP_PAPER_TIME_LIMIT_S} restores it)"
            ),
        }
    }
}

/// What a run produced. Its files are in the options' `out` directory.
#[derive(Debug)]
pub struct TuneOutcome {
    /// The run directory's data, as written.
    pub run: RunData,
    /// Every strategy's plans whole, hsap's first, for runs of at most
    /// [`PLAN_JSON_MAX_BATCHES`] batches; empty for longer runs, whose plans are streamed into
    /// the run directory (`plan.jsonl`; read them with `formats::plan::PlanStream`).
    pub plans: Vec<Plan>,
    /// The drawn report, unless the options skipped it.
    pub report: Option<ReportFiles>,
    /// The verdict and the best static plan's launch configuration (recommendation.json).
    pub recommendation: crate::formats::recommendation::Recommendation,
}

/// Plans every batch, writes the run directory, simulates and draws the report. `notice` hears
/// what the user should know while the run goes on; an error it returns stops the run.
pub fn tune(
    inputs: &TuneInputs,
    opts: &TuneOptions,
    notice: &mut dyn FnMut(&Notice) -> Result<()>,
) -> Result<TuneOutcome> {
    let started = std::time::Instant::now();
    // Everything that can be wrong with the inputs and the output is found before any planning.
    opts.check_limits()?;
    if inputs.limit_batches == Some(0) {
        return Err(Error::invalid("--limit-batches 0 leaves no batch to plan", "pass at least 1, or leave it out to plan every batch"));
    }
    let measurements = match &inputs.measurements {
        Some(path) => crate::formats::measurements::read(path)?,
        None => Vec::new(),
    };
    let staged = StagedDir::new(&opts.out, "--out", &is_run_file)?;
    let trace = &inputs.trace;
    let mut spec = inputs.batching.clone();
    let max_seq = spec.max_seq.unwrap_or(DEFAULT_MAX_SEQ);
    spec.max_seq = Some(max_seq);
    let mut batches = make_batches(&trace.lengths, &spec)?;
    if batches.batches.is_empty() {
        return Err(Error::invalid(
            format!(
                "{}: no batch to plan: all {} documents are longer than --max-seq {max_seq}",
                trace.source.display(),
                crate::units::thousands(batches.dropped as u64)
            ),
            "raise --max-seq or use --over-long split",
        ));
    }
    if let Some(n) = inputs.limit_batches {
        batches.batches.truncate(n);
    }
    if batches.dropped > 0 {
        notice(&Notice::Dropped { documents: batches.dropped, tokens: batches.dropped_tokens, max_seq })?;
    }
    let cm = CostModel::new(inputs.model.clone(), inputs.cluster.clone(), inputs.train.clone())?;
    let max_len = batches.batches.iter().flat_map(|b| b.docs.iter().map(|d| d.len)).max().unwrap_or(1);
    let ctx_opts = CtxOptions { sizes: opts.group_sizes, progress: crate::progress::Mode::for_stderr(opts.progress) };
    let ctx = Ctx::with(cm, max_len, &ctx_opts)?;
    check_holdable(&ctx, max_len)?;
    if opts.baselines.contains(&Strategy::Flexsp) && opts.flexsp_time_limit_s < FLEXSP_PAPER_TIME_LIMIT_S {
        notice(&Notice::FlexspTimeLimit { limit_s: opts.flexsp_time_limit_s })?;
    }
    let run_opts = RunOptions {
        hsap: HsapOptions {
            time_limit_s: opts.hsap_time_limit_s,
            max_milp_solves: opts.milp_rounds,
            use_milp: opts.hsap_time_limit_s > 0.0,
            ..HsapOptions::default()
        },
        flexsp: FlexspOptions { time_limit_s: opts.flexsp_time_limit_s, ..FlexspOptions::default() },
        baselines: opts.baselines.clone(),
        progress: crate::progress::Mode::for_stderr(opts.progress),
    };
    // hsap's plan is streamed into the run as batches are planned; small runs also get it whole.
    let keep = batches.batches.len() <= PLAN_JSON_MAX_BATCHES;
    let mut writer = PlanWriter::create(staged.path(), PLAN_STEM, header_of(&ctx, &trace.source, HSAP), keep)?;
    let result = run_all_with(&ctx, &batches.batches, &run_opts, &mut |b, p| writer.write(&ctx.to_batch_plan(b, p)))?;
    let mut plans: Vec<Plan> = writer.finish()?.into_iter().collect();
    let plan_wall_s = started.elapsed().as_secs_f64();
    for s in &result.strategies[1..] {
        if let Some(plan) = write_baseline_plan(&ctx, staged.path(), &trace.source, &batches.batches, s, opts.baseline_plans, keep)? {
            plans.push(plan);
        }
    }
    if let Some(hsap) = plans.first() {
        hsap.write(&staged.path().join(PLAN_JSON))?;
    }
    let simulated = opts.simulate.then(|| simulate_all(&ctx, &batches.batches, &result, opts.progress));
    let simulate_wall_s = started.elapsed().as_secs_f64() - plan_wall_s;
    let walls = Walls { plan_s: plan_wall_s, simulate_s: simulate_wall_s };
    let run = run_data(inputs, opts, &batches, &ctx, &result, simulated.as_deref(), max_seq, walls, measurements)?;
    let recommendation = crate::recommend::recommend(&run, static_shape(&result, &run.summary.best_static), &ctx.cm.model, &ctx.cm.train);
    // The run is written whole into a staging directory that then replaces --out.
    run.write(staged.path())?;
    recommendation.write(staged.path())?;
    staged.commit()?;
    let report = if opts.report { Some(crate::report::render(&opts.out)?) } else { None };
    Ok(TuneOutcome { run, plans, report, recommendation })
}

/// The group shape of a static strategy's plans (every group of a static plan has it).
fn static_shape(result: &RunResult, name: &str) -> Option<crate::scheme::GroupShape> {
    let s = result.strategies.iter().find(|s| s.name == name)?;
    s.priced.iter().flat_map(|p| &p.micro).flat_map(|m| &m.groups).map(|g| g.shape).next()
}

/// A document no SP group can hold in memory is an error, not a plan.
pub fn check_holdable(ctx: &Ctx, max_len: u32) -> Result<()> {
    use crate::units::thousands;
    let holdable = ctx.candidates.iter().map(|c| c.max_tokens).max().unwrap_or(0);
    if max_len <= holdable {
        return Ok(());
    }
    Err(Error::invalid(
        format!(
            "a {}-token document does not fit in memory on any SP group of {} x {} GPUs (the largest holds {} tokens)",
            thousands(u64::from(max_len)),
            ctx.cm.cluster.nodes,
            ctx.cm.cluster.gpus_per_node,
            thousands(u64::from(holdable))
        ),
        "raise --nodes, lower --max-seq, or cut long documents with --over-long split",
    ))
}

/// A plan's header: the run's configuration as the planner priced it.
fn header_of(ctx: &Ctx, trace: &Path, name: &str) -> PlanHeader {
    PlanHeader {
        format_version: PLAN_FORMAT_VERSION,
        strategy: name.to_string(),
        trace: trace.display().to_string(),
        model: ctx.cm.model.clone(),
        cluster: ctx.cm.cluster.clone(),
        train: ctx.cm.train.clone(),
        memory_limit_bytes: ctx.limit_bytes,
        batches: 0,
    }
}

/// A baseline's plan: streamed into plans/ when `write` (whole too when `keep`), and returned
/// whole when `keep`.
fn write_baseline_plan(
    ctx: &Ctx,
    dir: &Path,
    trace: &Path,
    batches: &[Batch],
    s: &StrategyResult,
    write: bool,
    keep: bool,
) -> Result<Option<Plan>> {
    let header = header_of(ctx, trace, &s.name);
    let plans_dir = dir.join(PLANS_DIR);
    if !write {
        let plans = keep.then(|| batches.iter().zip(&s.priced).map(|(b, p)| ctx.to_batch_plan(b, p)).collect());
        return Ok(plans.map(|batches| Plan::from_parts(header, batches)));
    }
    let mut writer = PlanWriter::create(&plans_dir, &s.name, header, keep)?;
    for (b, p) in batches.iter().zip(&s.priced) {
        writer.write(&ctx.to_batch_plan(b, p))?;
    }
    let plan = writer.finish()?;
    if let Some(plan) = &plan {
        plan.write(&plans_dir.join(format!("{}.json", s.name)))?;
    }
    Ok(plan)
}

/// Every strategy's every batch replayed in the simulator: simulated step times per strategy.
/// Each batch's plan is made again from its priced form and dropped once replayed, so a long
/// trace's plans are never held.
fn simulate_all(ctx: &Ctx, batches: &[Batch], result: &RunResult, progress: bool) -> Vec<Vec<f64>> {
    let total = result.strategies.len() * batches.len();
    let mode = crate::progress::Mode::for_stderr(progress);
    let pb = crate::progress::Progress::stderr(mode, "simulating", total as u64, "batches");
    let steps = result
        .strategies
        .iter()
        .map(|s| {
            batches
                .par_iter()
                .zip(&s.priced)
                .map(|(b, p)| {
                    let (sim, _) = simulate_batch(&ctx.cm, &ctx.to_batch_plan(b, p), &SimOptions::default());
                    pb.inc(1);
                    sim.step_s
                })
                .collect()
        })
        .collect();
    pb.finish();
    steps
}

/// Wall-clock seconds spent planning and simulating.
#[derive(Clone, Copy)]
struct Walls {
    plan_s: f64,
    simulate_s: f64,
}

#[allow(clippy::too_many_arguments)]
fn run_data(
    inputs: &TuneInputs,
    opts: &TuneOptions,
    batches: &Batches,
    ctx: &Ctx,
    result: &RunResult,
    simulated: Option<&[Vec<f64>]>,
    max_seq: u32,
    walls: Walls,
    measurements: Vec<crate::formats::measurements::Measurement>,
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
    let trace = &inputs.trace;
    let (global_batch, batch_tokens) = match inputs.batching.by {
        BatchBy::Count(n) => (Some(n), None),
        BatchBy::Tokens(t) => (None, Some(t)),
    };
    let summary = Summary {
        format_version: SUMMARY_FORMAT_VERSION,
        trace: trace.source.display().to_string(),
        model: ctx.cm.model.name.clone(),
        cluster: ctx.cm.cluster.name.clone(),
        nodes: ctx.cm.cluster.nodes,
        gpus_per_node: ctx.cm.cluster.gpus_per_node,
        gpus_per_domain: (ctx.gpus_per_domain != ctx.cm.cluster.gpus_per_node).then_some(ctx.gpus_per_domain),
        global_batch,
        batch_tokens,
        max_seq: Some(max_seq),
        batches: batches.batches.len(),
        strategies,
        best_static: best_static.unwrap_or_default(),
        solve_ms: SolveMs::of(&hsap.solve_ms),
        command: opts.command.clone(),
        stack: ctx.cm.train.stack.name.clone(),
        error_bar: {
            let f = ctx.cm.train.stack.fitted;
            (f.rows > 0).then_some(ErrorBar { low: f.residual_low, high: f.residual_high })
        },
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
            hsap_time_limit_s: opts.hsap_time_limit_s,
            flexsp_time_limit_s: opts.flexsp_time_limit_s,
            plan_wall_s: walls.plan_s,
            simulate_wall_s: walls.simulate_s,
            group_sizes: ctx.sizes.clone(),
            pods: ctx.pods,
            pod_nodes: ctx.gpus / ctx.cm.cluster.gpus_per_node,
        },
        priced_by: crate::cost::sources::describe(&ctx.cm.cluster),
        uncalibrated: ctx.cm.cluster.uncalibrated.clone(),
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
        fit_points: crate::formats::fit_points::of_profile(&ctx.cm.cluster),
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
            let mut nodes: Vec<u32> = g.ranks.iter().map(|r| r / ctx.cm.cluster.gpus_per_node).collect();
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

