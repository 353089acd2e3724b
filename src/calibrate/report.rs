//! The fit report: a table of the fits and of every point's error, printed and written as
//! `fit_summary.md`, and the points (`formats::fit_points`) for `fit_points.csv` and the report
//! module's figure.

use super::fit::Holdout;
use super::plural;
use super::profile::Outcome;
use crate::formats::fit_points::FitPoint;
use crate::units::{self, percent, signed_percent, significant};
use std::path::Path;

/// Every measured collective point with its fitted value.
pub fn fit_points(outcome: &Outcome) -> Vec<FitPoint> {
    let mut rows = Vec::new();
    for group in &outcome.groups {
        for &i in &group.series {
            let series = &outcome.series[i];
            let held = match &series.holdout {
                Holdout::Done { held_out, .. } => held_out.as_slice(),
                Holdout::Skipped { .. } => &[],
            };
            for p in &series.points {
                let fitted_s = group.fit.time_s(p.bytes, series.ranks);
                let h = held.iter().find(|h| h.bytes == p.bytes);
                rows.push(FitPoint {
                    held_out: h.is_some(),
                    holdout_predicted_s: h.map(|h| h.predicted_s),
                    holdout_rel_error: h.map(|h| (h.predicted_s - h.measured_s) / h.measured_s),
                    nodes: Some(series.nodes),
                    source: series.source.clone(),
                    ..FitPoint::new(series.op, series.level, series.ranks, p.bytes, p.time_s, fitted_s)
                });
            }
        }
    }
    rows
}

/// A table rendered as aligned text or as Markdown.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Table {
        Table { header, rows: Vec::new() }
    }

    fn text(&self, indent: &str) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| self.rows.iter().map(|r| r[c].len()).chain([self.header[c].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (s, w))| if self.is_text(c) { format!("{s:<w$}") } else { format!("{s:>w$}") })
                .collect();
            format!("{indent}{}\n", padded.join("  ").trim_end())
        };
        let mut out = line(self.header.clone());
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }

    /// Names and notes read best left-aligned, numbers right-aligned.
    fn is_text(&self, column: usize) -> bool {
        column == 0 || ["op", "level", "kind", "note"].contains(&self.header[column])
    }

    fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.header.join(" | "));
        out.push_str(&format!("|{}\n", (0..self.header.len()).map(|c| if self.is_text(c) { "---|" } else { "---:|" }).collect::<String>()));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }
}

/// Seconds as a number of microseconds, for the `_us` columns.
fn us(seconds: f64) -> String {
    significant(seconds * 1e6)
}

fn gbps(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn fits_table(outcome: &Outcome) -> Table {
    let mut t = Table::new(vec![
        "op", "level", "ranks", "nodes", "sizes", "regimes", "latency_us", "busbw_GB/s", "saturation", "rms_log", "max_err",
    ]);
    for g in &outcome.groups {
        let f = &g.fit;
        t.rows.push(vec![
            f.op.name().to_string(),
            f.level.name().to_string(),
            f.ranks.to_string(),
            f.nodes.map_or("?".into(), |n| n.to_string()),
            f.points.to_string(),
            f.regimes.len().to_string(),
            format!("{:.1}", f.latency_us),
            gbps(f.busbw_gb_per_s),
            units::bytes(f.saturation_bytes.round()),
            format!("{:.4}", f.rms_log_residual),
            percent(f.max_rel_error),
        ]);
    }
    t
}

fn regime_lines(outcome: &Outcome) -> Vec<String> {
    outcome
        .groups
        .iter()
        .map(|g| {
            let f = &g.fit;
            let parts: Vec<String> = f
                .regimes
                .iter()
                .map(|r| format!("{:.1} us + busbw {} GB/s from {}", r.latency_us, gbps(r.busbw_gb_per_s), units::bytes(r.from_bytes.round())))
                .collect();
            format!("{} {} {} ranks: {}", f.op.name(), f.level.name(), f.ranks, parts.join("; "))
        })
        .collect()
}

fn holdout_table(outcome: &Outcome) -> Table {
    let mut t = Table::new(vec!["source", "op", "sizes", "held out >= 1 MB", "median error", "worst", "note"]);
    for s in &outcome.series {
        let row = match &s.holdout {
            Holdout::Done {
                held_out,
                median_rel_error,
                judged,
                ..
            } => {
                let worst = held_out.iter().filter(|h| h.bytes >= super::fit::HOLDOUT_MIN_BYTES).map(|h| h.rel_error).fold(0.0, f64::max);
                vec![
                    s.label.clone(),
                    s.op.name().to_string(),
                    s.points.len().to_string(),
                    judged.to_string(),
                    percent(*median_rel_error),
                    percent(worst),
                    String::new(),
                ]
            }
            Holdout::Skipped { reason } => vec![
                s.label.clone(),
                s.op.name().to_string(),
                s.points.len().to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("skipped: {reason}"),
            ],
        };
        t.rows.push(row);
    }
    t
}

fn point_tables(outcome: &Outcome, points: &[FitPoint]) -> Vec<(String, Table)> {
    let mut out = Vec::new();
    for g in &outcome.groups {
        for &i in &g.series {
            let s = &outcome.series[i];
            let mut t = Table::new(vec!["bytes", "measured_us", "fitted_us", "error", "held_out_pred_us", "held_out_error"]);
            for p in points.iter().filter(|p| p.source == s.source && p.op == s.op && p.ranks == s.ranks) {
                t.rows.push(vec![
                    units::bytes(p.bytes),
                    us(p.measured_s),
                    us(p.fitted_s),
                    signed_percent(p.rel_error),
                    p.holdout_predicted_s.map_or(String::new(), us),
                    p.holdout_rel_error.map_or(String::new(), signed_percent),
                ]);
            }
            out.push((format!("{} {} {} ranks, {}", s.op.name(), s.level.name(), s.ranks, s.label), t));
        }
    }
    out
}

fn kernel_table(outcome: &Outcome) -> Table {
    let mut t = Table::new(vec!["kind", "kernel", "library", "head_dim", "causal", "varlen", "dtype", "sizes", "TFLOP/s min", "TFLOP/s max"]);
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for k in &outcome.calibration.kernels {
        let (lo, hi) = k.points.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        t.rows.push(vec![
            k.kind.name().to_string(),
            text(&k.kernel),
            text(&k.library),
            k.head_dim.map_or("-".into(), |h| h.to_string()),
            k.causal.map_or("-".into(), |c| c.to_string()),
            k.varlen.map_or("-".into(), |v| v.to_string()),
            text(&k.dtype),
            k.points.len().to_string(),
            format!("{lo:.1}"),
            format!("{hi:.1}"),
        ]);
    }
    t
}

fn overlap_table(outcome: &Outcome) -> Table {
    let mut t = Table::new(vec!["op", "efficiency", "pairs"]);
    for o in &outcome.calibration.overlap {
        t.rows.push(vec![o.op.clone(), format!("{:.3}", o.efficiency), o.pairs.to_string()]);
    }
    t
}

fn input_line(s: &super::profile::Series) -> String {
    format!(
        "{}: {} {}, {} ranks on {}, {}",
        s.source,
        s.op.name(),
        s.level.name(),
        s.ranks,
        plural(s.nodes as usize, "node"),
        plural(s.points.len(), "size")
    )
}

const MODEL: &str = "time(bytes) = min over regimes of latency + bytes x busbw_factor(ranks) / busbw";

/// The tables printed by `calibrate`.
pub fn text(outcome: &Outcome, points: &[FitPoint]) -> String {
    let mut out = String::new();
    out.push_str("Inputs\n");
    for s in &outcome.series {
        out.push_str(&format!("  {}\n", input_line(s)));
        for f in &s.facts {
            out.push_str(&format!("    {f}\n"));
        }
        for n in &s.notes {
            out.push_str(&format!("    note: {n}\n"));
        }
    }
    if !outcome.groups.is_empty() {
        out.push_str(&format!("\nCollective fits ({MODEL})\n"));
        out.push_str(&fits_table(outcome).text("  "));
        out.push_str("\nRegimes\n");
        for l in regime_lines(outcome) {
            out.push_str(&format!("  {l}\n"));
        }
        out.push_str("\nHold-out check (fit on sizes whose index is not a multiple of 3, predict the others)\n");
        out.push_str(&holdout_table(outcome).text("  "));
        out.push_str("\nPer-point error\n");
        for (title, t) in point_tables(outcome, points) {
            out.push_str(&format!("  {title}\n"));
            out.push_str(&t.text("    "));
        }
    }
    if !outcome.calibration.kernels.is_empty() {
        out.push_str("\nKernel throughput curves\n");
        out.push_str(&kernel_table(outcome).text("  "));
    }
    if !outcome.calibration.overlap.is_empty() {
        out.push_str("\nOverlap efficiency (time alone / time overlapped)\n");
        out.push_str(&overlap_table(outcome).text("  "));
    }
    out
}

/// `fit_summary.md`.
pub fn markdown(outcome: &Outcome, points: &[FitPoint], profile: &Path, command: &str) -> String {
    let mut out = String::from("# Calibration fit report\n\n");
    out.push_str(&format!("Profile: `{}`, written by `{command}`.\n\n", profile.display()));
    out.push_str(&format!(
        "Model: {MODEL}; latencies and bandwidths fitted by least squares on ln(time), the number of regimes chosen by BIC (docs/calibration.md). Per-point values are in `fit_points.csv`.\n\n"
    ));
    out.push_str("## Inputs\n\n");
    for s in &outcome.series {
        out.push_str(&format!("- {}\n", input_line(s)));
        for f in &s.facts {
            out.push_str(&format!("  - {f}\n"));
        }
        for n in &s.notes {
            out.push_str(&format!("  - note: {n}\n"));
        }
    }
    if !outcome.warnings.is_empty() {
        out.push_str("\n## Warnings\n\n");
        for w in &outcome.warnings {
            out.push_str(&format!("- {w}\n"));
        }
    }
    if !outcome.groups.is_empty() {
        out.push_str("\n## Collective fits\n\n");
        out.push_str(&fits_table(outcome).markdown());
        out.push_str("\nRegimes:\n\n");
        for l in regime_lines(outcome) {
            out.push_str(&format!("- {l}\n"));
        }
        out.push_str("\n## Hold-out check\n\nFit on the sizes whose index is not a multiple of 3, predict the others; the median is over held-out sizes of 1 MB and more.\n\n");
        out.push_str(&holdout_table(outcome).markdown());
        out.push_str("\n## Per-point error\n");
        for (title, t) in point_tables(outcome, points) {
            out.push_str(&format!("\n### {title}\n\n"));
            out.push_str(&t.markdown());
        }
    }
    if !outcome.calibration.kernels.is_empty() {
        out.push_str("\n## Kernel throughput curves\n\n");
        out.push_str(&kernel_table(outcome).markdown());
    }
    if !outcome.calibration.overlap.is_empty() {
        out.push_str("\n## Overlap efficiency\n\n");
        out.push_str(&overlap_table(outcome).markdown());
    }
    out
}
