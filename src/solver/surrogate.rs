//! A fast, additive stand-in for the cost model, tabulated once per run from the cost model
//! itself: a group of shape (u, r) running documents L1..Ln takes about
//! `base + f(L1) + ... + f(Ln)`. The planner's MILP and its greedy passes reason with it; every
//! answer is then priced exactly by the cost model, and the exact price decides.
//!
//! `f(L)` is measured in context: the marginal cost of a document of length L among copies of
//! itself filling the group to a typical load, because packing changes what a document costs
//! (the sequence-aware layout keeps short documents whole on one ring slot, and GEMMs run more
//! efficiently on more tokens).

use crate::cost::CostModel;
use crate::scheme::GroupShape;
use rayon::prelude::*;

/// Tokens per GPU the surrogate packs copies of a document up to when measuring its marginal cost.
const FILL_TOKENS_PER_GPU: u32 = 4096;
/// Most copies of one document used in a measurement (bounds the tabulation's cost).
const MAX_COPIES: u32 = 32;
/// Share of a group's memory capacity the planner fills, leaving room for padding.
const MEMORY_FILL: f64 = 0.97;
/// Grid points per doubling of the document length.
const POINTS_PER_OCTAVE: f64 = 3.0;

/// A candidate group shape with its tabulated costs.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The shape (scheme: the sequence-aware one for r > 1, Ulysses for r = 1).
    pub shape: GroupShape,
    pub size: u32,
    /// Time of the group with (almost) nothing to run: latencies and fixed GEMM overheads.
    pub base_s: f64,
    /// The longest single document that fits in memory on this shape (some scheme of it).
    pub max_tokens: u32,
    grid: Vec<u32>,
    marginal_s: Vec<f64>,
}

impl Candidate {
    /// Surrogate marginal time of one document of `len` tokens.
    pub fn marginal_s(&self, len: u32) -> f64 {
        let i = self.grid.partition_point(|&g| g < len);
        if i == 0 {
            return self.marginal_s[0];
        }
        if i >= self.grid.len() {
            // Beyond the table: grow quadratically from the last point (attention dominates).
            let (g, f) = (f64::from(self.grid[i - 1]), self.marginal_s[i - 1]);
            return f * (f64::from(len) / g).powi(2);
        }
        let (x0, x1) = (f64::from(self.grid[i - 1]), f64::from(self.grid[i]));
        let (y0, y1) = (self.marginal_s[i - 1], self.marginal_s[i]);
        y0 + (y1 - y0) * (f64::from(len) - x0) / (x1 - x0)
    }

    /// Surrogate time of the group running `lens`.
    pub fn time_s(&self, lens: impl IntoIterator<Item = u32>) -> f64 {
        self.base_s + lens.into_iter().map(|l| self.marginal_s(l)).sum::<f64>()
    }

    /// Tokens the planner puts on one group of this shape: its memory capacity less a margin for
    /// the padding that packing several documents adds.
    pub fn capacity_tokens(&self) -> u64 {
        (f64::from(self.max_tokens) * MEMORY_FILL) as u64
    }

    pub fn fits(&self, tokens: u64) -> bool {
        tokens <= self.capacity_tokens()
    }
}

/// Tabulates every shape for documents up to `max_len` tokens (in parallel over shapes), each
/// priced by the best of its (u, r)'s schemes.
pub fn tabulate(cm: &CostModel, shapes: &[GroupShape], max_len: u32, limit_bytes: f64) -> Vec<Candidate> {
    let gpn = cm.cluster.gpus_per_node;
    tabulate_with(cm, shapes, max_len, limit_bytes, |s| super::scheme_options(s.ulysses, s.ring, gpn))
}

/// Tabulates shapes that run exactly their own scheme (the static baselines).
pub fn tabulate_fixed(cm: &CostModel, shapes: &[GroupShape], max_len: u32, limit_bytes: f64) -> Vec<Candidate> {
    tabulate_with(cm, shapes, max_len, limit_bytes, |s| vec![*s])
}

fn tabulate_with(
    cm: &CostModel,
    shapes: &[GroupShape],
    max_len: u32,
    limit_bytes: f64,
    schemes: impl Fn(&GroupShape) -> Vec<GroupShape> + Sync,
) -> Vec<Candidate> {
    let grid = grid(max_len);
    shapes
        .par_iter()
        .map(|shape| {
            let options = schemes(shape);
            let best_time = |lens: &[u32]| {
                options
                    .iter()
                    .map(|s| cm.group(s, lens).time_s)
                    .fold(f64::INFINITY, f64::min)
            };
            let base_s = best_time(&[1]);
            let fill = FILL_TOKENS_PER_GPU * shape.size();
            let marginal_s = grid
                .iter()
                .map(|&len| {
                    let copies = (fill / len).clamp(1, MAX_COPIES);
                    let lens = vec![len; copies as usize];
                    ((best_time(&lens) - base_s) / f64::from(copies)).max(0.0)
                })
                .collect();
            let max_tokens = options
                .iter()
                .map(|s| max_fitting(cm, s, limit_bytes))
                .max()
                .unwrap_or(0);
            Candidate {
                shape: *shape,
                size: shape.size(),
                base_s,
                max_tokens,
                grid: grid.clone(),
                marginal_s,
            }
        })
        .collect()
}

/// Lengths 1, 2, ... max_len on a geometric grid.
fn grid(max_len: u32) -> Vec<u32> {
    let mut g: Vec<u32> = (0..)
        .map(|i| 2f64.powf(f64::from(i) / POINTS_PER_OCTAVE).round() as u32)
        .take_while(|&l| l < max_len)
        .collect();
    g.push(max_len);
    g.dedup();
    g
}

/// The longest single document `shape` holds within `limit_bytes` per GPU (0 if none).
fn max_fitting(cm: &CostModel, shape: &GroupShape, limit_bytes: f64) -> u32 {
    let fits = |len: u32| cm.group(shape, &[len]).memory_bytes <= limit_bytes;
    if !fits(1) {
        return 0;
    }
    let (mut lo, mut hi) = (1u32, 1u32 << 24);
    if fits(hi) {
        return hi;
    }
    // Memory grows with the tokens per rank: bisect the largest fitting length.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_geometric_and_ends_at_the_maximum() {
        let g = grid(1000);
        assert_eq!(g[0], 1);
        assert_eq!(*g.last().unwrap(), 1000);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        assert!(g.len() > 25 && g.len() < 35, "{}", g.len());
    }
}
