//! A fast stand-in for the cost model, tabulated once per run from the cost model itself: a
//! group of shape (u, r) running documents L1..Ln takes about
//! `max(floor, max_i alone(Li), base + f(L1) + ... + f(Ln) + min_i gain(Li))`.
//! - The floor is what a group costs with (almost) nothing to run: the per-layer collectives that
//!   compute would otherwise hide (ZeRO-3 gathers) and latencies.
//! - `alone(L)` is the exact time of one document alone on the group.
//! - `f(L)` is a document's marginal time on a loaded group, averaged over copies added to a
//!   background of documents filling the group to a typical load, because packing changes what a
//!   document costs (the sequence-aware layout keeps short documents whole on one ring slot, GEMMs
//!   run better on more tokens, overlap hides fixed costs); `base` is the loaded line's intercept.
//! - `gain(L) = min(0, alone(L) - base - f(L))`: a group lightly filled around one long document
//!   costs about that document alone plus the others' marginal times, far less than the loaded
//!   line says (on a loaded group a long document's ring traffic competes with the others'
//!   compute).
//!
//! The planner's searches and MILPs reason with it; every answer is then priced exactly by the
//! cost model, and the exact price decides.

use crate::cost::CostModel;
use crate::progress::{Mode, Progress};
use crate::scheme::GroupShape;
use rayon::prelude::*;

/// Tokens per GPU of the background load against which marginal costs are measured (at most
/// 40% of the shape's memory capacity).
const FILL_TOKENS_PER_GPU: u64 = 16_384;
/// Documents in the background, at least (bounds the tabulation's cost).
const BACKGROUND_DOCS: u64 = 64;
/// Background documents per ring slot, at least.
const BACKGROUND_DOCS_PER_SLOT: u64 = 4;
/// Share of a group's memory capacity the planner fills, leaving room for padding.
const MEMORY_FILL: f64 = 0.97;
/// The copies a marginal time is measured with add `1 / MARGINAL_SHARE` of the background's tokens.
const MARGINAL_SHARE: u64 = 4;
/// Grid points per doubling of the document length.
const POINTS_PER_OCTAVE: f64 = 3.0;

/// A candidate group shape with its tabulated costs.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The shape (scheme: the sequence-aware one for r > 1, Ulysses for r = 1).
    pub shape: GroupShape,
    pub size: u32,
    /// Time of the group with (almost) nothing to run: no group is faster.
    pub floor_s: f64,
    /// Intercept of the loaded group's time `base + sum f(L)`: negative when a document costs
    /// more at the background's load than on average (the group's time is convex in its load:
    /// every stage's `max(transfer, compute)` turns from the transfer to the compute).
    pub base_s: f64,
    /// The longest single document that fits in memory on this shape (some scheme of it).
    pub max_tokens: u32,
    grid: Vec<u32>,
    marginal_s: Vec<f64>,
    /// Exact time of the group running one document of each grid length alone.
    alone_s: Vec<f64>,
}

/// A document's surrogate figures on one candidate shape ([`Candidate::doc`]): what the planner's
/// packings ask of a (shape, length) pair, interpolated once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocCost {
    /// [`Candidate::marginal_s`].
    pub marginal_s: f64,
    /// [`Candidate::alone_s`].
    pub alone_s: f64,
    /// [`Candidate::anchor_gain_s`].
    pub gain_s: f64,
}

impl Candidate {
    /// Surrogate marginal time of one document of `len` tokens on a loaded group.
    pub fn marginal_s(&self, len: u32) -> f64 {
        interpolate(&self.grid, &self.marginal_s, len)
    }

    /// Time of the group running one document of `len` tokens alone (interpolated between exact
    /// prices on the grid).
    pub fn alone_s(&self, len: u32) -> f64 {
        interpolate(&self.grid, &self.alone_s, len)
    }

    /// What anchoring the group on a document of `len` tokens saves against the loaded line:
    /// `alone(len) - base - f(len)` when negative, else 0. A long document alone on a large group
    /// costs far less than its marginal cost on a loaded one (there its ring traffic competes
    /// with the others' compute), so a group lightly filled around one long document is closer
    /// to that document alone plus the others' marginal costs than to the loaded line.
    pub fn anchor_gain_s(&self, len: u32) -> f64 {
        self.gain_of(self.alone_s(len), self.marginal_s(len))
    }

    fn gain_of(&self, alone_s: f64, marginal_s: f64) -> f64 {
        (alone_s - self.base_s - marginal_s).min(0.0)
    }

    /// The three figures of a document of `len` tokens with one search of the grid: equal to
    /// [`Self::marginal_s`], [`Self::alone_s`] and [`Self::anchor_gain_s`], at a quarter of the cost.
    pub fn doc(&self, len: u32) -> DocCost {
        let at = Position::of(&self.grid, len);
        let (marginal_s, alone_s) = (at.value(&self.marginal_s), at.value(&self.alone_s));
        DocCost { marginal_s, alone_s, gain_s: self.gain_of(alone_s, marginal_s) }
    }

    /// Surrogate time of the group running `lens`.
    pub fn time_s(&self, lens: impl IntoIterator<Item = u32>) -> f64 {
        let (mut load, mut alone, mut gain) = (self.base_s, 0.0f64, 0.0f64);
        for l in lens {
            let c = self.doc(l);
            load += c.marginal_s;
            alone = alone.max(c.alone_s);
            gain = gain.min(c.gain_s);
        }
        self.finish_s(load, alone, gain)
    }

    /// Surrogate time of the group running one document of `len`.
    pub fn single_s(&self, len: u32) -> f64 {
        self.single_of(&self.doc(len))
    }

    /// [`Self::single_s`] of a document whose figures are known.
    pub fn single_of(&self, c: &DocCost) -> f64 {
        self.finish_s(self.base_s + c.marginal_s, c.alone_s, c.gain_s)
    }

    /// The group's time given its load `base + sum f`, the slowest of its documents alone and
    /// the largest anchor gain among them ([`Self::anchor_gain_s`]): the loaded line less the
    /// gain, never less than the floor or than any of its documents alone. Every term is linear
    /// in the group's contents but the choice of anchor, which a MILP makes with one continuous
    /// weight per document class (`exact.rs`).
    pub fn finish_s(&self, load_s: f64, alone_s: f64, gain_s: f64) -> f64 {
        (load_s + gain_s).max(alone_s).max(self.floor_s)
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

/// Piecewise-linear interpolation on the grid; beyond its end (or its last finite value),
/// quadratic growth from the last point (attention dominates long documents).
fn interpolate(grid: &[u32], values: &[f64], len: u32) -> f64 {
    Position::of(grid, len).value(values)
}

/// Where a length falls on a grid: found once, read for every table on that grid.
struct Position {
    i: usize,
    len: u32,
    /// `(x0, x1)` of the interval holding `len` (None: on a grid point or before the first).
    interval: Option<(u32, Option<u32>)>,
}

impl Position {
    fn of(grid: &[u32], len: u32) -> Position {
        let i = grid.partition_point(|&g| g < len);
        if i == 0 || grid.get(i) == Some(&len) {
            return Position { i: i.min(grid.len() - 1), len, interval: None };
        }
        Position { i, len, interval: Some((grid[i - 1], grid.get(i).copied())) }
    }

    fn value(&self, values: &[f64]) -> f64 {
        let Some((x0, x1)) = self.interval else { return values[self.i] };
        let (x0, y0) = (f64::from(x0), values[self.i - 1]);
        match (x1, values.get(self.i)) {
            (Some(x1), Some(&y1)) if y1.is_finite() => y0 + (y1 - y0) * (f64::from(self.len) - x0) / (f64::from(x1) - x0),
            _ => y0 * (f64::from(self.len) / x0).powi(2),
        }
    }
}

/// Tabulates every shape for documents up to `max_len` tokens (in parallel over shapes), each
/// priced by the best of its (u, r)'s schemes.
pub fn tabulate(cm: &CostModel, shapes: &[GroupShape], max_len: u32, limit_bytes: f64, progress: &Progress) -> Vec<Candidate> {
    let gpn = cm.cluster.gpus_per_domain();
    tabulate_with(cm, shapes, max_len, limit_bytes, progress, |s| super::model_scheme_options(&cm.model, s.ulysses, s.ring, gpn))
}

/// Tabulates shapes that run exactly their own scheme (the static baselines).
pub fn tabulate_fixed(cm: &CostModel, shapes: &[GroupShape], max_len: u32, limit_bytes: f64) -> Vec<Candidate> {
    let quiet = Progress::stderr(Mode::Off, "", 0, "");
    tabulate_with(cm, shapes, max_len, limit_bytes, &quiet, |s| vec![*s])
}

fn tabulate_with(
    cm: &CostModel,
    shapes: &[GroupShape],
    max_len: u32,
    limit_bytes: f64,
    progress: &Progress,
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
            let max_tokens = options
                .iter()
                .map(|s| max_fitting(cm, s, limit_bytes))
                .max()
                .unwrap_or(0);
            let floor_s = best_time(&[1]);
            // The background: equal documents filling the group to a typical load, as many on
            // every ring slot (at least four each), so that no slot has room the others lack.
            let fill = (FILL_TOKENS_PER_GPU * u64::from(shape.size())).min(u64::from(max_tokens) * 2 / 5).max(1);
            let ring = u64::from(shape.ring);
            let bg_docs = ring * BACKGROUND_DOCS.div_ceil(ring).max(BACKGROUND_DOCS_PER_SLOT);
            let bg_len = fill.div_ceil(bg_docs).clamp(1, u64::from(u32::MAX)) as u32;
            let background = vec![bg_len; bg_docs as usize];
            let t_bg = best_time(&background);
            // A document's marginal time is averaged over copies adding a quarter of the
            // background's tokens, spread evenly over the ring slots when it is shorter than a
            // slot: one short document lands on one slot, or tips a GEMM into another wave, so a
            // single copy's step is either far above its share of the group's time or nothing.
            let marginal = |len: u32| {
                let len64 = u64::from(len).max(1);
                let mut copies = (fill / (MARGINAL_SHARE * len64)).max(1);
                if len64 * ring < fill && copies >= ring {
                    copies -= copies % ring;
                }
                let copies = copies.min(bg_docs) as usize;
                let mut with = background.clone();
                with.extend(std::iter::repeat_n(len, copies));
                ((best_time(&with) - t_bg) / copies as f64).max(0.0)
            };
            // The grid points in parallel too: a large group's table is the setup's longest.
            let marginal_s: Vec<f64> = grid.par_iter().map(|&len| marginal(len)).collect();
            let base_s = t_bg - background.len() as f64 * marginal(bg_len);
            let alone_s: Vec<f64> = grid
                .par_iter()
                .map(|&len| if len <= max_tokens { best_time(&[len]) } else { f64::INFINITY })
                .collect();
            progress.inc(1);
            Candidate {
                shape: *shape,
                size: shape.size(),
                floor_s,
                base_s,
                max_tokens,
                grid: grid.clone(),
                marginal_s,
                alone_s,
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
    let fits = |len: u32| cm.group_memory_bytes(shape, &[len]) <= limit_bytes;
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

    /// A hand-made table: on the grid, between points, before the first, past the last finite
    /// value (alone runs out of memory at 512) and past the grid's end.
    fn candidate() -> Candidate {
        let grid = grid(1000);
        let marginal_s = grid.iter().map(|&l| 1e-6 * f64::from(l) + 1e-9 * f64::from(l).powi(2)).collect();
        let alone_s = grid.iter().map(|&l| if l <= 512 { 2e-3 + 1e-5 * f64::from(l) } else { f64::INFINITY }).collect();
        Candidate {
            shape: GroupShape { scheme: crate::scheme::Scheme::Ulysses, ulysses: 1, ring: 1, variant: Default::default() },
            size: 1,
            floor_s: 1e-3,
            base_s: 2e-3,
            max_tokens: 512,
            grid,
            marginal_s,
            alone_s,
        }
    }

    #[test]
    fn a_documents_figures_in_one_search_equal_each_figure_alone() {
        let c = candidate();
        for len in (1..1200).chain([4000, u32::MAX]) {
            let doc = c.doc(len);
            assert_eq!(doc.marginal_s.to_bits(), c.marginal_s(len).to_bits(), "marginal at {len}");
            assert_eq!(doc.alone_s.to_bits(), c.alone_s(len).to_bits(), "alone at {len}");
            assert_eq!(doc.gain_s.to_bits(), c.anchor_gain_s(len).to_bits(), "gain at {len}");
            let single = c.single_s(len);
            assert_eq!(single.to_bits(), c.finish_s(c.base_s + c.marginal_s(len), c.alone_s(len), c.anchor_gain_s(len)).to_bits());
        }
    }

    #[test]
    fn interpolation_is_linear_between_points_and_quadratic_past_the_last_finite_one() {
        let g = [1, 10, 100];
        let v = [1.0, 10.0, f64::INFINITY];
        assert_eq!(interpolate(&g, &v, 1), 1.0);
        assert_eq!(interpolate(&g, &v, 5), 5.0);
        assert_eq!(interpolate(&g, &v, 10), 10.0);
        assert_eq!(interpolate(&g, &v, 20), 10.0 * 4.0);
        assert_eq!(interpolate(&g[..2], &v[..2], 30), 10.0 * 9.0);
    }

    #[test]
    fn grid_is_geometric_and_ends_at_the_maximum() {
        let g = grid(1000);
        assert_eq!(g[0], 1);
        assert_eq!(*g.last().unwrap(), 1000);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        assert!(g.len() > 25 && g.len() < 35, "{}", g.len());
    }
}
