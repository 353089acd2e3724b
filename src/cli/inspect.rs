//! `hsap-tune inspect`: what a user wants to know about a trace before planning on it.

use super::{io_out, thousands, TraceArgs};
use crate::error::Result;
use crate::trace::{Trace, TraceStats};
use clap::Args;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct InspectJson<'a> {
    source: String,
    format: crate::trace::TraceFormat,
    skipped_empty: usize,
    #[serde(flatten)]
    stats: &'a TraceStats,
}

pub fn inspect(args: &InspectArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let trace = args.trace.load()?;
    warn_skipped(&trace, err)?;
    let stats = trace.stats(args.trace.max_seq);
    if args.json {
        let json = InspectJson {
            source: trace.source.display().to_string(),
            format: trace.format,
            skipped_empty: trace.skipped_empty,
            stats: &stats,
        };
        serde_json::to_writer_pretty(&mut *out, &json).map_err(|e| io_out(e.into()))?;
        writeln!(out).map_err(io_out)?;
        return Ok(());
    }
    write_table(&trace, &stats, out).map_err(io_out)
}

/// Tells the user about zero-length documents that were skipped while reading.
pub(crate) fn warn_skipped(trace: &Trace, err: &mut dyn Write) -> Result<()> {
    if trace.skipped_empty > 0 {
        writeln!(
            err,
            "warning: {}: skipped {} zero-length documents",
            trace.source.display(),
            thousands(trace.skipped_empty as u64)
        )
        .map_err(io_out)?;
    }
    Ok(())
}

fn write_table(trace: &Trace, s: &TraceStats, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "trace        {} ({})", trace.source.display(), trace.format.name())?;
    writeln!(out, "documents    {}", thousands(s.count as u64))?;
    writeln!(out, "tokens       {}", thousands(s.total_tokens))?;
    writeln!(
        out,
        "length       min {}  median {}  mean {:.1}  p90 {}  p99 {}  max {}",
        thousands(s.min.into()),
        thousands(s.median.into()),
        s.mean,
        thousands(s.p90.into()),
        thousands(s.p99.into()),
        thousands(s.max.into())
    )?;
    let shares: Vec<String> = s
        .token_share_above
        .iter()
        .map(|t| format!(">{}K {:.1}%", t.above / 1024, 100.0 * t.share))
        .collect();
    writeln!(out, "token share  {}", shares.join("  "))?;
    if let Some(m) = s.max_seq {
        writeln!(
            out,
            "over max-seq {} documents ({} tokens) longer than {}",
            thousands(s.over_max_seq as u64),
            thousands(s.over_max_seq_tokens),
            thousands(m.into())
        )?;
    }
    writeln!(out, "histogram    documents per length bucket (log scale)")?;
    let widest = s.histogram.buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1);
    for b in &s.histogram.buckets {
        // Bars on a log scale so the long tail stays visible next to the bulk.
        let bar = if b.count == 0 {
            0
        } else {
            1 + (39.0 * (b.count as f64).ln() / (widest as f64).ln().max(f64::MIN_POSITIVE)) as usize
        };
        writeln!(
            out,
            "  {:>9} - {:<9} {:>11}  {}",
            thousands(b.lo),
            thousands(b.hi - 1),
            thousands(b.count as u64),
            "#".repeat(bar)
        )?;
    }
    Ok(())
}
