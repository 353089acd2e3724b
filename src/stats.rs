//! The statistics every module shares, each with one convention:
//!
//! - **Quantiles** interpolate linearly between order statistics (Hyndman and Fan's type 7, the
//!   default of NumPy and R): quantile `q` of n sorted values is at position `q (n - 1)`. So the
//!   median of an even count is the mean of the middle two, and every quantile lies between the
//!   smallest and the largest value. `q` is a fraction in [0, 1] (p99 is 0.99).
//! - **No values, no statistic**: a quantile or median of nothing is `None`, and each caller says
//!   what an empty set means to it. Values are ordered by `f64::total_cmp`; callers whose values
//!   may be NaN filter them first.
//! - **Least squares** in two unknowns goes through [`LeastSquares2`]: the normal equations of
//!   `min sum w (a x + b y - z)^2`, accumulated point by point (or merged, for segmented fits) and
//!   solved in closed form; a system whose two columns are (nearly) collinear has no solution.

/// Quantile `q` (a fraction in [0, 1], clamped) of values already sorted ascending: linear
/// interpolation between order statistics. `None` when there are no values.
pub fn quantile_sorted<T: Copy + Into<f64>>(sorted: &[T], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let at = q.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    let (a, b): (f64, f64) = (sorted[lo].into(), sorted[hi].into());
    Some(a + (b - a) * (at - lo as f64))
}

/// Quantile `q` of values in any order (see [`quantile_sorted`]).
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    quantile_sorted(&sorted(values.iter().copied()), q)
}

/// The median: the mean of the middle two values for an even count. `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// The values sorted ascending by `f64::total_cmp`.
pub fn sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Two unknowns `a`, `b` fitted by weighted least squares: the sums of the normal equations of
/// `min sum w (a x + b y - z)^2`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LeastSquares2 {
    xx: f64,
    xy: f64,
    yy: f64,
    xz: f64,
    yz: f64,
    zz: f64,
}

/// Below this `1 - correlation^2` of the two columns the system is taken as singular: the
/// closed form would divide by rounding noise.
const COLLINEAR: f64 = 1e-12;

impl LeastSquares2 {
    /// Adds the point `(x, y) -> z` with weight `w`.
    pub fn add(&mut self, x: f64, y: f64, z: f64, w: f64) {
        self.xx += w * x * x;
        self.xy += w * x * y;
        self.yy += w * y * y;
        self.xz += w * x * z;
        self.yz += w * y * z;
        self.zz += w * z * z;
    }

    /// Adds every point of another fit (the sums of a union of segments).
    pub fn merge(&mut self, other: &LeastSquares2) {
        self.xx += other.xx;
        self.xy += other.xy;
        self.yy += other.yy;
        self.xz += other.xz;
        self.yz += other.yz;
        self.zz += other.zz;
    }

    /// The weighted sum of squared residuals of `(a, b)`.
    pub fn sse(&self, a: f64, b: f64) -> f64 {
        let v = a * a * self.xx + 2.0 * a * b * self.xy + b * b * self.yy - 2.0 * a * self.xz - 2.0 * b * self.yz + self.zz;
        v.max(0.0)
    }

    /// The unconstrained optimum; `None` when the columns are (nearly) collinear or empty.
    pub fn solve(&self) -> Option<(f64, f64)> {
        if !(self.xx > 0.0 && self.yy > 0.0) {
            return None;
        }
        let det = self.xx * self.yy - self.xy * self.xy;
        if !(det > COLLINEAR * self.xx * self.yy) {
            return None;
        }
        let a = (self.xz * self.yy - self.yz * self.xy) / det;
        let b = (self.yz * self.xx - self.xz * self.xy) / det;
        (a.is_finite() && b.is_finite()).then_some((a, b))
    }

    /// The optimum with `b = 0`; `None` when every `x` is 0.
    pub fn solve_a(&self) -> Option<f64> {
        (self.xx > 0.0).then(|| self.xz / self.xx)
    }

    /// The optimum with `a = 0`; `None` when every `y` is 0.
    pub fn solve_b(&self) -> Option<f64> {
        (self.yy > 0.0).then(|| self.yz / self.yy)
    }

    /// The optimum with `a, b >= 0`: the unconstrained one if it is feasible, else the better of
    /// the two one-unknown optima (clamped at 0), with its sum of squared residuals.
    pub fn solve_nonneg(&self) -> Option<((f64, f64), f64)> {
        let interior = self.solve().filter(|&(a, b)| a >= 0.0 && b >= 0.0);
        let only_a = self.solve_a().map(|a| (a.max(0.0), 0.0));
        let only_b = self.solve_b().map(|b| (0.0, b.max(0.0)));
        [interior, only_a, only_b]
            .into_iter()
            .flatten()
            .map(|ab| (ab, self.sse(ab.0, ab.1)))
            .min_by(|p, q| p.1.total_cmp(&q.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&v, 0.25), Some(1.75));
        assert_eq!(quantile_sorted(&v, 0.5), Some(2.5));
        assert_eq!(quantile_sorted(&v, 1.0), Some(4.0));
        assert_eq!(quantile_sorted(&[7.0], 0.75), Some(7.0));
        assert_eq!(quantile_sorted(&[10u32, 20, 30, 40, 50], 0.9), Some(46.0));
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
    }

    #[test]
    fn medians_of_odd_even_and_no_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(quantile_sorted::<f64>(&[], 0.99), None);
    }

    #[test]
    fn least_squares_recovers_an_exact_plane_and_rejects_collinear_columns() {
        let mut ls = LeastSquares2::default();
        for (x, y) in [(1.0, 0.0), (1.0, 1.0), (2.0, 5.0), (0.5, 3.0)] {
            ls.add(x, y, 3.0 * x - 0.5 * y, 1.0);
        }
        let (a, b) = ls.solve().unwrap();
        assert!((a - 3.0).abs() < 1e-12 && (b + 0.5).abs() < 1e-12, "{a} {b}");
        assert!(ls.sse(a, b) < 1e-20);
        // b < 0 is infeasible under the constraint: the best non-negative fit has b = 0.
        let ((a, b), sse) = ls.solve_nonneg().unwrap();
        assert_eq!(b, 0.0);
        assert!((a - ls.solve_a().unwrap()).abs() < 1e-15 && sse > 0.0);
        let mut collinear = LeastSquares2::default();
        for x in [1.0, 2.0, 3.0] {
            collinear.add(x, 2.0 * x, x, 1.0);
        }
        assert_eq!(collinear.solve(), None);
        assert!((collinear.solve_a().unwrap() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn merged_sums_fit_like_the_points_together() {
        let pts = [(1.0, 2.0, 3.0, 1.0), (2.0, 1.0, 4.0, 2.0), (3.0, 5.0, 1.0, 0.5), (0.5, 0.2, 2.0, 1.0)];
        let (mut all, mut left, mut right) = (LeastSquares2::default(), LeastSquares2::default(), LeastSquares2::default());
        for (i, &(x, y, z, w)) in pts.iter().enumerate() {
            all.add(x, y, z, w);
            if i < 2 { left.add(x, y, z, w) } else { right.add(x, y, z, w) }
        }
        left.merge(&right);
        let (a, b) = all.solve().unwrap();
        let (a2, b2) = left.solve().unwrap();
        assert!((a - a2).abs() < 1e-12 && (b - b2).abs() < 1e-12);
    }
}
