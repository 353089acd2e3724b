//! The run directory: what the planner writes and the report is drawn from. Every file is a plain
//! serde type (docs/report.md lists the columns and their units), so the planner writes exactly
//! what the report reads and a user can open each file in a spreadsheet.

use super::fit_points::{self, FitPoint};
use super::measurements::{self, Measurement};
use super::{read_csv, write_csv, write_json};
use crate::error::{Error, Result};
use crate::scheme::Scheme;
use crate::trace::{TraceFormat, TraceStats};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the columns of the run directory's files are described.
const DOC: &str = "docs/report.md";

pub const SUMMARY_JSON: &str = "summary.json";
pub const TRACE_JSON: &str = "trace.json";
pub const BATCHES_CSV: &str = "batches.csv";
pub const GROUPS_CSV: &str = "groups.csv";
pub const MEASUREMENTS_CSV: &str = "measurements.csv";
pub const FIT_POINTS_CSV: &str = "fit_points.csv";
/// hsap's plan, and the folder of the baselines' plans when they are written: streamed
/// (`plan-header.json` and `plan.jsonl`, then `plan-00001.jsonl`, ... on long runs; a baseline's `plans/<strategy>-header.json` and
/// `plans/<strategy>.jsonl`), and whole (`plan.json`, `plans/<strategy>.json`) for runs of at most
/// [`PLAN_JSON_MAX_BATCHES`] batches.
pub const PLAN_JSON: &str = "plan.json";
pub const PLAN_STEM: &str = "plan";
pub const PLAN_HEADER_JSON: &str = "plan-header.json";
pub const PLAN_JSONL: &str = "plan.jsonl";
/// The most batches a run writes whole plans (`plan.json`) for, besides the streamed ones.
pub const PLAN_JSON_MAX_BATCHES: usize = 64;
pub const PLANS_DIR: &str = "plans";
/// The folder the report is drawn into.
pub const REPORT_DIR: &str = "report";

/// Whether a file (its path inside a run directory) is one a run writes: the data files, the
/// plans, and the report's figures and pages. A run replaces a directory that holds only these.
pub fn is_run_file(relative: &Path) -> bool {
    let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    let extension = |name: &str, allowed: &[&str]| Path::new(name).extension().and_then(|e| e.to_str()).is_some_and(|e| allowed.contains(&e));
    match parts.as_slice() {
        [name] => [
            SUMMARY_JSON,
            TRACE_JSON,
            BATCHES_CSV,
            GROUPS_CSV,
            MEASUREMENTS_CSV,
            FIT_POINTS_CSV,
            PLAN_JSON,
            PLAN_HEADER_JSON,
            PLAN_JSONL,
            super::recommendation::RECOMMENDATION_JSON,
            super::recommendation::RECOMMENDATION_MD,
        ]
        .contains(name)
            || super::plan::is_further_part(name, PLAN_STEM),
        [dir, name] if *dir == PLANS_DIR => extension(name, &["json", "jsonl"]),
        [dir, name] if *dir == REPORT_DIR => extension(name, &["svg", "png", "csv", "md", "html"]),
        _ => false,
    }
}

/// Bumped whenever a field of `summary.json` changes meaning.
pub const SUMMARY_FORMAT_VERSION: u32 = 1;

/// Our strategy's name; every speedup is measured against it.
pub const HSAP: &str = "hsap";
/// Baselines whose names start with this keep one (u, r) for the whole trace.
pub const STATIC_PREFIX: &str = "static-";
/// The planner's strategies in the order tables and legends list them; other names follow,
/// alphabetically.
pub const KNOWN_STRATEGIES: [&str; 6] = [
    "hsap",
    "flexsp",
    "megatron-dcp",
    "static-ulysses",
    "static-ring",
    "static-usp",
];

/// One batch priced (and optionally simulated) under one strategy: a row of `batches.csv`.
///
/// The four parts of the step (`compute_s`, `exposed_comm_s`, `idle_s`, `grad_sync_s`) are
/// averages over the GPUs and add up to `predicted_step_s`: each GPU's step is its compute, the
/// communication it waits for, the time it waits for the slowest group, and the gradient
/// synchronisation left exposed at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRow {
    pub batch: usize,
    pub strategy: String,
    pub documents: usize,
    pub tokens: u64,
    /// The cost model's step time.
    pub predicted_step_s: f64,
    /// The simulator's step time, when the batch was simulated.
    #[serde(default)]
    pub simulated_step_s: Option<f64>,
    pub compute_s: f64,
    pub exposed_comm_s: f64,
    /// Waiting for the slowest group of a micro-batch (load imbalance).
    pub idle_s: f64,
    /// Data-parallel gradient synchronisation not hidden behind the backward pass.
    pub grad_sync_s: f64,
    /// Highest predicted memory of any GPU in the step.
    pub peak_memory_bytes: f64,
    /// Usable memory per GPU the plan was constrained to.
    pub memory_limit_bytes: f64,
    pub microbatches: u32,
    /// SP groups, summed over the micro-batches.
    pub groups: u32,
    /// Which search produced the plan (hsap: `greedy`, `milp` or `incumbent:<baseline>`).
    #[serde(default)]
    pub source: String,
    /// The MILP's status when one ran for the batch (`optimal`, `time_limit`, `infeasible`...).
    #[serde(default)]
    pub milp_status: String,
}

impl BatchRow {
    pub fn breakdown_sum_s(&self) -> f64 {
        self.compute_s + self.exposed_comm_s + self.idle_s + self.grad_sync_s
    }
}

/// One SP group a strategy chose: a row of `groups.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub batch: usize,
    pub strategy: String,
    pub microbatch: u32,
    /// GPUs in the group: `ulysses x ring`.
    pub size: u32,
    pub ulysses: u32,
    pub ring: u32,
    pub scheme: Scheme,
    /// Nodes the group's GPUs are on.
    pub nodes: u32,
    pub documents: usize,
    pub tokens: u64,
    /// The cost model's time for the group's share of the micro-batch.
    pub predicted_s: f64,
}

/// `trace.json`: the statistics `hsap-tune inspect --json` prints, for the trace the run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceInfo {
    pub source: String,
    pub format: TraceFormat,
    #[serde(default)]
    pub skipped_empty: usize,
    #[serde(flatten)]
    pub stats: TraceStats,
}

/// `summary.json`: the run's inputs and headline numbers. Its `strategies` and `solve_ms` are the
/// fields `hsap-tune --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub format_version: u32,
    /// The trace's path or embedded name.
    pub trace: String,
    pub model: String,
    pub cluster: String,
    pub nodes: u32,
    pub gpus_per_node: u32,
    /// GPUs of one NVLink domain, when a domain spans several nodes (an NVL72 rack); absent when
    /// the node is the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_per_domain: Option<u32>,
    /// Documents per global batch, when batches are cut by count.
    #[serde(default)]
    pub global_batch: Option<usize>,
    /// Tokens per global batch, when batches are cut by tokens.
    #[serde(default)]
    pub batch_tokens: Option<u64>,
    #[serde(default)]
    pub max_seq: Option<u32>,
    pub batches: usize,
    pub strategies: Vec<StrategySummary>,
    /// The static baseline with the least total time (the reference of `speedup_vs_best_static`).
    pub best_static: String,
    /// hsap's solve time per batch, milliseconds.
    pub solve_ms: SolveMs,
    /// The command line that produced the run.
    #[serde(default)]
    pub command: String,
    /// The planner's details (absent from hand-made run directories).
    #[serde(default, flatten)]
    pub planner: PlannerDetails,
    /// The software stack the plans were priced with.
    #[serde(default)]
    pub stack: String,
    /// The stack's development-set error bar (docs/cost-model.md section 12), when it has one.
    #[serde(default)]
    pub error_bar: Option<ErrorBar>,
    /// On a calibrated cluster, which fitted figures priced the run and which came from the
    /// preset (`cost::sources`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priced_by: Vec<String>,
    /// Why the cluster preset's figures are partly derived rather than measured
    /// (`Cluster::uncalibrated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncalibrated: Option<String>,
}

/// A prediction's relative error bar: the true time lies in `[t (1 + low), t (1 + high)]` for 80%
/// of the development set's runs of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorBar {
    pub low: f64,
    pub high: f64,
}

impl ErrorBar {
    /// Whether two predicted times' intervals overlap: then the comparison cannot tell them apart.
    pub fn overlap(&self, a: f64, b: f64) -> bool {
        let (fast, slow) = if a <= b { (a, b) } else { (b, a) };
        fast * (1.0 + self.high) >= slow * (1.0 + self.low)
    }
}

/// What the planner adds to `summary.json` beyond the headline numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PlannerDetails {
    /// Documents planned, and documents left out for being longer than `max_seq`.
    pub documents: usize,
    pub dropped: usize,
    /// Usable memory per GPU every plan was held to.
    pub memory_limit_bytes: f64,
    /// How many of hsap's batch plans came from each source (greedy, milp, incumbent:<name>).
    pub hsap_sources: Vec<(String, usize)>,
    /// MILP statuses over the batches, per strategy that ran one.
    pub milp_status: Vec<(String, Vec<(String, usize)>)>,
    /// Baselines that could not plan the trace, and why.
    pub skipped: Vec<(String, String)>,
    pub hsap_time_limit_s: f64,
    pub flexsp_time_limit_s: f64,
    /// Seconds spent planning (all strategies; simulation and files excluded).
    pub plan_wall_s: f64,
    /// Seconds spent simulating every strategy's plans.
    pub simulate_wall_s: f64,
    /// The group sizes (GPUs) hsap considered: the size ladder, or every size with
    /// `--all-group-sizes`.
    pub group_sizes: Vec<u32>,
    /// Identical pods the cluster was planned as, and the nodes of each (0 in runs from before
    /// pods: the cluster planned whole).
    pub pods: u32,
    pub pod_nodes: u32,
}

impl Summary {
    /// ", 2 NVLink domains of 72 GPUs" when a domain spans several nodes; empty otherwise.
    pub fn domains_words(&self) -> String {
        match self.gpus_per_domain {
            Some(d) if d > 0 => match self.gpus() / d {
                1 => format!(", one NVLink domain of {d} GPUs"),
                n => format!(", {n} NVLink domains of {d} GPUs"),
            },
            _ => String::new(),
        }
    }

    pub fn gpus(&self) -> u32 {
        self.nodes * self.gpus_per_node
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySummary {
    pub name: String,
    /// Sum of the predicted step times over all batches.
    pub total_time_s: f64,
    pub mean_step_s: f64,
    /// The best static baseline's total time over this strategy's.
    /// None when the run has no static baseline.
    pub speedup_vs_best_static: Option<f64>,
    /// Sum of the simulated step times, when every batch was simulated.
    #[serde(default)]
    pub simulated_total_s: Option<f64>,
    /// The configuration a strategy settled on (a static family's u x r), or its options.
    #[serde(default)]
    pub detail: String,
    /// Mean over batches of this strategy's step over hsap's on the same batch (1 for hsap).
    #[serde(default)]
    pub hsap_speedup_per_batch: Option<f64>,
    /// Solve time per batch (ms), for strategies that solve batch by batch.
    #[serde(default)]
    pub solve_ms: Option<SolveMs>,
}

#[cfg(test)]
mod error_bar_tests {
    use super::ErrorBar;

    #[test]
    fn intervals_overlap_when_the_faster_ones_top_reaches_the_slower_ones_bottom() {
        // -10% / +20%: 100 s reaches 120 s, 130 s comes down to 117 s: overlap; 140 s to 126 s: apart.
        let bar = ErrorBar { low: -0.1, high: 0.2 };
        assert!(bar.overlap(100.0, 130.0));
        assert!(bar.overlap(130.0, 100.0));
        assert!(!bar.overlap(100.0, 140.0));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SolveMs {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl SolveMs {
    /// Median, p99 and maximum of `samples` (crate::stats's quantiles; non-finite samples
    /// ignored); zeros when no batch was solved.
    pub fn of(samples: &[f64]) -> SolveMs {
        let v = crate::stats::sorted(samples.iter().copied().filter(|x| x.is_finite()));
        let q = |q| crate::stats::quantile_sorted(&v, q).unwrap_or(0.0);
        SolveMs { median: q(0.5), p99: q(0.99), max: q(1.0) }
    }
}

/// Per strategy (in [`strategy_order`]): totals and speedups over the best static baseline, and
/// that baseline's name (None when no strategy is static). The one definition of the headline
/// numbers: the planner writes them into `summary.json` and the report checks them.
pub fn strategy_summaries(rows: &[BatchRow]) -> (Vec<StrategySummary>, Option<String>) {
    let names = strategy_order(rows.iter().map(|r| r.strategy.as_str()));
    let mut totals: Vec<(String, f64, usize, Option<f64>)> = Vec::with_capacity(names.len());
    for name in names {
        let mine: Vec<&BatchRow> = rows.iter().filter(|r| r.strategy == name).collect();
        let total: f64 = mine.iter().map(|r| r.predicted_step_s).sum();
        let simulated: Option<f64> = mine.iter().map(|r| r.simulated_step_s).sum();
        totals.push((name, total, mine.len(), simulated));
    }
    let best_static = totals
        .iter()
        .filter(|(name, ..)| name.starts_with(STATIC_PREFIX))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, total, ..)| (name.clone(), *total));
    let summaries = totals
        .into_iter()
        .map(|(name, total, n, simulated)| StrategySummary {
            speedup_vs_best_static: best_static.as_ref().map(|(_, best)| best / total),
            name,
            total_time_s: total,
            mean_step_s: total / n as f64,
            simulated_total_s: simulated,
            detail: String::new(),
            hsap_speedup_per_batch: None,
            solve_ms: None,
        })
        .collect();
    (summaries, best_static.map(|(name, _)| name))
}

/// Distinct strategy names in presentation order: the known ones first, in their order, then the
/// rest alphabetically.
pub fn strategy_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let distinct: BTreeSet<&str> = names.into_iter().collect();
    let mut ordered: Vec<String> = KNOWN_STRATEGIES
        .iter()
        .filter(|k| distinct.contains(*k))
        .map(|k| k.to_string())
        .collect();
    ordered.extend(
        distinct
            .iter()
            .filter(|n| !KNOWN_STRATEGIES.contains(n))
            .map(|n| n.to_string()),
    );
    ordered
}

/// Everything in a run directory, checked for consistency.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    pub summary: Summary,
    pub trace: TraceInfo,
    pub batches: Vec<BatchRow>,
    pub groups: Vec<GroupRow>,
    /// Rows of `measurements.csv` (all of them; the report uses those with `predicted_s`).
    pub measurements: Vec<Measurement>,
    pub fit_points: Vec<FitPoint>,
    /// Inconsistencies that do not stop the report (a summary that disagrees with the batches...).
    pub warnings: Vec<String>,
}

impl RunData {
    /// Reads and checks a run directory. Missing required files and malformed rows are errors
    /// naming the file and line; the optional files may be absent.
    pub fn load(dir: &Path) -> Result<RunData> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid(
                    format!("{} is not a directory", dir.display()),
                    "pass the run directory the planner wrote (its --out)",
                ))
            }
            Err(e) => return Err(Error::Io {
                path: dir.to_path_buf(),
                source: e,
                hint:
                    "pass the run directory the planner wrote (its --out); `hsap-tune --trace FILE --out DIR` makes one",
            }),
        }
        let summary: Summary = read_json(&required(dir, SUMMARY_JSON)?, "summary.json")?;
        if summary.format_version != SUMMARY_FORMAT_VERSION {
            return Err(Error::input(
                dir.join(SUMMARY_JSON),
                0,
                format!(
                    "format_version {} is not the one this hsap reads ({SUMMARY_FORMAT_VERSION})",
                    summary.format_version
                ),
                "re-run the planner with this version of hsap-tune",
            ));
        }
        let trace: TraceInfo = read_json(&required(dir, TRACE_JSON)?, "trace.json")?;
        let batches = non_empty(read_csv::<BatchRow>(&required(dir, BATCHES_CSV)?, &[], DOC)?, dir, BATCHES_CSV)?;
        let groups = non_empty(read_csv::<GroupRow>(&required(dir, GROUPS_CSV)?, &[], DOC)?, dir, GROUPS_CSV)?;
        let measurements = match optional(dir, MEASUREMENTS_CSV) {
            Some(path) => measurements::read(&path)?,
            None => Vec::new(),
        };
        let fit_points = match optional(dir, FIT_POINTS_CSV) {
            Some(path) => non_empty(fit_points::read(&path)?, dir, FIT_POINTS_CSV)?,
            None => Vec::new(),
        };
        let mut warnings = Vec::new();
        check_batches(&dir.join(BATCHES_CSV), &batches, &mut warnings)?;
        check_groups(&dir.join(GROUPS_CSV), &groups, &batches, &mut warnings)?;
        let batches: Vec<BatchRow> = batches.into_iter().map(|(_, r)| r).collect();
        check_summary(&summary, &batches, &mut warnings);
        Ok(RunData {
            summary,
            trace,
            batches,
            groups: groups.into_iter().map(|(_, r)| r).collect(),
            measurements,
            fit_points: fit_points.into_iter().map(|(_, r)| r).collect(),
            warnings,
        })
    }

    /// Writes the run directory's files (the optional ones only when there are rows).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(SUMMARY_JSON), &self.summary)?;
        write_json(&dir.join(TRACE_JSON), &self.trace)?;
        write_csv(&dir.join(BATCHES_CSV), &self.batches)?;
        write_csv(&dir.join(GROUPS_CSV), &self.groups)?;
        if !self.measurements.is_empty() {
            measurements::write(&dir.join(MEASUREMENTS_CSV), &self.measurements)?;
        }
        if !self.fit_points.is_empty() {
            fit_points::write(&dir.join(FIT_POINTS_CSV), &self.fit_points)?;
        }
        Ok(())
    }

    /// Strategy names in presentation order.
    pub fn strategies(&self) -> Vec<String> {
        strategy_order(self.batches.iter().map(|r| r.strategy.as_str()))
    }
}

fn required(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::input(
        &path,
        0,
        format!("the run directory has no {name}"),
        "the planner writes it with --out DIR; docs/report.md lists the files a run directory holds",
    ))
}

fn optional(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name)).filter(|p| p.is_file())
}

fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    crate::toml_input::read(path, &format!("see docs/report.md for the fields of {what}"))
}

/// A required file with no rows after its header is an error.
fn non_empty<T>(rows: Vec<(usize, T)>, dir: &Path, name: &str) -> Result<Vec<(usize, T)>> {
    if rows.is_empty() {
        return Err(Error::input(dir.join(name), 0, "no rows after the header", format!("see {DOC} for the columns of {name}")));
    }
    Ok(rows)
}

fn bad_row(path: &Path, line: usize, what: String, hint: &str) -> Error {
    Error::input(path, line, what, hint)
}

fn check_batches(path: &Path, rows: &[(usize, BatchRow)], warnings: &mut Vec<String>) -> Result<()> {
    let mut seen: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for (line, r) in rows {
        let times = [
            ("predicted_step_s", r.predicted_step_s),
            ("compute_s", r.compute_s),
            ("exposed_comm_s", r.exposed_comm_s),
            ("idle_s", r.idle_s),
            ("grad_sync_s", r.grad_sync_s),
            ("peak_memory_bytes", r.peak_memory_bytes),
            ("memory_limit_bytes", r.memory_limit_bytes),
        ];
        let simulated = r.simulated_step_s.map(|s| ("simulated_step_s", s));
        for (column, v) in times.into_iter().chain(simulated) {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad_row(
                    path,
                    *line,
                    format!("{column} = {v} must be a non-negative number"),
                    "fix or drop the row",
                ));
            }
        }
        if r.predicted_step_s == 0.0 || r.memory_limit_bytes == 0.0 {
            return Err(bad_row(
                path,
                *line,
                "predicted_step_s and memory_limit_bytes must be positive".into(),
                "a priced batch takes time and a GPU has memory",
            ));
        }
        if r.strategy.is_empty() {
            return Err(bad_row(
                path,
                *line,
                "empty strategy".into(),
                "name the strategy that priced the batch",
            ));
        }
        if let Some(first) = seen.insert((r.strategy.as_str(), r.batch), *line) {
            return Err(bad_row(
                path,
                *line,
                format!(
                    "batch {} of strategy '{}' appears again (first on line {first})",
                    r.batch, r.strategy
                ),
                "write one row per batch and strategy",
            ));
        }
        let parts = r.breakdown_sum_s();
        if (parts - r.predicted_step_s).abs() > 0.01 * r.predicted_step_s {
            warnings.push(format!(
                "{}:{line}: compute + exposed communication + idle + grad sync = {parts:.4} s differs from predicted_step_s = {:.4} s by more than 1%",
                path.display(),
                r.predicted_step_s
            ));
        }
    }
    let strategies = strategy_order(rows.iter().map(|(_, r)| r.strategy.as_str()));
    if !strategies.iter().any(|s| s == HSAP) {
        return Err(Error::input(
            path,
            0,
            format!("no rows for strategy '{HSAP}' (strategies: {})", strategies.join(", ")),
            "the report compares hsap with the baselines; run the planner with hsap among its strategies",
        ));
    }
    let all_batches: BTreeSet<usize> = rows.iter().map(|(_, r)| r.batch).collect();
    for s in &strategies {
        if let Some(missing) = all_batches.iter().find(|&&b| !seen.contains_key(&(s.as_str(), b))) {
            return Err(Error::input(
                path,
                0,
                format!("strategy '{s}' has no row for batch {missing}, which other strategies have"),
                "every strategy is priced on the same batches; write one row per batch and strategy",
            ));
        }
    }
    Ok(())
}

fn check_groups(
    path: &Path,
    rows: &[(usize, GroupRow)],
    batches: &[(usize, BatchRow)],
    warnings: &mut Vec<String>,
) -> Result<()> {
    let known: BTreeMap<(&str, usize), &BatchRow> = batches
        .iter()
        .map(|(_, r)| ((r.strategy.as_str(), r.batch), r))
        .collect();
    let mut covered: BTreeSet<(&str, usize)> = BTreeSet::new();
    for (line, g) in rows {
        let Some(batch) = known.get(&(g.strategy.as_str(), g.batch)) else {
            return Err(bad_row(
                path,
                *line,
                format!("batch {} of strategy '{}' is not in batches.csv", g.batch, g.strategy),
                "groups.csv and batches.csv must come from the same run",
            ));
        };
        if g.ulysses == 0 || g.ring == 0 || g.size != g.ulysses * g.ring {
            return Err(bad_row(
                path,
                *line,
                format!("size {} is not ulysses {} x ring {}", g.size, g.ulysses, g.ring),
                "a group has ulysses x ring GPUs, both at least 1",
            ));
        }
        if g.microbatch >= batch.microbatches {
            return Err(bad_row(
                path,
                *line,
                format!(
                    "micro-batch {} but batches.csv says the batch has {}",
                    g.microbatch, batch.microbatches
                ),
                "micro-batches are numbered from 0",
            ));
        }
        if !(g.predicted_s.is_finite() && g.predicted_s >= 0.0) {
            return Err(bad_row(
                path,
                *line,
                format!("predicted_s = {} must be a non-negative number", g.predicted_s),
                "fix or drop the row",
            ));
        }
        covered.insert((g.strategy.as_str(), g.batch));
    }
    let uncovered = known.keys().filter(|k| !covered.contains(*k)).count();
    if uncovered > 0 {
        warnings.push(format!(
            "{}: {uncovered} (batch, strategy) pairs of batches.csv have no groups; the plans figure leaves them empty",
            path.display()
        ));
    }
    Ok(())
}

fn check_summary(summary: &Summary, batches: &[BatchRow], warnings: &mut Vec<String>) {
    let (recomputed, best_static) = strategy_summaries(batches);
    let listed: BTreeSet<&str> = summary.strategies.iter().map(|s| s.name.as_str()).collect();
    let priced: BTreeSet<&str> = recomputed.iter().map(|s| s.name.as_str()).collect();
    if listed != priced {
        warnings.push(format!(
            "summary.json lists strategies {listed:?} but batches.csv prices {priced:?}; the figures follow batches.csv"
        ));
    }
    for s in &summary.strategies {
        let Some(r) = recomputed.iter().find(|r| r.name == s.name) else {
            continue;
        };
        if (r.total_time_s - s.total_time_s).abs() > 1e-3 * r.total_time_s {
            warnings.push(format!(
                "summary.json gives {} a total of {:.4} s but its batches in batches.csv add up to {:.4} s",
                s.name, s.total_time_s, r.total_time_s
            ));
        }
    }
    if let Some(best) = best_static.filter(|b| *b != summary.best_static) {
        warnings.push(format!(
            "summary.json names '{}' the best static baseline but batches.csv makes it '{best}'",
            summary.best_static
        ));
    }
    let distinct: BTreeSet<usize> = batches.iter().map(|r| r.batch).collect();
    if distinct.len() != summary.batches {
        warnings.push(format!(
            "summary.json counts {} batches but batches.csv has {}",
            summary.batches,
            distinct.len()
        ));
    }
}
