//! `hsap-tune report --from DIR`: draws the comparison report of a planner run.

use super::io_out;
use crate::error::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The run directory the planner wrote (its --out): summary.json, trace.json, batches.csv,
    /// groups.csv, and optionally measurements.csv and fit_points.csv.
    #[arg(long = "from", value_name = "DIR")]
    pub from: PathBuf,
    /// Where to write the report (default: DIR/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn report(args: &ReportArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let target = args
        .out
        .clone()
        .unwrap_or_else(|| args.from.join(crate::report::REPORT_DIR));
    let files = crate::report::render_to(&args.from, &target)?;
    for w in &files.warnings {
        writeln!(err, "warning: {w}").map_err(io_out)?;
    }
    let figures = files
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg"))
        .count();
    writeln!(
        out,
        "wrote {} ({figures} figures as SVG, PNG and CSV, summary.md) in {}",
        files.index_html.display(),
        files.dir.display()
    )
    .map_err(io_out)?;
    Ok(())
}
