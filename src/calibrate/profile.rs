//! From parsed logs and measurement rows to a [`Calibration`]: works out each run's collective,
//! rank and node counts (from the log, else from the caller's `--op/--ranks/--nodes`, else by a
//! stated assumption), pools the runs that measured the same thing, fits them, and keeps every
//! point with its fitted value for the report.

use super::fit::{self, EnvelopeFit, Holdout, Point};
use crate::formats::measurements::{MeasuredKind, Measurement};
use super::nccl_tests::{NcclLog, NcclOp, NcclRun, OpFinding};
use super::plural;
use crate::cluster::{
    Calibration, Cluster, Collective, CollectiveFit, CollectiveRegime, KernelFit, KernelKind, LinkLevel, OverlapFit, GB,
};
use crate::cost::AttentionKernel;
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the caller says about logs that do not say it themselves.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// The test of logs that neither name it nor let it be inferred.
    pub op: Option<NcclOp>,
    /// The rank count of logs that do not list it.
    pub ranks: Option<u32>,
    /// The node count of logs that do not list their hosts.
    pub nodes: Option<u32>,
}

/// One measurement file, read with line numbers.
pub struct MeasurementFile {
    pub path: PathBuf,
    pub rows: Vec<(usize, Measurement)>,
}

/// One run's worth of one collective, resolved and ready to fit.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// "path run 1 (lines 1-56)" or "path".
    pub source: String,
    /// A short name for tables: "file.txt run 1" or "file.csv".
    pub label: String,
    pub op: Collective,
    pub level: LinkLevel,
    pub ranks: u32,
    pub nodes: u32,
    /// One point per size, in size order: the faster of out-of-place and in-place.
    pub points: Vec<Point>,
    /// How the op, ranks and nodes were known.
    pub facts: Vec<String>,
    /// What the log lacks (from the parser).
    pub notes: Vec<String>,
    pub holdout: Holdout,
    pub peak_busbw_gb_per_s: Option<f64>,
}

/// One fitted (collective, level, ranks) and the series it pooled.
#[derive(Debug, Clone, Serialize)]
pub struct GroupFit {
    pub fit: CollectiveFit,
    pub envelope: EnvelopeFit,
    pub series: Vec<usize>,
}

/// Everything `calibrate` found, fitted and assumed.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub calibration: Calibration,
    pub series: Vec<Series>,
    pub groups: Vec<GroupFit>,
    /// Things the user should know: skipped runs, assumptions, mismatched GPUs.
    pub warnings: Vec<String>,
}

/// Fits a calibration for `base` from logs and measurement files.
pub fn calibrate(base: &Cluster, logs: &[NcclLog], files: &[MeasurementFile], hints: &Hints) -> Result<Outcome> {
    let mut warnings = Vec::new();
    let mut series = Vec::new();
    let mut used = UsedHints::default();
    for log in logs {
        for run in &log.runs {
            if let Some(s) = resolve_run(base, &log.path, run, hints, &mut used, &mut warnings)? {
                series.push(s);
            }
        }
    }
    for (flag, given, was_used) in [
        ("--op", hints.op.is_some(), used.op),
        ("--ranks", hints.ranks.is_some(), used.ranks),
        ("--nodes", hints.nodes.is_some(), used.nodes),
    ] {
        if given && !was_used {
            warnings.push(format!("{flag} was not needed: every log says it (or implies it) itself, and the log's word is kept"));
        }
    }
    for file in files {
        refuse_cpu_rows(base, file)?;
        warn_other_gpus(base, file, &mut warnings);
        series.extend(measured_collectives(file)?);
    }

    // Runs of the same collective at the same level and rank count measure the same thing.
    let mut by_key: BTreeMap<(Collective, LinkLevel, u32), Vec<usize>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        by_key.entry((s.op, s.level, s.ranks)).or_default().push(i);
    }
    let mut groups = Vec::new();
    for ((op, _, ranks), members) in by_key {
        let level = series[members[0]].level;
        let points: Vec<Point> = members.iter().flat_map(|&i| series[i].points.iter().copied()).collect();
        let Some(envelope) = fit::fit_envelope(&points) else {
            warnings.push(format!(
                "{} {} on {ranks} ranks: fewer than two message sizes measured; no fit",
                op.name(),
                level.name()
            ));
            continue;
        };
        let sources: Vec<&str> = members.iter().map(|&i| series[i].source.as_str()).collect();
        let nodes = members.iter().map(|&i| series[i].nodes).max();
        if let Some(w) = disagreement(&series, &members, &envelope) {
            warnings.push(w);
        }
        let fit = collective_fit(op, level, ranks, nodes, &envelope, &sources, &points);
        warnings.extend(trust(base, &fit, &envelope, &points, &sources)?);
        groups.push(GroupFit { fit, envelope, series: members });
    }

    let mut kernels = Vec::new();
    for file in files {
        kernels.extend(kernel_fits(file, &mut warnings)?);
    }
    let overlap = overlap_fits(files);
    if groups.is_empty() && kernels.is_empty() && overlap.is_empty() {
        return Err(Error::invalid(
            "nothing to calibrate: the inputs hold no collective, kernel or overlap measurements",
            "pass nccl-tests logs with --nccl-tests or a measurements CSV with --measurements",
        ));
    }
    if base.calibration.is_some() {
        warnings.push(format!("the base cluster '{}' was already calibrated; its calibration is replaced", base.name));
    }
    Ok(Outcome {
        calibration: Calibration {
            collectives: groups.iter().map(|g| g.fit.clone()).collect(),
            kernels,
            overlap,
        },
        series,
        groups,
        warnings,
    })
}

/// Which of the caller's hints some log needed.
#[derive(Default)]
struct UsedHints {
    op: bool,
    ranks: bool,
    nodes: bool,
}

/// When runs pooled into one fit disagree far more than each run scatters about its own fit,
/// they probably come from different clusters or settings.
fn disagreement(series: &[Series], members: &[usize], pooled: &EnvelopeFit) -> Option<String> {
    if members.len() < 2 {
        return None;
    }
    let own = members
        .iter()
        .filter_map(|&i| fit::fit_envelope(&series[i].points))
        .map(|f| f.rms_log_residual)
        .fold(0.0, f64::max);
    (pooled.rms_log_residual > 0.1_f64.max(2.0 * own)).then(|| {
        let labels: Vec<&str> = members.iter().map(|&i| series[i].label.as_str()).collect();
        format!(
            "{} disagree: fitted together they miss by {:.0}% rms, each alone by at most {:.0}%; are they from the same cluster and settings? Calibrate from one cluster's logs",
            labels.join(", "),
            pooled.rms_log_residual * 100.0,
            own * 100.0
        )
    })
}

/// Works out a run's collective, ranks and nodes; `None` (with a warning) for runs of tests
/// the cost model does not price.
fn resolve_run(
    base: &Cluster,
    path: &Path,
    run: &NcclRun,
    hints: &Hints,
    used: &mut UsedHints,
    warnings: &mut Vec<String>,
) -> Result<Option<Series>> {
    let source = format!("{} run {} (lines {}-{})", path.display(), run.index, run.first_line, run.last_line);
    let label = format!("{} run {}", file_label(path), run.index);
    let mut facts = Vec::new();
    let ops_hint = "pass --op with one of all_reduce, all_gather, reduce_scatter, alltoall, sendrecv";
    let op = match (&run.op, hints.op) {
        (OpFinding::Known { op, from, .. }, _) => {
            facts.push(format!("{op}: {from}"));
            *op
        }
        (OpFinding::Ambiguous { candidates, why }, Some(op)) => {
            if !candidates.contains(&op) {
                return Err(Error::input(
                    path,
                    run.first_line,
                    format!("--op {op} does not fit this table: {why}"),
                    ops_hint,
                ));
            }
            used.op = true;
            facts.push(format!("{op}: --op ({why})"));
            op
        }
        (OpFinding::Unknown { .. }, Some(op)) => {
            used.op = true;
            facts.push(format!("{op}: --op"));
            op
        }
        (OpFinding::Ambiguous { why, .. } | OpFinding::Unknown { why }, None) => {
            return Err(Error::input(
                path,
                run.first_line,
                format!("cannot tell which collective this run measured: the log names no test and {why}"),
                ops_hint,
            ))
        }
    };
    let Some(collective) = op.collective() else {
        warnings.push(format!("{source}: {op} is not a collective the cost model prices; run skipped"));
        return Ok(None);
    };

    let ranks = match (&run.ranks, hints.ranks) {
        (Some(r), _) => {
            facts.push(format!("{} ranks: {}", r.value, r.from));
            r.value
        }
        (None, Some(n)) => {
            if let Some((lo, hi)) = run.rank_range {
                if n < lo || n > hi {
                    return Err(Error::input(
                        path,
                        run.first_line,
                        format!("--ranks {n} does not fit this table: busbw/algbw puts the rank count between {lo} and {hi}"),
                        "pass the rank count the run used",
                    ));
                }
            }
            used.ranks = true;
            facts.push(format!("{n} ranks: --ranks"));
            n
        }
        (None, None) => {
            let range = run.rank_range.map_or(String::new(), |(lo, hi)| format!(" (busbw/algbw puts it between {lo} and {hi})"));
            return Err(Error::input(
                path,
                run.first_line,
                format!("the log does not say how many ranks ran{range}"),
                "pass --ranks N (the total number of GPUs of the run)",
            ));
        }
    };
    if collective.busbw_factor(ranks) == 0.0 {
        warnings.push(format!("{source}: a single-rank {op} moves no data between GPUs; run skipped"));
        return Ok(None);
    }

    let nodes = match (&run.nodes, hints.nodes) {
        (Some(n), _) => {
            facts.push(format!("{}: {}", plural(n.value as usize, "node"), n.from));
            n.value
        }
        (None, Some(n)) => {
            used.nodes = true;
            facts.push(format!("{}: --nodes", plural(n as usize, "node")));
            n
        }
        (None, None) => {
            let n = ranks.div_ceil(base.gpus_per_node);
            let assumption = format!(
                "{} assumed: the log does not list its hosts, so its {ranks} ranks are taken to fill nodes of {} GPUs (pass --nodes to say otherwise)",
                plural(n as usize, "node"),
                base.gpus_per_node
            );
            warnings.push(format!("{source}: {assumption}"));
            facts.push(assumption);
            n
        }
    };
    if nodes == 0 || nodes > ranks {
        return Err(Error::input(
            path,
            run.first_line,
            format!("{ranks} ranks cannot span {nodes} nodes"),
            "pass --nodes between 1 and the rank count",
        ));
    }
    check_gpu(base, &source, run, warnings);

    let points = fit::run_points(run);
    Ok(Some(Series {
        source,
        label,
        op: collective,
        level: if nodes == 1 { LinkLevel::Intra } else { LinkLevel::Inter },
        ranks,
        nodes,
        holdout: fit::holdout(&points),
        points,
        facts,
        notes: run.notes.clone(),
        peak_busbw_gb_per_s: Some(run.peak_busbw_gb_per_s()),
    }))
}

/// The GPU model in a device name: "A100" in "NVIDIA A100-SXM4-80GB".
fn gpu_model(name: &str) -> Option<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|t| t.len() == 4 && t.starts_with(|c: char| c.is_ascii_uppercase()) && t[1..].chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// Refuses rows measured on a CPU: every profile prices a cluster's GPUs.
fn refuse_cpu_rows(base: &Cluster, file: &MeasurementFile) -> Result<()> {
    let used = |m: &Measurement| !matches!(m.kind, MeasuredKind::Phase | MeasuredKind::Step);
    let Some((line, m)) = file.rows.iter().find(|(_, m)| used(m) && m.on_cpu()) else { return Ok(()) };
    Err(Error::input(
        &file.path,
        *line,
        format!(
            "the {} row{} was measured on a CPU (device = {}); the profile prices the GPUs of '{}' ({})",
            m.op,
            match m.kernel_label() {
                k if k.is_empty() => String::new(),
                k => format!(" of {k}"),
            },
            m.device.trim(),
            base.name,
            base.gpu.name
        ),
        "calibrate from rows measured on the cluster's GPUs (`hsap-tune calibrate --run --kernels torch` on a GPU node)",
    ))
}

/// Warns once per file when its rows name a GPU that is not the base cluster's.
fn warn_other_gpus(base: &Cluster, file: &MeasurementFile, warnings: &mut Vec<String>) {
    let Some(ours) = gpu_model(&base.gpu.name) else { return };
    if let Some((line, m)) = file.rows.iter().find(|(_, m)| gpu_model(&m.device).is_some_and(|g| g != ours)) {
        warnings.push(format!("{}:{line}: measured on {}, the base cluster has {}", file.path.display(), m.device.trim(), base.gpu.name));
    }
}

/// Warns when the log's GPUs are not the base cluster's (an H100 log on an A100 preset).
fn check_gpu(base: &Cluster, source: &str, run: &NcclRun, warnings: &mut Vec<String>) {
    let model = gpu_model;
    let Some(ours) = model(&base.gpu.name) else { return };
    for name in run.device_names() {
        if model(name).is_some_and(|m| m != ours) {
            warnings.push(format!("{source}: the log ran on {name}, the base cluster has {}", base.gpu.name));
        }
    }
    // Fewer GPUs per node share a node's NICs in the log than in the base cluster (or more):
    // its inter-node figures describe another topology.
    if let Some(gpn) = &run.gpus_per_node {
        if gpn.value != base.gpus_per_node && run.nodes.as_ref().is_some_and(|n| n.value > 1) {
            warnings.push(format!(
                "{source}: the log has {} GPUs per node ({}), the base cluster '{}' {}: its inter-node figures describe nodes shared by {} GPUs",
                gpn.value, gpn.from, base.name, base.gpus_per_node, gpn.value
            ));
        } else if gpn.value > base.gpus_per_node {
            warnings.push(format!(
                "{source}: the log has {} GPUs per node, the base cluster '{}' {}",
                gpn.value, base.name, base.gpus_per_node
            ));
        }
    }
}

/// A fit worst errors above this are flagged: the envelope does not describe the curve.
const POOR_FIT_MAX_REL_ERROR: f64 = 0.25;

/// Refuses a fit that makes no physical sense (a bandwidth above what the base cluster's links
/// carry, or one the sizes never measured because the latency outweighs the bandwidth term up to
/// the largest size), and flags one that fits its points poorly.
fn trust(base: &Cluster, fit: &CollectiveFit, envelope: &EnvelopeFit, points: &[Point], sources: &[&str]) -> Result<Option<String>> {
    let what = format!("{} {} on {} ranks ({})", fit.op.name(), fit.level.name(), fit.ranks, sources.join("; "));
    let (smallest, largest) = points
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), p| (lo.min(p.bytes), hi.max(p.bytes)));
    let sizes = format!("{} .. {}", crate::units::bytes(smallest), crate::units::bytes(largest));
    let saturation = envelope.envelope.saturation_bytes();
    if largest < saturation {
        return Err(Error::invalid(
            format!(
                "{what}: the sizes measured ({sizes}) do not reach the bandwidth regime: the fitted {:.1} us latency outweighs the bandwidth term up to {} (the fit would need {} to run at half its bus bandwidth), so its {} GB/s bus bandwidth was never measured",
                fit.latency_us,
                crate::units::bytes(largest),
                crate::units::bytes(saturation),
                fit.busbw_gb_per_s
            ),
            "rerun the test up to large messages (e.g. all_reduce_perf -b 8 -e 8G -f 2), or leave this log out",
        ));
    }
    if let Some(problem) = crate::cluster::Calibration::unphysical_fit(base, fit) {
        return Err(Error::invalid(
            format!("{what}: {problem}"),
            format!(
                "is the log from a '{}' cluster? Calibrate against the cluster it ran on (--cluster), and check its rank and node counts (--ranks, --nodes)",
                base.name
            ),
        ));
    }
    Ok((fit.max_rel_error > POOR_FIT_MAX_REL_ERROR).then(|| {
        format!(
            "{what}: the fit misses a measured size by {:.1}% ({} sizes, {sizes}); its figures are rough",
            fit.max_rel_error * 100.0,
            fit.points
        )
    }))
}

fn collective_fit(
    op: Collective,
    level: LinkLevel,
    ranks: u32,
    nodes: Option<u32>,
    fit: &EnvelopeFit,
    sources: &[&str],
    points: &[Point],
) -> CollectiveFit {
    // The fit is in seconds per byte at the measured rank count; the profile stores bus
    // bandwidth, which nccl-tests defines to be independent of the rank count.
    let factor = op.busbw_factor(ranks);
    let busbw = |s_per_byte: f64| factor / (s_per_byte * GB);
    let regimes: Vec<CollectiveRegime> = fit
        .envelope
        .regimes()
        .iter()
        .map(|r| CollectiveRegime {
            latency_us: round6(r.line.latency_s * 1e6),
            busbw_gb_per_s: round6(busbw(r.line.s_per_byte)),
            from_bytes: r.from_bytes.round(),
        })
        .collect();
    let first = regimes.first().map_or(0.0, |r| r.latency_us);
    let last = regimes.last().map_or(0.0, |r| r.busbw_gb_per_s);
    CollectiveFit {
        op,
        level,
        ranks,
        nodes,
        latency_us: first,
        busbw_gb_per_s: last,
        saturation_bytes: fit.envelope.saturation_bytes().round(),
        points: fit.points as u32,
        rms_log_residual: round6(fit.rms_log_residual),
        max_rel_error: round6(fit.max_rel_error),
        provenance: format!(
            "{}: {} sizes, envelope of {} fitted by least squares on ln(time), rms log residual {:.4}, max error {:.1}%",
            sources.join("; "),
            fit.points,
            plural(regimes.len(), "alpha-beta line"),
            fit.rms_log_residual,
            fit.max_rel_error * 100.0
        ),
        regimes,
        measured: points.iter().map(|p| [p.bytes, p.time_s]).collect(),
    }
}

/// Collective rows of a measurements file (not overlapped), as series per (op, nodes, ranks).
fn measured_collectives(file: &MeasurementFile) -> Result<Vec<Series>> {
    let mut by_key: BTreeMap<(Collective, u32, u32), Vec<Point>> = BTreeMap::new();
    for (line, m) in &file.rows {
        if m.kind != MeasuredKind::Collective || m.overlapped {
            continue;
        }
        let op = NcclOp::from_name(&m.op).and_then(NcclOp::collective).ok_or_else(|| {
            Error::input(
                &file.path,
                *line,
                format!("unknown collective '{}'", m.op),
                "collective rows name one of all_to_all, all_gather, reduce_scatter, all_reduce, send_recv",
            )
        })?;
        let bytes = m.bytes.filter(|b| b.is_finite() && *b >= 0.0).ok_or_else(|| {
            Error::input(&file.path, *line, "a collective row needs `bytes`", "give the bytes per rank (nccl-tests' size)")
        })?;
        if m.ranks == 0 || m.nodes == 0 || m.nodes > m.ranks {
            return Err(Error::input(
                &file.path,
                *line,
                format!("{} ranks on {} nodes is not a placement", m.ranks, m.nodes),
                "ranks and nodes must be at least 1, and nodes at most ranks",
            ));
        }
        by_key.entry((op, m.nodes, m.ranks)).or_default().push(Point { bytes, time_s: m.time_s });
    }
    Ok(by_key
        .into_iter()
        .filter(|((op, _, ranks), _)| op.busbw_factor(*ranks) > 0.0)
        .map(|((op, nodes, ranks), points)| Series {
            source: file.path.display().to_string(),
            label: file_label(&file.path),
            op,
            level: if nodes == 1 { LinkLevel::Intra } else { LinkLevel::Inter },
            ranks,
            nodes,
            holdout: Holdout::Skipped {
                reason: "measurement rows are not checked by hold-out (their sizes need not form a sweep)".into(),
            },
            points,
            facts: vec![format!("{} on {ranks} ranks, {}, from the measurement rows", op.name(), plural(nodes as usize, "node"))],
            notes: Vec::new(),
            peak_busbw_gb_per_s: None,
        })
        .collect())
}

/// Kernel rows (attention forward/backward, GEMM) as throughput curves: one per kind, kernel and
/// (head_dim, causal, varlen) for attention, one per kind, kernel and dtype for GEMMs. Attention
/// rows must name their kernel; rows of hsap's reference kernels are refused, rows of a kernel
/// the cost model does not price are left out with a warning.
fn kernel_fits(file: &MeasurementFile, warnings: &mut Vec<String>) -> Result<Vec<KernelFit>> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Key {
        kind: u8,
        kernel: String,
        head_dim: Option<u32>,
        causal: Option<bool>,
        varlen: Option<bool>,
        dtype: String,
    }
    struct Curve {
        fit: KernelFit,
        sizes: BTreeMap<u64, Vec<f64>>,
        lines: Vec<usize>,
    }
    let mut curves: BTreeMap<Key, Curve> = BTreeMap::new();
    let mut unpriced: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (line, m) in &file.rows {
        let kind = match m.kind {
            MeasuredKind::AttentionFwd => KernelKind::AttentionFwd,
            MeasuredKind::AttentionBwd => KernelKind::AttentionBwd,
            MeasuredKind::Gemm => KernelKind::Gemm,
            _ => continue,
        };
        if m.overlapped {
            continue;
        }
        let bad = |what: String, hint: &str| Error::input(&file.path, *line, what, hint.to_string());
        let kernel = m.kernel.trim();
        if kind != KernelKind::Gemm {
            refuse_unfittable_attention(file, *line, m)?;
            if AttentionKernel::of_measured(kernel).is_none() {
                unpriced.entry(kernel.to_string()).or_default().push(*line);
                continue;
            }
        }
        let flops = m.flops.filter(|f| f.is_finite() && *f > 0.0).ok_or_else(|| {
            bad(
                format!("the {} row has no positive `flops`", m.op),
                "kernel rows give the floating-point operations of the timed work, so that throughput follows",
            )
        })?;
        let shape_int = |key: &str| -> Result<Option<u64>> {
            m.shape_value(key)
                .map(|v| v.parse::<u64>().map_err(|_| bad(format!("shape {key}={v} is not a whole number"), "see docs/measurements.md")))
                .transpose()
        };
        let shape_flag = |key: &str| -> Result<Option<bool>> {
            match m.shape_value(key) {
                None => Ok(None),
                Some("1" | "true") => Ok(Some(true)),
                Some("0" | "false") => Ok(Some(false)),
                Some(v) => Err(bad(format!("shape {key}={v} is not 0/1 or true/false"), "see docs/measurements.md")),
            }
        };
        let (size, head_dim, causal, varlen) = match kind {
            KernelKind::Gemm => {
                let dims = [shape_int("m")?, shape_int("n")?, shape_int("k")?];
                let [Some(a), Some(b), Some(c)] = dims else {
                    return Err(bad(format!("GEMM shape '{}' lacks m, n or k", m.shape), "write the shape as m=4096;n=4096;k=4096"));
                };
                (a.saturating_mul(b).saturating_mul(c), None, None, None)
            }
            _ => {
                let seqlen = shape_int("seqlen")?.ok_or_else(|| {
                    bad(
                        format!("attention shape '{}' lacks seqlen", m.shape),
                        "write the shape as seqlen=8192;heads=32;head_dim=128;causal=1",
                    )
                })?;
                let head_dim = shape_int("head_dim")?.and_then(|h| u32::try_from(h).ok());
                let varlen = shape_flag("varlen")?;
                // Packed documents: the curve's size is the document length (exact for the equal
                // documents the harness packs, the mean otherwise).
                let docs = if varlen == Some(true) { shape_int("docs")?.unwrap_or(1).max(1) } else { 1 };
                (seqlen / docs, head_dim, shape_flag("causal")?, varlen)
            }
        };
        let key = Key {
            kind: kind as u8,
            kernel: kernel.to_string(),
            head_dim,
            causal,
            varlen,
            dtype: m.dtype.trim().to_string(),
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let curve = curves.entry(key).or_insert_with(|| Curve {
            fit: KernelFit {
                kernel: non_empty(kernel.to_string()),
                library: non_empty([m.library.trim(), m.version.trim()].join(" ").trim().to_string()),
                device: non_empty(m.device.trim().to_string()),
                head_dim,
                causal,
                varlen,
                dtype: if kind == KernelKind::Gemm { non_empty(m.dtype.trim().to_string()) } else { None },
                ..KernelFit::curve(kind, Vec::new(), String::new())
            },
            sizes: BTreeMap::new(),
            lines: Vec::new(),
        });
        curve.sizes.entry(size).or_default().push(flops / m.time_s / 1e12);
        curve.lines.push(*line);
    }
    for (kernel, lines) in unpriced {
        warnings.push(format!(
            "{}: attention kernel '{kernel}' (lines {}) is none the cost model prices (FlashAttention-2 and 3, cuDNN, Triton, unfused); its rows are left out of the profile",
            file.path.display(),
            line_list(&lines)
        ));
    }
    Ok(curves
        .into_values()
        .map(|c| KernelFit {
            provenance: format!(
                "{}: {}{} rows (lines {}), median TFLOP/s per size",
                file.path.display(),
                c.fit.kernel.as_ref().map_or(String::new(), |k| format!("{k}{}, ", c.fit.library.as_ref().map_or(String::new(), |l| format!(" ({l})")))),
                c.lines.len(),
                line_list(&c.lines)
            ),
            // Every size holds at least the row that created it.
            points: c.sizes.into_iter().filter_map(|(size, tflops)| Some((size as f64, crate::stats::median(&tflops)?))).collect(),
            ..c.fit
        })
        .collect())
}

/// Attention rows that must never become attention efficiency: hsap's reference kernels, and
/// rows that do not say which kernel ran (hsap's own files said nothing before rows named their
/// kernel, and theirs were the reference kernels).
fn refuse_unfittable_attention(file: &MeasurementFile, line: usize, m: &Measurement) -> Result<()> {
    let kernel = m.kernel.trim();
    if kernel == crate::formats::measurements::REFERENCE_KERNEL {
        return Err(Error::input(
            &file.path,
            line,
            format!(
                "the {} row was timed with hsap's reference attention kernels (kernel = {kernel}: kernels/attention.cu, f32 on CUDA cores), which prove plans correct but run an order of magnitude slower than any training framework's; they are never fitted as attention efficiency",
                m.op
            ),
            "measure the training kernels: `hsap-tune calibrate --run --kernels torch`, or `validate --kernels torch`; or leave out the rows with kernel=hsap_reference (docs/calibration.md)",
        ));
    }
    if kernel.is_empty() {
        return Err(Error::input(
            &file.path,
            line,
            format!("the {} row names no kernel: attention is fitted per kernel, and rows that do not say theirs cannot be told from hsap's reference kernels", m.op),
            "add a `kernel` column naming the kernel that ran (flash_attn_2, flash_attn_3, sdpa_flash, sdpa_cudnn, te_fused_attn...; docs/measurements.md)",
        ));
    }
    Ok(())
}

/// Overlap efficiency per op: where the same operation (kind, op, ranks, nodes, bytes, flops
/// and shape) was measured both alone and overlapped, time alone / time overlapped.
fn overlap_fits(files: &[MeasurementFile]) -> Vec<OverlapFit> {
    #[derive(Default)]
    struct Pair {
        alone: Vec<f64>,
        overlapped: Vec<f64>,
    }
    let mut pairs: BTreeMap<String, BTreeMap<String, Pair>> = BTreeMap::new();
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        for (_, m) in &file.rows {
            if matches!(m.kind, MeasuredKind::Phase | MeasuredKind::Step) {
                continue;
            }
            let mut shape: Vec<String> = m
                .shape
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| format!("{}={}", k.trim(), v.trim()))
                .collect();
            shape.sort();
            let key = format!(
                "{:?}|{}|{}|{:?}|{:?}|{}",
                m.kind,
                m.ranks,
                m.nodes,
                m.bytes.map(f64::to_bits),
                m.flops.map(f64::to_bits),
                shape.join(";")
            );
            let pair = pairs.entry(m.op.clone()).or_default().entry(key).or_default();
            if m.overlapped {
                pair.overlapped.push(m.time_s);
            } else {
                pair.alone.push(m.time_s);
            }
            let src = sources.entry(m.op.clone()).or_default();
            let name = file.path.display().to_string();
            if !src.contains(&name) {
                src.push(name);
            }
        }
    }
    pairs
        .into_iter()
        .filter_map(|(op, shapes)| {
            let ratios: Vec<f64> = shapes
                .into_values()
                .filter_map(|p| Some(crate::stats::median(&p.alone)? / crate::stats::median(&p.overlapped)?))
                .collect();
            let efficiency = crate::stats::median(&ratios)?;
            let n = ratios.len();
            Some(OverlapFit {
                provenance: format!(
                    "{}: {n} shapes measured alone and overlapped, median of time alone / time overlapped",
                    sources.get(&op).map(|s| s.join("; ")).unwrap_or_default()
                ),
                efficiency,
                pairs: n as u32,
                op,
            })
        })
        .collect()
}

/// Six significant digits: far finer than any fit is sure of, and a profile people can read.
fn round6(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(5 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned())
}

/// "3-5, 9" for line numbers.
fn line_list(lines: &[usize]) -> String {
    let mut sorted = lines.to_vec();
    sorted.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start { start.to_string() } else { format!("{start}-{}", sorted[i]) });
        i += 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_six_significant_digits() {
        assert_eq!(round6(119.31944138034599), 119.319);
        assert_eq!(round6(0.018759762407597098), 0.0187598);
        assert_eq!(round6(186392.245), 186392.0);
        assert_eq!(round6(0.0), 0.0);
    }

    #[test]
    fn line_lists_collapse_runs() {
        assert_eq!(line_list(&[5, 2, 3, 4, 9]), "2-5, 9");
        assert_eq!(line_list(&[7]), "7");
    }
}
