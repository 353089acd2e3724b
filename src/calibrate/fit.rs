//! Fitting measured collective times, kernel throughputs and overlap (docs/calibration.md).
//!
//! A collective's time is modelled as NCCL's own tuner models it: each (algorithm, protocol)
//! pair costs a latency plus bytes over a bandwidth, and NCCL runs the cheapest, so
//!
//! ```text
//! time(bytes) = min_k (latency_k + bytes x s_per_byte_k)
//! ```
//!
//! a lower envelope of a few alpha-beta lines. One line (pure alpha-beta) cannot follow real
//! curves from 8 B to GBs: LL, LL128 and Simple, ring and tree (and NVLS) take over one after
//! the other, and the middle of the curve bends where they do. The lines are fitted by least
//! squares on the log of time, their number chosen by the Bayesian information criterion.

use super::nccl_tests::NcclRun;
use crate::stats::LeastSquares2;
use serde::Serialize;

/// One measured size: bytes (nccl-tests' `size`) and seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub bytes: f64,
    pub time_s: f64,
}

/// The points a log run gives the fit: one per size of its first series, the faster of the
/// out-of-place and in-place times. Timing noise (other jobs, clocks, the network) only ever
/// adds time, and both placements move the same bytes, so the faster one is the better
/// estimate of what the collective costs.
pub fn run_points(run: &NcclRun) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    for row in run.first_series() {
        let p = Point {
            bytes: row.size_bytes as f64,
            time_s: row.best_time_us() * 1e-6,
        };
        match points.iter_mut().find(|q| q.bytes == p.bytes) {
            Some(q) => q.time_s = q.time_s.min(p.time_s),
            None => points.push(p),
        }
    }
    points.sort_by(|a, b| a.bytes.total_cmp(&b.bytes));
    points
}

/// time = latency_s + bytes x s_per_byte.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Line {
    pub latency_s: f64,
    pub s_per_byte: f64,
}

impl Line {
    pub fn time_s(&self, bytes: f64) -> f64 {
        self.latency_s + bytes * self.s_per_byte
    }
}

/// The lower envelope of alpha-beta lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// In the order they take over as the size grows: rising latency, falling s_per_byte.
    pub lines: Vec<Line>,
}

/// One line of an envelope with the sizes where it is the cheapest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Regime {
    pub line: Line,
    pub from_bytes: f64,
    /// `f64::INFINITY` for the last regime.
    pub to_bytes: f64,
}

impl Envelope {
    pub fn time_s(&self, bytes: f64) -> f64 {
        self.lines.iter().map(|l| l.time_s(bytes)).fold(f64::INFINITY, f64::min)
    }

    fn argmin(&self, bytes: f64) -> usize {
        let mut best = 0;
        for (k, l) in self.lines.iter().enumerate() {
            if l.time_s(bytes) < self.lines[best].time_s(bytes) {
                best = k;
            }
        }
        best
    }

    /// The regimes in size order, from 0 bytes up. Lines that are never the cheapest at any
    /// size are left out.
    pub fn regimes(&self) -> Vec<Regime> {
        // Sizes where two lines cross are the only places the cheapest line can change.
        let mut cuts = vec![0.0];
        for (i, a) in self.lines.iter().enumerate() {
            for b in &self.lines[i + 1..] {
                let ds = a.s_per_byte - b.s_per_byte;
                if ds != 0.0 {
                    let x = (b.latency_s - a.latency_s) / ds;
                    if x > 0.0 && x.is_finite() {
                        cuts.push(x);
                    }
                }
            }
        }
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        let mut regimes: Vec<Regime> = Vec::new();
        for (i, &from) in cuts.iter().enumerate() {
            let to = cuts.get(i + 1).copied().unwrap_or(f64::INFINITY);
            let probe = if to.is_finite() { (from + to) / 2.0 } else { from * 2.0 + 1.0 };
            let line = self.lines[self.argmin(probe)];
            match regimes.last_mut() {
                Some(last) if last.line == line => last.to_bytes = to,
                _ => regimes.push(Regime {
                    line,
                    from_bytes: from,
                    to_bytes: to,
                }),
            }
        }
        regimes
    }

    /// The size from which the highest-bandwidth line is the cheapest and its bandwidth term
    /// outweighs its latency: where the collective runs at half its asymptotic speed or better.
    pub fn saturation_bytes(&self) -> f64 {
        let regimes = self.regimes();
        let Some(last) = regimes.last() else { return 0.0 };
        let half_speed = if last.line.s_per_byte > 0.0 { last.line.latency_s / last.line.s_per_byte } else { 0.0 };
        last.from_bytes.max(half_speed)
    }
}

/// A fitted envelope and how well it fits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvelopeFit {
    pub envelope: Envelope,
    pub points: usize,
    /// Root mean square of ln(fitted / measured).
    pub rms_log_residual: f64,
    /// Largest |fitted - measured| / measured.
    pub max_rel_error: f64,
    pub bic: f64,
}

/// The most lines an envelope may have: NCCL's three protocols, plus a change of algorithm
/// (ring to tree, or NVLS) in the same size range.
pub const MAX_LINES: usize = 4;

/// Smallest latency (s) and s/byte a line may have, so that logs stay finite; far below any
/// collective (1 ps, 1 EB/s).
const LATENCY_FLOOR_S: f64 = 1e-12;
const S_PER_BYTE_FLOOR: f64 = 1e-18;

/// The residual below which a better fit counts for nothing in model selection: 0.1% rms is
/// below the repeatability of any nccl-tests run, so BIC must not reward fitting finer.
const RMS_FLOOR: f64 = 1e-3;

/// Fits an envelope of 1..=MAX_LINES lines to points (any order, positive sizes and times) by
/// least squares on ln(time), choosing the number of lines by BIC. `None` for fewer than two
/// distinct sizes.
pub fn fit_envelope(points: &[Point]) -> Option<EnvelopeFit> {
    fit_envelope_max(points, MAX_LINES)
}

/// [`fit_envelope`] with at most `max_lines` lines (1: the classic alpha-beta model).
pub fn fit_envelope_max(points: &[Point], max_lines: usize) -> Option<EnvelopeFit> {
    let mut pts: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.bytes >= 0.0 && p.bytes.is_finite() && p.time_s > 0.0 && p.time_s.is_finite())
        .collect();
    pts.sort_by(|a, b| a.bytes.total_cmp(&b.bytes));
    let bins = size_bins(&pts);
    if bins.len() < 2 {
        return None;
    }
    // Each line needs a segment of at least two sizes, and the sizes must outnumber the
    // parameters to judge them.
    let max_lines = max_lines.min(bins.len() / 3).max(1);
    let costs = SegmentCosts::new(&pts, &bins);
    let mut best: Option<EnvelopeFit> = None;
    for k in 1..=max_lines {
        let Some(segments) = costs.partition(k) else { continue };
        let lines: Vec<Line> = segments.iter().map(|&(i, j)| segment_line(&pts[bins[i].0..bins[j].1])).collect();
        let fit = polish(&pts, lines);
        if best.as_ref().is_none_or(|b| fit.bic < b.bic - 1e-9) {
            best = Some(fit);
        }
    }
    best
}

/// Relative-error least squares of one line on a segment: minimises
/// sum((latency + bytes x s_per_byte) / time - 1)^2 with both terms non-negative. It is the
/// linearisation of the log residual, used to start the log fit.
fn segment_line(pts: &[Point]) -> Line {
    best_line(&line_sums(pts)).0
}

/// The normal equations of sum((latency x 1/time + s_per_byte x bytes/time) - 1)^2.
fn line_sums(pts: &[Point]) -> LeastSquares2 {
    let mut s = LeastSquares2::default();
    for p in pts {
        s.add(1.0 / p.time_s, p.bytes / p.time_s, 1.0, 1.0);
    }
    s
}

/// The best line with non-negative terms, held at the floors, and its objective (infinite when
/// the sums admit no line).
fn best_line(s: &LeastSquares2) -> (Line, f64) {
    let ((a, b), objective) = s.solve_nonneg().unwrap_or(((0.0, 0.0), f64::INFINITY));
    let line = Line {
        latency_s: a.max(LATENCY_FLOOR_S),
        s_per_byte: b.max(S_PER_BYTE_FLOOR),
    };
    (line, objective)
}

/// Segment boundaries fall between sizes, never inside one: the sorted points grouped by
/// size, as [start, end) ranges, merged into at most [`MAX_BINS`] groups of neighbouring sizes
/// so that the segmentation stays quadratic however many sizes a sweep has.
fn size_bins(pts: &[Point]) -> Vec<(usize, usize)> {
    let mut bins: Vec<(usize, usize)> = Vec::new();
    for (i, p) in pts.iter().enumerate() {
        match bins.last_mut() {
            Some(last) if pts[last.0].bytes == p.bytes => last.1 = i + 1,
            _ => bins.push((i, i + 1)),
        }
    }
    if bins.len() <= MAX_BINS {
        return bins;
    }
    let per = bins.len().div_ceil(MAX_BINS);
    bins.chunks(per).map(|c| (c[0].0, c[c.len() - 1].1)).collect()
}

/// The most groups of sizes the segmentation works on.
const MAX_BINS: usize = 512;

/// The cost of fitting one line to every contiguous run of size bins, and the best
/// partitions into k runs (segmented least squares by dynamic programming).
struct SegmentCosts {
    n: usize,
    /// cost[i][j]: bins i..=j on one line (infinite for fewer than two bins). Sums are
    /// accumulated bin by bin, never differenced, so small segments keep their precision.
    cost: Vec<Vec<f64>>,
}

impl SegmentCosts {
    fn new(pts: &[Point], bins: &[(usize, usize)]) -> SegmentCosts {
        let n = bins.len();
        let sums: Vec<LeastSquares2> = bins.iter().map(|&(a, b)| line_sums(&pts[a..b])).collect();
        let mut cost = vec![vec![f64::INFINITY; n]; n];
        for i in 0..n {
            let mut acc = sums[i];
            for j in i + 1..n {
                acc.merge(&sums[j]);
                cost[i][j] = best_line(&acc).1;
            }
        }
        SegmentCosts { n, cost }
    }

    /// The partition of the bins into `k` contiguous segments with the least total cost.
    fn partition(&self, k: usize) -> Option<Vec<(usize, usize)>> {
        let n = self.n;
        if k == 0 || 2 * k > n {
            return None;
        }
        // best[m][j]: first j bins in m segments; from[m][j]: where the last one starts.
        let mut best = vec![vec![f64::INFINITY; n + 1]; k + 1];
        let mut from = vec![vec![0usize; n + 1]; k + 1];
        best[0][0] = 0.0;
        for m in 1..=k {
            for j in 2 * m..=n {
                for i in 2 * (m - 1)..=j - 2 {
                    let c = best[m - 1][i] + self.cost[i][j - 1];
                    if c < best[m][j] {
                        best[m][j] = c;
                        from[m][j] = i;
                    }
                }
            }
        }
        if !best[k][n].is_finite() {
            return None;
        }
        let mut segments = Vec::with_capacity(k);
        let mut j = n;
        for m in (1..=k).rev() {
            let i = from[m][j];
            segments.push((i, j - 1));
            j = i;
        }
        segments.reverse();
        Some(segments)
    }
}

/// Least squares on ln(time) over all points for the envelope of `lines` (Levenberg-Marquardt
/// in log parameters, so latencies and bandwidths stay positive), dropping lines that end up
/// cheapest at no measured size.
fn polish(pts: &[Point], mut lines: Vec<Line>) -> EnvelopeFit {
    loop {
        lines = levenberg_marquardt(pts, lines);
        let env = Envelope { lines: lines.clone() };
        let mut used = vec![false; lines.len()];
        for p in pts {
            used[env.argmin(p.bytes)] = true;
        }
        if used.iter().all(|u| *u) {
            break;
        }
        lines = lines.into_iter().zip(used).filter(|(_, u)| *u).map(|(l, _)| l).collect();
    }
    lines.sort_by(|a, b| b.s_per_byte.total_cmp(&a.s_per_byte));
    let envelope = Envelope { lines };
    let sse = log_sse(pts, &envelope);
    let n = pts.len() as f64;
    let params = 2.0 * envelope.lines.len() as f64;
    let variance = (sse / n).max(RMS_FLOOR * RMS_FLOOR);
    let max_rel_error = pts
        .iter()
        .map(|p| ((envelope.time_s(p.bytes) - p.time_s) / p.time_s).abs())
        .fold(0.0, f64::max);
    EnvelopeFit {
        points: pts.len(),
        rms_log_residual: (sse / n).sqrt(),
        max_rel_error,
        bic: n * variance.ln() + params * n.ln(),
        envelope,
    }
}

fn log_sse(pts: &[Point], env: &Envelope) -> f64 {
    pts.iter().map(|p| (env.time_s(p.bytes) / p.time_s).ln().powi(2)).sum()
}

fn levenberg_marquardt(pts: &[Point], lines: Vec<Line>) -> Vec<Line> {
    let to_lines = |theta: &[f64]| -> Vec<Line> {
        theta
            .chunks(2)
            .map(|c| Line {
                latency_s: c[0].exp().max(LATENCY_FLOOR_S),
                s_per_byte: c[1].exp().max(S_PER_BYTE_FLOOR),
            })
            .collect()
    };
    let floors = [LATENCY_FLOOR_S.ln(), S_PER_BYTE_FLOOR.ln()];
    let mut theta: Vec<f64> = lines.iter().flat_map(|l| [l.latency_s.ln(), l.s_per_byte.ln()]).collect();
    let p = theta.len();
    let mut sse = log_sse(pts, &Envelope { lines: to_lines(&theta) });
    let mut lambda = 1e-3;
    for _ in 0..200 {
        let env = Envelope { lines: to_lines(&theta) };
        // Normal equations of the log residuals; only the cheapest line at a size moves it.
        let mut a = vec![vec![0.0; p]; p];
        let mut g = vec![0.0; p];
        for pt in pts {
            let k = env.argmin(pt.bytes);
            let line = env.lines[k];
            let m = line.time_s(pt.bytes);
            let r = (m / pt.time_s).ln();
            let j = [(2 * k, line.latency_s / m), (2 * k + 1, line.s_per_byte * pt.bytes / m)];
            for &(x, jx) in &j {
                g[x] += jx * r;
                for &(y, jy) in &j {
                    a[x][y] += jx * jy;
                }
            }
        }
        let max_diag = (0..p).map(|i| a[i][i]).fold(0.0, f64::max);
        if max_diag == 0.0 {
            break;
        }
        let mut improved = false;
        while lambda < 1e12 {
            let mut damped = a.clone();
            for (i, row) in damped.iter_mut().enumerate() {
                row[i] += lambda * (a[i][i] + 1e-9 * max_diag);
            }
            let rhs: Vec<f64> = g.iter().map(|x| -x).collect();
            let Some(step) = solve(damped, rhs) else {
                lambda *= 10.0;
                continue;
            };
            let trial: Vec<f64> = theta
                .iter()
                .zip(&step)
                .enumerate()
                .map(|(i, (t, s))| (t + s).max(floors[i % 2]))
                .collect();
            let trial_sse = log_sse(pts, &Envelope { lines: to_lines(&trial) });
            if trial_sse < sse {
                let gain = sse - trial_sse;
                theta = trial;
                sse = trial_sse;
                lambda = (lambda / 3.0).max(1e-12);
                improved = gain > 1e-14 * sse.max(1e-300);
                break;
            }
            lambda *= 4.0;
        }
        if !improved {
            break;
        }
    }
    to_lines(&theta)
}

/// Solves a small dense system by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let pivot = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[pivot][c].abs() < 1e-300 || !a[pivot][c].is_finite() {
            return None;
        }
        a.swap(c, pivot);
        b.swap(c, pivot);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Sizes from which the hold-out check judges predictions (1 MB): below, times are latency.
pub const HOLDOUT_MIN_BYTES: f64 = 1e6;
/// A hold-out check needs this many held-out sizes of at least [`HOLDOUT_MIN_BYTES`] for a
/// median to mean something...
pub const HOLDOUT_MIN_HELD: usize = 3;
/// ...and this many sizes to fit on.
pub const HOLDOUT_MIN_TRAIN: usize = 4;

/// One held-out size and what the fit on the other sizes predicted for it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HeldOut {
    pub bytes: f64,
    pub measured_s: f64,
    pub predicted_s: f64,
    pub rel_error: f64,
}

/// The hold-out check: fit on sizes whose index is not a multiple of 3, predict the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Holdout {
    Done {
        fit: EnvelopeFit,
        held_out: Vec<HeldOut>,
        /// Median relative error over held-out sizes of at least 1 MB.
        median_rel_error: f64,
        judged: usize,
    },
    Skipped {
        reason: String,
    },
}

/// Runs the hold-out check on one run's points (one per size, in size order).
pub fn holdout(points: &[Point]) -> Holdout {
    holdout_max(points, MAX_LINES)
}

/// [`holdout`] for envelopes of at most `max_lines` lines.
pub fn holdout_max(points: &[Point], max_lines: usize) -> Holdout {
    let (held, train): (Vec<(usize, &Point)>, Vec<(usize, &Point)>) = points.iter().enumerate().partition(|(i, _)| i % 3 == 0);
    let judged = held.iter().filter(|(_, p)| p.bytes >= HOLDOUT_MIN_BYTES).count();
    if judged < HOLDOUT_MIN_HELD || train.len() < HOLDOUT_MIN_TRAIN {
        return Holdout::Skipped {
            reason: format!(
                "{} sizes: {} held out at 1 MB or more (needs {HOLDOUT_MIN_HELD}), {} to fit on (needs {HOLDOUT_MIN_TRAIN})",
                points.len(),
                judged,
                train.len()
            ),
        };
    }
    let train: Vec<Point> = train.into_iter().map(|(_, p)| *p).collect();
    let Some(fit) = fit_envelope_max(&train, max_lines) else {
        return Holdout::Skipped {
            reason: "the training sizes are all the same".into(),
        };
    };
    let held_out: Vec<HeldOut> = held
        .into_iter()
        .map(|(_, p)| {
            let predicted_s = fit.envelope.time_s(p.bytes);
            HeldOut {
                bytes: p.bytes,
                measured_s: p.time_s,
                predicted_s,
                rel_error: (predicted_s - p.time_s).abs() / p.time_s,
            }
        })
        .collect();
    let errors: Vec<f64> = held_out.iter().filter(|h| h.bytes >= HOLDOUT_MIN_BYTES).map(|h| h.rel_error).collect();
    let Some(median_rel_error) = crate::stats::median(&errors) else {
        return Holdout::Skipped { reason: "no held-out size of 1 MB or more".into() };
    };
    Holdout::Done {
        fit,
        median_rel_error,
        judged,
        held_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(lines: &[Line], sizes: &[f64]) -> Vec<Point> {
        let env = Envelope { lines: lines.to_vec() };
        sizes
            .iter()
            .map(|&b| Point {
                bytes: b,
                time_s: env.time_s(b),
            })
            .collect()
    }

    fn powers_of_two(from: u32, to: u32) -> Vec<f64> {
        (from..=to).map(|e| 2f64.powi(e as i32)).collect()
    }

    #[test]
    fn a_single_alpha_beta_line_is_recovered_exactly() {
        let truth = Line {
            latency_s: 20e-6,
            s_per_byte: 1.0 / 100e9,
        };
        let fit = fit_envelope(&curve(&[truth], &powers_of_two(3, 33))).unwrap();
        assert_eq!(fit.envelope.lines.len(), 1, "{fit:?}");
        let l = fit.envelope.lines[0];
        assert!((l.latency_s / truth.latency_s - 1.0).abs() < 1e-6, "{l:?}");
        assert!((l.s_per_byte / truth.s_per_byte - 1.0).abs() < 1e-6, "{l:?}");
        // Half speed where the bandwidth term equals the latency: 20 us x 100 GB/s = 2 MB.
        assert!((fit.envelope.saturation_bytes() - 2e6).abs() < 1.0, "{}", fit.envelope.saturation_bytes());
    }

    #[test]
    fn three_protocol_regimes_are_recovered() {
        // LL-like, LL128-like and Simple-like lines (latency up, bandwidth up).
        let truth = [
            Line {
                latency_s: 10e-6,
                s_per_byte: 1.0 / 5e9,
            },
            Line {
                latency_s: 40e-6,
                s_per_byte: 1.0 / 50e9,
            },
            Line {
                latency_s: 400e-6,
                s_per_byte: 1.0 / 200e9,
            },
        ];
        let pts = curve(&truth, &powers_of_two(3, 33));
        let fit = fit_envelope(&pts).unwrap();
        assert_eq!(fit.envelope.lines.len(), 3, "{fit:?}");
        assert!(fit.max_rel_error < 1e-6, "{fit:?}");
        let regimes = fit.envelope.regimes();
        assert_eq!(regimes.len(), 3);
        // The first two cross at (40-10) us / (1/5e9 - 1/50e9) = 166,667 bytes.
        assert!((regimes[0].to_bytes / 166_666.67 - 1.0).abs() < 1e-3, "{regimes:?}");
        // A single line misses the middle of the curve badly.
        let one = polish(&pts, vec![segment_line(&pts)]);
        assert!(one.max_rel_error > 0.5, "{one:?}");
    }

    #[test]
    fn noise_does_not_buy_extra_lines() {
        // Plus or minus 1% alternating noise on a single line: BIC keeps one line.
        let truth = Line {
            latency_s: 50e-6,
            s_per_byte: 1.0 / 20e9,
        };
        let mut pts = curve(&[truth], &powers_of_two(3, 32));
        for (i, p) in pts.iter_mut().enumerate() {
            p.time_s *= if i % 2 == 0 { 1.01 } else { 0.99 };
        }
        let fit = fit_envelope(&pts).unwrap();
        assert_eq!(fit.envelope.lines.len(), 1, "{fit:?}");
        assert!((fit.rms_log_residual - 0.01).abs() < 0.002, "{}", fit.rms_log_residual);
    }

    #[test]
    fn holdout_predicts_every_third_size() {
        let truth = [
            Line {
                latency_s: 10e-6,
                s_per_byte: 1.0 / 5e9,
            },
            Line {
                latency_s: 400e-6,
                s_per_byte: 1.0 / 200e9,
            },
        ];
        let pts = curve(&truth, &powers_of_two(3, 33));
        match holdout(&pts) {
            Holdout::Done {
                held_out,
                median_rel_error,
                judged,
                ..
            } => {
                assert_eq!(held_out.len(), 11);
                assert_eq!(held_out[0].bytes, 8.0);
                assert_eq!(judged, held_out.iter().filter(|h| h.bytes >= 1e6).count());
                assert!(median_rel_error < 1e-6, "{median_rel_error}");
            }
            other => panic!("{other:?}"),
        }
        match holdout(&pts[..4]) {
            Holdout::Skipped { reason } => assert!(reason.contains("4 sizes"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeated_sizes_are_one_bin_and_long_sweeps_are_merged() {
        let p = |bytes: f64| Point { bytes, time_s: 1e-5 + bytes * 1e-11 };
        let pts = vec![p(8.0), p(8.0), p(16.0), p(32.0), p(32.0), p(32.0)];
        assert_eq!(size_bins(&pts), vec![(0, 2), (2, 3), (3, 6)]);
        let sweep: Vec<Point> = (1..=2000).map(|i| p(f64::from(i) * 1e6)).collect();
        let bins = size_bins(&sweep);
        assert!(bins.len() <= MAX_BINS && bins.len() > MAX_BINS / 2, "{}", bins.len());
        assert_eq!((bins[0].0, bins[bins.len() - 1].1), (0, 2000));
        assert!(bins.windows(2).all(|w| w[0].1 == w[1].0));
        // A line through a long linear sweep is still recovered exactly.
        let fit = fit_envelope(&sweep).unwrap();
        assert_eq!(fit.envelope.lines.len(), 1);
        assert!(fit.max_rel_error < 1e-9, "{fit:?}");
    }

    #[test]
    fn too_few_sizes_give_no_fit() {
        assert!(fit_envelope(&[]).is_none());
        let p = Point {
            bytes: 8.0,
            time_s: 1e-5,
        };
        assert!(fit_envelope(&[p, p]).is_none());
    }
}
