//! `hsap-tune calibrate`: fits the cost model to a user's own measurements and writes a
//! calibrated cluster profile plus a fit report (docs/calibration.md).

use super::io_out;
use crate::formats::measurements;
use crate::calibrate::nccl_tests::{self, NcclOp};
use crate::calibrate::profile::{self, Hints, MeasurementFile};
use crate::calibrate::report;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::gpu::harness::{self, HarnessPlan, KernelSet};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    /// nccl-tests logs: what all_reduce_perf, all_gather_perf, alltoall_perf, sendrecv_perf...
    /// printed (several runs per file are fine).
    #[arg(long = "nccl-tests", value_name = "LOG", num_args = 1..)]
    pub nccl_tests: Vec<PathBuf>,
    /// Measurements CSV files (docs/measurements.md), e.g. written by `hsap-tune validate`.
    #[arg(long, value_name = "CSV", num_args = 1..)]
    pub measurements: Vec<PathBuf>,
    /// The cluster to calibrate: a preset name or a cluster TOML. The profile keeps its
    /// figures and adds the fitted ones.
    #[arg(long, value_name = "NAME|FILE")]
    pub cluster: String,
    /// Nodes the logs ran on, for logs that do not list their hosts (default: the ranks fill
    /// whole nodes of the base cluster). The profile keeps the base's node count; every command
    /// takes --nodes.
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,
    /// Ranks (GPUs) the logs ran on, for logs that neither list nor imply it.
    #[arg(long, value_name = "N")]
    pub ranks: Option<u32>,
    /// The collective of logs that neither name it nor let it be inferred (e.g. all_gather,
    /// whose table alltoall prints alike): all_reduce, all_gather, reduce_scatter, alltoall,
    /// sendrecv.
    #[arg(long, value_name = "OP")]
    pub op: Option<String>,
    /// Where to write the calibrated profile (TOML).
    #[arg(long, value_name = "FILE.toml")]
    pub out: PathBuf,
    /// Where to write the fit report (fit_points.csv, fit_summary.md); default: a folder
    /// `<profile stem>-fit` next to --out.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// First run the calibration microbenchmarks on this cluster's GPUs (collectives over message
    /// sizes for every group shape, attention and GEMM shapes of --model), one process per GPU
    /// started by srun, mpirun or torchrun (docs/validate.md); their measurements are written to
    /// the report folder as microbenchmarks.csv and fitted with the other inputs.
    #[arg(long)]
    pub run: bool,
    /// With --run: the model whose attention and GEMM shapes are measured.
    #[arg(long, value_name = "NAME|FILE", default_value = "gpt-7b", requires = "run")]
    pub model: String,
    /// With --run: timed repetitions per measurement (medians are kept), and untimed warm-ups.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "run", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    #[arg(long, value_name = "N", default_value_t = 2, requires = "run")]
    pub warmup: u32,
    /// With --run: the kernels that time attention and GEMMs. torch: what training runs, through
    /// PyTorch (SDPA's flash, cuDNN and efficient backends, flash_attn 2 and 3, Transformer
    /// Engine; torch.matmul, torch._scaled_mm), by the harness this binary ships; cudnn: cuDNN's
    /// fused attention (its graph API, cuDNN 9.1 or later) and cuBLASLt, without Python;
    /// reference: cuBLAS GEMMs only, attention left to the published tables (hsap's own attention
    /// kernels prove plans correct, their speed is nobody's). Collectives are NCCL's in every set.
    #[arg(long, value_enum, value_name = "SET", default_value = "torch", requires = "run")]
    pub kernels: KernelSet,
    /// With --run: seconds to wait for every rank at the rendezvous.
    #[arg(long, value_name = "S", default_value_t = 300, requires = "run")]
    pub timeout: u64,
}

impl CalibrateArgs {
    fn hints(&self) -> Result<Hints> {
        let op = self
            .op
            .as_deref()
            .map(|name| {
                NcclOp::from_name(name).ok_or_else(|| {
                    Error::invalid(
                        format!("--op {name}: not an nccl-tests test"),
                        "use all_reduce, all_gather, reduce_scatter, alltoall or sendrecv",
                    )
                })
            })
            .transpose()?;
        for (flag, value) in [("--ranks", self.ranks), ("--nodes", self.nodes)] {
            if value == Some(0) {
                return Err(Error::invalid(format!("{flag} must be at least 1"), format!("try {flag} 2")));
            }
        }
        Ok(Hints {
            op,
            ranks: self.ranks,
            nodes: self.nodes,
        })
    }

    /// The report folder: --report, else `<stem>-fit` beside the profile.
    pub fn report_dir(&self) -> PathBuf {
        if let Some(dir) = &self.report {
            return dir.clone();
        }
        let stem = self.out.file_stem().map_or("profile".into(), |s| s.to_string_lossy().into_owned());
        self.out.with_file_name(format!("{stem}-fit"))
    }
}

pub fn calibrate(args: &CalibrateArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    if args.nccl_tests.is_empty() && args.measurements.is_empty() && !args.run {
        return Err(Error::invalid(
            "nothing to calibrate from",
            "pass nccl-tests logs with --nccl-tests, measurement files with --measurements, or --run on GPUs",
        ));
    }
    if args.run {
        let Some(measured) = run_microbenchmarks(args, err)? else {
            // Every rank but rank 0 is done once its measurements are gathered.
            return Ok(());
        };
        let mut with_run = args.clone();
        with_run.run = false;
        with_run.measurements.push(measured);
        return calibrate(&with_run, out, err);
    }
    if let Some(input) = args.nccl_tests.iter().chain(&args.measurements).find(|p| same_file(p, &args.out)) {
        return Err(Error::invalid(
            format!("--out {} is also an input", input.display()),
            "write the profile to a new file",
        ));
    }
    let hints = args.hints()?;
    let base = Cluster::resolve(&args.cluster)?;
    let logs = args.nccl_tests.iter().map(|p| nccl_tests::read(p)).collect::<Result<Vec<_>>>()?;
    let files = args
        .measurements
        .iter()
        .map(|p| Ok(MeasurementFile { path: p.clone(), rows: measurements::read_located(p)? }))
        .collect::<Result<Vec<_>>>()?;

    let outcome = profile::calibrate(&base, &logs, &files, &hints)?;
    for w in &outcome.warnings {
        writeln!(err, "warning: {w}").map_err(io_out)?;
    }

    let profile = calibrated_cluster(&base, &args.out, &outcome.calibration, args);
    let text = profile_toml(&profile, &base, args)?;
    // Whatever is written must read back as the same profile.
    let reread = Cluster::from_toml(&args.out, &text)?;
    if reread != profile {
        return Err(Error::internal("the written profile does not read back as written"));
    }
    crate::output::write_atomic(&args.out, text.as_bytes())?;

    let points = report::fit_points(&outcome);
    let dir = args.report_dir();
    crate::formats::fit_points::write(&dir.join(crate::formats::run::FIT_POINTS_CSV), &points)?;
    let figure = crate::report::calibration_figure(&points, 1)?;
    crate::output::write_atomic(&dir.join("calibration_fit.svg"), figure.svg.as_bytes())?;
    crate::output::write_atomic(&dir.join("calibration_fit.png"), &figure.png)?;
    let command = command_line(args);
    crate::output::write_atomic(&dir.join("fit_summary.md"), report::markdown(&outcome, &points, &args.out, &command).as_bytes())?;

    out.write_all(report::text(&outcome, &points).as_bytes()).map_err(io_out)?;
    let cal = &outcome.calibration;
    writeln!(
        out,
        "\nwrote {} ({}, {}, {}); report in {}",
        args.out.display(),
        crate::calibrate::plural(cal.collectives.len(), "collective fit"),
        crate::calibrate::plural(cal.kernels.len(), "kernel curve"),
        crate::calibrate::plural(cal.overlap.len(), "overlap figure"),
        dir.display()
    )
    .map_err(io_out)?;
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The base cluster with the calibration, named after the profile file (as presets are).
fn calibrated_cluster(base: &Cluster, out: &Path, calibration: &crate::cluster::Calibration, args: &CalibrateArgs) -> Cluster {
    let mut c = base.clone();
    c.name = out.file_stem().map_or_else(|| format!("{}-calibrated", base.name), |s| s.to_string_lossy().into_owned());
    let inputs = args.nccl_tests.len() + args.measurements.len();
    c.description = format!(
        "{} (calibrated by hsap-tune calibrate from {inputs} input file{})",
        base.description.trim(),
        if inputs == 1 { "" } else { "s" }
    );
    c.calibration = Some(calibration.clone());
    c
}

fn profile_toml(profile: &Cluster, base: &Cluster, args: &CalibrateArgs) -> Result<String> {
    let body = toml::to_string(profile).map_err(|e| Error::internal(format!("cannot encode the profile: {e}")))?;
    let mut text = String::from("# Calibrated cluster profile written by `hsap-tune calibrate`; see docs/calibration.md.\n");
    text.push_str(&format!("# Base cluster: {}. Inputs:\n", base.name));
    for p in args.nccl_tests.iter().chain(&args.measurements) {
        text.push_str(&format!("#   {}\n", p.display()));
    }
    text.push_str("# [calibration] overrides the datasheet figures where measured; each fit says where it came from.\n\n");
    text.push_str(&body);
    Ok(text)
}

/// The command as the user could type it again, for the report.
fn command_line(args: &CalibrateArgs) -> String {
    let mut parts = vec!["hsap-tune calibrate".to_string()];
    if !args.nccl_tests.is_empty() {
        parts.push("--nccl-tests".into());
        parts.extend(args.nccl_tests.iter().map(|p| p.display().to_string()));
    }
    if !args.measurements.is_empty() {
        parts.push("--measurements".into());
        parts.extend(args.measurements.iter().map(|p| p.display().to_string()));
    }
    parts.push(format!("--cluster {}", args.cluster));
    for (flag, v) in [("--nodes", args.nodes), ("--ranks", args.ranks)] {
        if let Some(v) = v {
            parts.push(format!("{flag} {v}"));
        }
    }
    if let Some(op) = &args.op {
        parts.push(format!("--op {op}"));
    }
    parts.push(format!("--out {}", args.out.display()));
    if let Some(r) = &args.report {
        parts.push(format!("--report {}", r.display()));
    }
    parts.join(" ")
}

/// Runs the microbenchmarks on the GPUs of this launch: NCCL's collectives on every rank (when
/// there are several), then the kernels of `--kernels` on rank 0's GPU; rank 0 writes them to the
/// report folder and gets the path back, the other ranks get `None`.
fn run_microbenchmarks(args: &CalibrateArgs, err: &mut dyn Write) -> Result<Option<PathBuf>> {
    let model = crate::model::ModelShape::resolve(&args.model)?;
    let base = Cluster::resolve(&args.cluster)?;
    // Everything the kernel set needs, named at once, before any GPU work.
    harness::require("calibrate --run", args.kernels)?;
    // The launch decides the cluster's size: one process per GPU.
    let launch = crate::gpu::launch::Launch::from_env()?;
    let nodes = launch.world.div_ceil(base.gpus_per_node);
    let cluster = base.with_nodes(nodes)?;
    let plan = crate::gpu::cuda::MicrobenchPlan::for_cluster(&cluster, &model);
    let source = format!("calibrate --run --kernels {} ({})", args.kernels.name(), cluster.name);
    let timeout = std::time::Duration::from_secs(args.timeout);
    let mut rows = Vec::new();
    // One process of the torch or cudnn set times the kernels alone: there is nothing to send.
    if launch.world > 1 || args.kernels == KernelSet::Reference {
        crate::gpu::cuda::check_libraries()?;
        writeln!(
            err,
            "rank {}: collectives on {} GPUs ({} group shapes, {} message sizes){}",
            launch.rank,
            cluster.gpus(),
            plan.groups.len(),
            plan.sizes.len(),
            if args.kernels == KernelSet::Reference { format!(", {} GEMM shapes with cuBLAS", plan.gemms.len()) } else { String::new() }
        )
        .map_err(io_out)?;
        let reference_gemms = args.kernels == KernelSet::Reference;
        let Some(measured) = crate::gpu::cuda::microbenchmarks(&cluster, &plan, args.repeats, args.warmup, timeout, &source, reference_gemms)? else {
            return Ok(None);
        };
        rows = measured;
    } else {
        writeln!(err, "one process: no collectives measured (launch one process per GPU of whole nodes to measure them)").map_err(io_out)?;
    }
    let dir = args.report_dir();
    if args.kernels != KernelSet::Reference {
        let kernels = HarnessPlan::for_calibration(&plan, &cluster, args.repeats, args.warmup, &source);
        let by = match args.kernels {
            KernelSet::Torch => format!("PyTorch, {}", harness::python().display()),
            _ => "cuDNN's fused attention and cuBLASLt".into(),
        };
        writeln!(
            err,
            "timing {} attention calls and {} GEMMs with the production kernels ({by}) on GPU {}",
            kernels.attention.len(),
            kernels.gemms.len(),
            launch.local_rank
        )
        .map_err(io_out)?;
        rows.extend(harness::run_production(args.kernels, &kernels, &dir, launch.local_rank, err)?);
    }
    let path = dir.join("microbenchmarks.csv");
    measurements::write(&path, &rows)?;
    writeln!(err, "wrote {} ({} measurements)", path.display(), rows.len()).map_err(io_out)?;
    Ok(Some(path))
}
