//! Measured against predicted: the table `validate` prints and the plot it writes beside the
//! measurements CSV. Works on measurement rows alone, so it is tested without a GPU.
//!
//! Rows written by `validate` say where they come from in `source` with `key=value` words:
//! `batch=4 rank=3 mb=0 group=1` (and `calls=` on op rows: how often the op runs per step). Per
//! rank there is a `step` row, a `micro-batch` phase row per micro-batch (predicted: its group's
//! time from the plan), a row per phase, and a row per op. The slowest rank decides a step, a
//! micro-batch or a group, so measured times are maxima over ranks of each rank's median.

use crate::formats::measurements::{MeasuredKind, Measurement};
use crate::error::Result;
use crate::units::{ms, signed_percent};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The `op` of a rank's whole micro-batch row (its other phase rows name the phase).
pub const MICRO_BATCH: &str = "micro-batch";

/// The `source` of a row: `base` then `key=value` words.
pub fn source(base: &str, tags: &[(&str, String)]) -> String {
    let mut s = base.to_string();
    for (k, v) in tags {
        s.push_str(&format!(" {k}={v}"));
    }
    s
}

/// The value of `key=` in a row's source.
pub fn tag<'a>(source: &'a str, key: &str) -> Option<&'a str> {
    source.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// One line of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// `step`, `micro-batch`, `group`, `phase` or `op`.
    pub level: &'static str,
    pub name: String,
    pub measured_s: f64,
    pub predicted_s: Option<f64>,
}

impl Comparison {
    /// (measured - predicted) / predicted.
    pub fn relative_error(&self) -> Option<f64> {
        self.predicted_s.filter(|&p| p > 0.0).map(|p| (self.measured_s - p) / p)
    }
}

/// Aggregates rows: per step, micro-batch and group (slowest rank), per phase (slowest rank),
/// and per op kind and kernel (every rank's ops summed, over the ops that have a prediction).
pub fn compare(rows: &[Measurement]) -> Vec<Comparison> {
    let mut out = Vec::new();
    let key = |r: &Measurement, keys: &[&str]| keys.iter().map(|k| tag(&r.source, k).unwrap_or("-").to_string()).collect::<Vec<_>>().join(" ");
    // (level, name) -> (max measured, prediction)
    let mut slowest: BTreeMap<(u8, &'static str, String), (f64, Option<f64>)> = BTreeMap::new();
    let mut bump = |order: u8, level: &'static str, name: String, t: f64, p: Option<f64>| {
        let e = slowest.entry((order, level, name)).or_insert((0.0, p));
        e.0 = e.0.max(t);
        e.1 = e.1.or(p);
    };
    for r in rows {
        match r.kind {
            MeasuredKind::Step => bump(0, "step", format!("batch {}", key(r, &["batch"])), r.time_s, r.predicted_s),
            MeasuredKind::Phase if r.op == MICRO_BATCH => {
                bump(1, "micro-batch", format!("batch {} mb {}", key(r, &["batch"]), key(r, &["mb"])), r.time_s, None);
                bump(
                    2,
                    "group",
                    format!("batch {} mb {} group {}", key(r, &["batch"]), key(r, &["mb"]), key(r, &["group"])),
                    r.time_s,
                    r.predicted_s,
                );
            }
            MeasuredKind::Phase => bump(3, "phase", format!("batch {} mb {} {}", key(r, &["batch"]), key(r, &["mb"]), r.op), r.time_s, r.predicted_s),
            _ => {}
        }
    }
    // A micro-batch's prediction is its slowest group's.
    let groups: Vec<((String, String), Option<f64>)> = slowest
        .iter()
        .filter(|((o, _, _), _)| *o == 2)
        .map(|((_, _, name), (_, p))| (split_group(name), *p))
        .collect();
    for ((order, level, name), (t, p)) in slowest {
        let p = if order == 1 {
            groups.iter().filter(|((mb, _), _)| *mb == name).filter_map(|(_, p)| *p).reduce(f64::max)
        } else {
            p
        };
        out.push(Comparison { level, name, measured_s: t, predicted_s: p });
    }
    let mut per_op: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| !matches!(r.kind, MeasuredKind::Step | MeasuredKind::Phase)) {
        if let Some(p) = r.predicted_s {
            let calls = tag(&r.source, "calls").and_then(|c| c.parse::<f64>().ok()).unwrap_or(1.0);
            // The kernel that ran it, where the row says: validate reports which it timed.
            let name = if r.kernel.is_empty() { r.op.clone() } else { format!("{} ({})", r.op, r.kernel) };
            let e = per_op.entry(name).or_insert((0.0, 0.0));
            e.0 += r.time_s * calls;
            e.1 += p * calls;
        }
    }
    for (name, (t, p)) in per_op {
        out.push(Comparison { level: "op", name, measured_s: t, predicted_s: Some(p) });
    }
    out
}

/// "batch B mb M group G" -> ("batch B mb M", G).
fn split_group(name: &str) -> (String, String) {
    match name.rsplit_once(" group ") {
        Some((mb, g)) => (mb.to_string(), g.to_string()),
        None => (name.to_string(), String::new()),
    }
}

pub fn write_table(rows: &[Comparison], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{:<12}  {:<40}  {:>12}  {:>12}  {:>9}", "level", "what", "measured", "predicted", "error")?;
    for c in rows {
        writeln!(
            out,
            "{:<12}  {:<40}  {:>12}  {:>12}  {:>9}",
            c.level,
            c.name,
            ms(c.measured_s),
            c.predicted_s.map_or("-".into(), ms),
            c.relative_error().map_or("-".into(), signed_percent)
        )?;
    }
    Ok(())
}

/// Predicted against measured for every row that has a prediction: the report's figure
/// (`report::accuracy_svg`), so `validate` and the report draw the same plot.
pub fn plot(rows: &[Measurement], path: &Path) -> Result<()> {
    crate::output::write_atomic(path, crate::report::accuracy_svg(rows)?.as_bytes())
}
