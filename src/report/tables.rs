//! The data behind every figure, as rows: pure functions of the run data. Each table is written
//! next to its figure as CSV, so every number a figure shows can be looked up.

use crate::formats::fit_points::FitPoint;
use crate::formats::measurements::{MeasuredKind, Measurement};
use crate::formats::run::{BatchRow, RunData, TraceInfo, HSAP};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

use crate::units::GIB;

/// Figure 1: documents and tokens per power-of-two length bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceRow {
    /// Bucket bounds in tokens: lengths in `[lo, hi)`.
    pub lo: u64,
    pub hi: u64,
    pub documents: usize,
    pub tokens: u64,
    pub document_share: f64,
    pub token_share: f64,
    /// Share of all tokens in documents shorter than `hi`.
    pub cumulative_token_share: f64,
    /// Of the bucket's documents, those longer than `--max-seq`, and their tokens.
    pub over_max_seq_documents: usize,
    pub over_max_seq_tokens: u64,
}

pub fn trace_rows(trace: &TraceInfo) -> Vec<TraceRow> {
    let stats = &trace.stats;
    let (count, total) = (stats.count.max(1) as f64, stats.total_tokens.max(1) as f64);
    let mut cumulative = 0u64;
    stats
        .histogram
        .buckets
        .iter()
        .map(|b| {
            cumulative += b.tokens;
            TraceRow {
                lo: b.lo,
                hi: b.hi,
                documents: b.count,
                tokens: b.tokens,
                document_share: b.count as f64 / count,
                token_share: b.tokens as f64 / total,
                cumulative_token_share: cumulative as f64 / total,
                over_max_seq_documents: b.over_max_seq,
                over_max_seq_tokens: b.over_max_seq_tokens,
            }
        })
        .collect()
}

/// Figure 2: each strategy's step time per batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub batch: usize,
    pub strategy: String,
    pub tokens: u64,
    pub predicted_step_s: f64,
    pub simulated_step_s: Option<f64>,
}

pub fn step_rows(data: &RunData) -> Vec<StepRow> {
    ordered(data)
        .map(|r| StepRow {
            batch: r.batch,
            strategy: r.strategy.clone(),
            tokens: r.tokens,
            predicted_step_s: r.predicted_step_s,
            simulated_step_s: r.simulated_step_s,
        })
        .collect()
}

/// Figure 3: hsap's speedup over one baseline on one batch (baseline time / hsap time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedupRow {
    pub baseline: String,
    pub batch: usize,
    pub hsap_step_s: f64,
    pub baseline_step_s: f64,
    pub speedup: f64,
}

pub fn speedup_rows(data: &RunData) -> Vec<SpeedupRow> {
    let hsap: BTreeMap<usize, f64> = data
        .batches
        .iter()
        .filter(|r| r.strategy == HSAP)
        .map(|r| (r.batch, r.predicted_step_s))
        .collect();
    let mut rows = Vec::new();
    for baseline in data.strategies().into_iter().filter(|s| s != HSAP) {
        for r in data.batches.iter().filter(|r| r.strategy == baseline) {
            // RunData::load makes every strategy price every batch.
            let Some(&ours) = hsap.get(&r.batch) else { continue };
            rows.push(SpeedupRow {
                baseline: baseline.clone(),
                batch: r.batch,
                hsap_step_s: ours,
                baseline_step_s: r.predicted_step_s,
                speedup: r.predicted_step_s / ours,
            });
        }
    }
    let rank = ranks(data);
    rows.sort_by_key(|r| (rank.get(&r.baseline).copied(), r.batch));
    rows
}

/// The distribution of hsap's speedup over one baseline, across batches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedupStats {
    pub baseline: String,
    pub batches: usize,
    pub min: f64,
    /// Quartiles, linearly interpolated between order statistics.
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
    pub mean: f64,
    /// The baseline's total time over hsap's: the speedup of the whole run.
    pub total: f64,
    /// Batches on which hsap is slower than the baseline.
    pub batches_slower: usize,
}

pub fn speedup_stats(rows: &[SpeedupRow]) -> Vec<SpeedupStats> {
    let mut baselines: Vec<&str> = Vec::new();
    for r in rows {
        if !baselines.contains(&r.baseline.as_str()) {
            baselines.push(&r.baseline);
        }
    }
    baselines
        .into_iter()
        .filter_map(|baseline| {
            let mine: Vec<&SpeedupRow> = rows.iter().filter(|r| r.baseline == baseline).collect();
            let s = crate::stats::sorted(mine.iter().map(|r| r.speedup));
            let quartile = |q| crate::stats::quantile_sorted(&s, q);
            let n = s.len() as f64;
            let hsap_total: f64 = mine.iter().map(|r| r.hsap_step_s).sum();
            let baseline_total: f64 = mine.iter().map(|r| r.baseline_step_s).sum();
            Some(SpeedupStats {
                baseline: baseline.to_string(),
                batches: s.len(),
                min: *s.first()?,
                p25: quartile(0.25)?,
                median: quartile(0.5)?,
                p75: quartile(0.75)?,
                max: *s.last()?,
                mean: s.iter().sum::<f64>() / n,
                total: baseline_total / hsap_total,
                batches_slower: s.iter().filter(|&&v| v < 1.0).count(),
            })
        })
        .collect()
}

/// Figure 4: the mean step of each strategy, split into its parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakdownRow {
    pub strategy: String,
    pub batches: usize,
    pub compute_s: f64,
    pub exposed_comm_s: f64,
    pub idle_s: f64,
    pub grad_sync_s: f64,
    pub predicted_step_s: f64,
}

impl BreakdownRow {
    /// The parts in stacking order (the order of `palette::PART_COLOURS`).
    pub fn parts(&self) -> [f64; 4] {
        [self.compute_s, self.exposed_comm_s, self.idle_s, self.grad_sync_s]
    }
}

/// Names of the parts, in stacking order.
pub const PART_NAMES: [&str; 4] = [
    "compute",
    "exposed communication",
    "idle (load imbalance)",
    "gradient sync (exposed)",
];

pub fn breakdown_rows(data: &RunData) -> Vec<BreakdownRow> {
    data.strategies()
        .into_iter()
        .map(|strategy| {
            let mine: Vec<&BatchRow> = data.batches.iter().filter(|r| r.strategy == strategy).collect();
            let n = mine.len() as f64;
            let mean = |f: fn(&BatchRow) -> f64| mine.iter().map(|r| f(r)).sum::<f64>() / n;
            BreakdownRow {
                batches: mine.len(),
                compute_s: mean(|r| r.compute_s),
                exposed_comm_s: mean(|r| r.exposed_comm_s),
                idle_s: mean(|r| r.idle_s),
                grad_sync_s: mean(|r| r.grad_sync_s),
                predicted_step_s: mean(|r| r.predicted_step_s),
                strategy,
            }
        })
        .collect()
}

/// Figure 5: how many GPUs a strategy put in groups of one shape on one batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanRow {
    pub strategy: String,
    pub batch: usize,
    pub ulysses: u32,
    pub ring: u32,
    pub size: u32,
    /// Groups of this shape, summed over the batch's micro-batches.
    pub groups: usize,
    /// GPUs in groups of this shape, averaged over the batch's micro-batches.
    pub gpus: f64,
}

pub fn plan_rows(data: &RunData) -> Vec<PlanRow> {
    let microbatches: BTreeMap<(&str, usize), u32> = data
        .batches
        .iter()
        .map(|r| ((r.strategy.as_str(), r.batch), r.microbatches.max(1)))
        .collect();
    // Largest groups first, and pure Ulysses before splits with more ring, so that each stack
    // reads from the bottom in the same order as the legend.
    let rank = ranks(data);
    let mut counts: BTreeMap<(usize, usize, std::cmp::Reverse<u32>, std::cmp::Reverse<u32>), usize> = BTreeMap::new();
    for g in &data.groups {
        // RunData::load rejects groups of strategies batches.csv does not price.
        let Some(&s) = rank.get(&g.strategy) else { continue };
        let key = (s, g.batch, std::cmp::Reverse(g.size), std::cmp::Reverse(g.ulysses));
        *counts.entry(key).or_default() += 1;
    }
    let names = data.strategies();
    counts
        .into_iter()
        .map(|((s, batch, size, ulysses), groups)| {
            let strategy = names[s].clone();
            let mbs = microbatches.get(&(strategy.as_str(), batch)).copied().unwrap_or(1);
            PlanRow {
                batch,
                ulysses: ulysses.0,
                ring: size.0 / ulysses.0,
                size: size.0,
                groups,
                gpus: (groups as f64 * f64::from(size.0)) / f64::from(mbs),
                strategy,
            }
        })
        .collect()
}

/// Figure 6: peak memory per GPU against the limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRow {
    pub batch: usize,
    pub strategy: String,
    pub peak_memory_gib: f64,
    pub memory_limit_gib: f64,
}

pub fn memory_rows(data: &RunData) -> Vec<MemoryRow> {
    ordered(data)
        .map(|r| MemoryRow {
            batch: r.batch,
            strategy: r.strategy.clone(),
            peak_memory_gib: r.peak_memory_bytes / GIB,
            memory_limit_gib: r.memory_limit_bytes / GIB,
        })
        .collect()
}

/// Figure 7: a time the model predicted next to the time measured for the same operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyRow {
    /// `measurements` (measurements.csv) or `calibration` (fit_points.csv).
    pub source: &'static str,
    /// What the point is coloured by: the collective, or the kind of kernel or phase.
    pub series: String,
    pub ranks: u32,
    pub bytes: Option<f64>,
    pub measured_s: f64,
    pub predicted_s: f64,
    /// (predicted - measured) / measured.
    pub rel_error: f64,
    /// Calibration points left out of the fit (always false for measurements).
    pub held_out: bool,
}

pub fn accuracy_rows(measurements: &[Measurement], fit_points: &[FitPoint]) -> Vec<AccuracyRow> {
    let measured = measurements.iter().filter_map(|m| {
        let predicted = m.predicted_s.filter(|p| p.is_finite() && *p > 0.0)?;
        Some(AccuracyRow {
            source: "measurements",
            series: measurement_series(m),
            ranks: m.ranks,
            bytes: m.bytes,
            measured_s: m.time_s,
            predicted_s: predicted,
            rel_error: (predicted - m.time_s) / m.time_s,
            held_out: false,
        })
    });
    let fitted = fit_points.iter().map(|p| AccuracyRow {
        source: "calibration",
        series: p.op.name().to_string(),
        ranks: p.ranks,
        bytes: Some(p.bytes),
        measured_s: p.measured_s,
        predicted_s: p.fitted_s,
        rel_error: (p.fitted_s - p.measured_s) / p.measured_s,
        held_out: p.held_out,
    });
    measured.chain(fitted).collect()
}

fn measurement_series(m: &Measurement) -> String {
    match m.kind {
        MeasuredKind::Collective => m.op.clone(),
        MeasuredKind::AttentionFwd => "attention forward".into(),
        MeasuredKind::AttentionBwd => "attention backward".into(),
        MeasuredKind::Gemm => "GEMM".into(),
        MeasuredKind::Phase => format!("phase {}", m.op),
        MeasuredKind::Step => "step".into(),
    }
}

/// Figure 8 (the calibration fit): fit points ordered by curve (collective, level, ranks) and size.
pub fn fit_rows(points: &[FitPoint]) -> Vec<FitPoint> {
    let mut rows = points.to_vec();
    rows.sort_by(|a, b| {
        (a.op, a.level as u8, a.ranks)
            .cmp(&(b.op, b.level as u8, b.ranks))
            .then(a.bytes.total_cmp(&b.bytes))
    });
    rows
}

/// The label of a calibration curve.
pub fn fit_curve(p: &FitPoint) -> String {
    let level = match p.level {
        crate::cluster::LinkLevel::Intra => "intra-node",
        crate::cluster::LinkLevel::Inter => "inter-node",
    };
    format!("{} {level}, {} ranks", p.op.name(), p.ranks)
}

/// Batch rows ordered by batch, then strategy in presentation order.
fn ordered(data: &RunData) -> impl Iterator<Item = &BatchRow> {
    let rank = ranks(data);
    let mut rows: Vec<&BatchRow> = data.batches.iter().collect();
    rows.sort_by_key(|r| (r.batch, rank.get(&r.strategy).copied()));
    rows.into_iter()
}

/// Each strategy's position in presentation order.
fn ranks(data: &RunData) -> HashMap<String, usize> {
    data.strategies().into_iter().enumerate().map(|(i, s)| (s, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedup_stats_by_hand() {
        let row = |batch, ours, theirs| SpeedupRow {
            baseline: "flexsp".into(),
            batch,
            hsap_step_s: ours,
            baseline_step_s: theirs,
            speedup: theirs / ours,
        };
        let rows = [row(0, 1.0, 2.0), row(1, 2.0, 2.0), row(2, 1.0, 0.5)];
        let s = &speedup_stats(&rows)[0];
        assert_eq!((s.min, s.median, s.max), (0.5, 1.0, 2.0));
        assert_eq!((s.p25, s.p75), (0.75, 1.5));
        assert!((s.mean - 3.5 / 3.0).abs() < 1e-12);
        // 4.5 s of baseline time against 4 s of hsap time.
        assert_eq!(s.total, 4.5 / 4.0);
        assert_eq!(s.batches_slower, 1);
    }
}
