//! FlashAttention throughput as a tile-cost model fitted to the published kernel tables.
//!
//! A FlashAttention kernel walks the (query, key) plane in tiles of [`ATTENTION_TILE_TOKENS`] a
//! side. The forward pass gives each query tile to one thread block, which loads the tile, loops
//! over the key tiles it can see and writes its output; the backward pass does the same per key
//! tile. So a kernel's time is
//!
//! `t = heads x tile_s(d) x (tiles + n0(d) x lead_tiles)`
//!
//! where `tiles` counts tiles with at least one unmasked pair (a partly masked diagonal tile costs a
//! full one), `lead_tiles` the query tiles (forward) or key tiles (backward) that have work, and
//! `n0` the fixed cost of one thread block in full-tile equivalents. For the published benchmarks
//! (sequences of L = n tiles) this gives FlashAttention's counted throughput
//!
//! - non-causal: `T(L) = T_inf x n / (n + n0)`
//! - causal:     `T(L) = T_inf x n / (n + 1 + 2 n0)` (FlashAttention counts L^2/2 pairs)
//!
//! `(T_inf, n0)` is fitted per GPU architecture, kernel, pass, head dim and causality (a causal
//! kernel also loses to its uneven thread blocks, which one pair cannot carry for both) by least
//! squares on the relative error, a linear problem in `1/T_inf` and `n0/T_inf`. A kernel call that
//! holds a partly masked (diagonal) block runs as a causal call; one made of fully visible blocks
//! only (ring steps between different chunks) as a non-causal one. Across head dims, the time of one pair is linear in the head dim (the two GEMMs
//! grow with it, the softmax does not): `4 d / T_inf(d) = a + b d`, fitted over the tabulated
//! head dims; between them the pair time is interpolated, outside the line is followed
//! (tests/cost_validation.rs predicts FlashAttention-3's head dim 256 from 64 and 128: median
//! error 3% on non-causal calls of 2K tokens and more, 11% over all twelve cells).
//!
//! Forward and backward are separated with the tables that exist (reference/README.md):
//! - Hopper, FlashAttention-2: forward from the FA3 figure's FA2 rows; backward from
//!   `3.5 / T_fwd_bwd = 1 / T_fwd + 2.5 / T_bwd` with the FA2 H100 forward+backward table.
//! - Ampere, FlashAttention-2: only forward+backward is published; the forward is that times the
//!   H100 FA2 ratio `T_fwd / T_fwd_bwd` at the same (causal, head dim, length) (same kernel code),
//!   the backward from the identity above.
//! - Hopper, FlashAttention-3: forward from its table; backward = FA2's H100 backward times FA3's
//!   forward speedup over FA2 at the same point (no FA3 backward table is published here).
//! - Hopper, cuDNN and Triton: forward from the FA3 figure's rows, backward as FlashAttention-3's.
//! - Unfused attention: Hopper forward from the FA3 figure's "Standard" rows and the backward
//!   from the H100 forward+backward table's "PyTorch" rows (the identity above); Ampere from the
//!   A100 table's "PyTorch" rows split with Hopper's forward share. The FlashAttention repo's
//!   Triton kernel (FA-Triton): the A100 table's rows split as FlashAttention-2's; on Hopper
//!   (uncalibrated) times FlashAttention-2's H100/A100 ratio at the same point.
//! - Blackwell: cuDNN and FlashAttention-2 from cuDNN's SDPA benchmark on B200 (causal, head dim
//!   128; non-causal by the kernel's measured non-causal/causal ratio on GB200 or H100). Triton,
//!   FA-Triton and unfused attention (uncalibrated) from Hopper curves scaled to the
//!   FlashAttention-4 paper's B200 peak for Triton, FlashAttention-2's B200/H100 ratio and the
//!   dense BF16 peak.
//!
//! A cluster's calibration `KernelFit` curves (attention_fwd / attention_bwd) of the kernel being
//! priced (or naming no kernel) replace the table points of their head dim and causality before
//! fitting; a varlen curve (its size the document length) replaces a dense one.

use super::pairs::ATTENTION_TILE_TOKENS;
use super::Pass;
use crate::cluster::{Arch, Cluster, Gpu, KernelKind};
use crate::error::{Error, Result};
use crate::reference::{self, FaTable, FA_SEQLENS};
use crate::stats::LeastSquares2;
use serde::{Deserialize, Serialize};

/// Which attention kernel runs the attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    Fa2,
    /// Hopper only.
    Fa3,
    /// cuDNN's fused attention (Transformer Engine's FusedAttention on Hopper and Blackwell).
    Cudnn,
    /// Triton's FlashAttention-2 tutorial kernel (the FA3 figure's "Triton" rows, Hopper).
    Triton,
    /// The FlashAttention repository's Triton kernel (flash_attn_triton.py, written for Ampere;
    /// llm-foundry's `attn_impl: triton`): the A100 table's "FA-Triton" rows.
    FaTriton,
    /// Unfused attention: Q K^T and P V as batched GEMMs around a softmax over the materialised
    /// score matrix, causal masks computed in full (Megatron-LM before FlashAttention, PyTorch's
    /// reference implementation).
    Unfused,
}

impl AttentionKernel {
    /// What the published tables cover best on `arch`: FlashAttention-3 on Hopper, 2 on Ampere,
    /// cuDNN on Blackwell.
    pub fn default_for(arch: Arch) -> AttentionKernel {
        match arch {
            Arch::Ampere | Arch::Ada => AttentionKernel::Fa2,
            Arch::Hopper => AttentionKernel::Fa3,
            Arch::Blackwell => AttentionKernel::Cudnn,
        }
    }

    /// The kernel a measurement row's `kernel` column names (docs/measurements.md), when it is
    /// one the cost model prices: PyTorch's SDPA flash backend is FlashAttention-2's code, its
    /// cuDNN backend and Transformer Engine's fused attention are cuDNN's, its math backend is
    /// unfused attention. None for the others (the memory-efficient kernel, hsap's reference
    /// kernels, names it does not know).
    pub fn of_measured(name: &str) -> Option<AttentionKernel> {
        use AttentionKernel::*;
        [Fa2, Fa3, Cudnn, Triton, FaTriton, Unfused].into_iter().find(|k| k.measured_names().contains(&name.trim()))
    }

    /// The measurement rows' names of this kernel (docs/measurements.md), in the order `validate`
    /// prefers them for timing a plan's calls: the library training frameworks call first.
    pub fn measured_names(self) -> &'static [&'static str] {
        match self {
            AttentionKernel::Fa2 => &["flash_attn_2", "sdpa_flash", "fa2"],
            AttentionKernel::Fa3 => &["flash_attn_3", "fa3"],
            AttentionKernel::Cudnn => &["te_fused_attn", "sdpa_cudnn", "cudnn_sdpa", "cudnn"],
            AttentionKernel::Triton => &["triton"],
            AttentionKernel::FaTriton => &["fa_triton"],
            AttentionKernel::Unfused => &["sdpa_math", "unfused"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Fa2 => "FlashAttention-2",
            AttentionKernel::Fa3 => "FlashAttention-3",
            AttentionKernel::Cudnn => "cuDNN",
            AttentionKernel::Triton => "Triton",
            AttentionKernel::FaTriton => "FA-Triton",
            AttentionKernel::Unfused => "unfused",
        }
    }
}

/// FlashAttention's FLOPs per (query, key) pair and head: 4 d forward, 2.5 x that backward.
pub fn flops_per_pair(pass: Pass, head_dim: f64) -> f64 {
    4.0 * head_dim
        * match pass {
            Pass::Fwd => 1.0,
            Pass::Bwd => 2.5,
        }
}

/// One measured (or derived) throughput point of a kernel and pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub causal: bool,
    pub head_dim: u32,
    pub seqlen: u32,
    pub tflops: f64,
}

/// The tile model of one kernel, pass and head dim.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TileFit {
    pub head_dim: u32,
    /// Counted TFLOP/s of full tiles with no per-block overhead.
    pub peak_tflops: f64,
    /// Fixed cost of one thread block (query tile forward, key tile backward), in tiles.
    pub block_overhead_tiles: f64,
    /// Root-mean-square relative error of the fit over its points.
    pub rms_error: f64,
    pub points: usize,
}

/// The tile model of one pass and causality over all head dims.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurveModel {
    pub pass: Pass,
    pub causal: bool,
    /// By increasing head dim.
    pub fits: Vec<TileFit>,
    /// Time of one pair and head: `(a + b d) x 1e-12` seconds (`4 d / T_inf(d)` in TFLOP units).
    pub pair_time_a: f64,
    pub pair_time_b: f64,
}

impl CurveModel {
    fn fit(pass: Pass, causal: bool, points: &[Point]) -> Result<CurveModel> {
        let mine: Vec<&Point> = points.iter().filter(|p| p.causal == causal).collect();
        let mut dims: Vec<u32> = mine.iter().map(|p| p.head_dim).collect();
        dims.sort_unstable();
        dims.dedup();
        let fits: Vec<TileFit> = dims
            .iter()
            .map(|&d| fit_tiles(d, causal, mine.iter().copied().filter(|p| p.head_dim == d)))
            .collect::<Result<_>>()?;
        if fits.is_empty() {
            return Err(Error::invalid(
                format!("no {} throughput points for the attention {} pass", if causal { "causal" } else { "non-causal" }, pass_name(pass)),
                "the FlashAttention tables or the calibration must cover this pass",
            ));
        }
        let (a, b) = fit_pair_time(pass, &fits);
        Ok(CurveModel {
            pass,
            causal,
            fits,
            pair_time_a: a,
            pair_time_b: b,
        })
    }

    /// Time of one pair and head at this head dim, in 1e-12 s: through the fitted head dims
    /// (piecewise linear), and along the line `a + b d` fitted over all of them outside.
    fn pair_time(&self, head_dim: f64) -> f64 {
        let at = |f: &TileFit| flops_per_pair(self.pass, f64::from(f.head_dim)) / f.peak_tflops;
        let first = &self.fits[0];
        let last = &self.fits[self.fits.len() - 1];
        let line = (self.pair_time_a + self.pair_time_b * head_dim).max(1e-9);
        if head_dim < f64::from(first.head_dim) || head_dim > f64::from(last.head_dim) || self.fits.len() == 1 {
            // Outside: the fitted line, shifted to meet the nearest tabulated head dim.
            let edge = if head_dim < f64::from(first.head_dim) { first } else { last };
            let shift = at(edge) - (self.pair_time_a + self.pair_time_b * f64::from(edge.head_dim));
            return (line + shift).max(1e-9);
        }
        for w in self.fits.windows(2) {
            let (lo, hi) = (f64::from(w[0].head_dim), f64::from(w[1].head_dim));
            if head_dim <= hi {
                let t = (head_dim - lo) / (hi - lo);
                return at(&w[0]) * (1.0 - t) + at(&w[1]) * t;
            }
        }
        at(last)
    }

    /// The per-block overhead at this head dim: linear between fitted head dims, constant outside.
    pub fn block_overhead_tiles(&self, head_dim: f64) -> f64 {
        let first = self.fits[0];
        let last = self.fits[self.fits.len() - 1];
        if head_dim <= f64::from(first.head_dim) {
            return first.block_overhead_tiles;
        }
        for w in self.fits.windows(2) {
            let (lo, hi) = (f64::from(w[0].head_dim), f64::from(w[1].head_dim));
            if head_dim <= hi {
                let t = (head_dim - lo) / (hi - lo);
                return w[0].block_overhead_tiles * (1.0 - t) + w[1].block_overhead_tiles * t;
            }
        }
        last.block_overhead_tiles
    }
}

/// The tile models of one pass: causal and non-causal calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassModel {
    pub pass: Pass,
    pub causal: CurveModel,
    pub full: CurveModel,
}

impl PassModel {
    /// Fits the model to `points` (any head dims, causal and not).
    pub fn fit(pass: Pass, points: &[Point]) -> Result<PassModel> {
        Ok(PassModel {
            pass,
            causal: CurveModel::fit(pass, true, points)?,
            full: CurveModel::fit(pass, false, points)?,
        })
    }

    pub fn curve(&self, causal: bool) -> &CurveModel {
        if causal {
            &self.causal
        } else {
            &self.full
        }
    }

    /// Seconds of one full tile for one head.
    pub fn tile_s(&self, head_dim: f64, causal: bool) -> f64 {
        let tile = f64::from(ATTENTION_TILE_TOKENS);
        tile * tile * self.curve(causal).pair_time(head_dim) * 1e-12
    }

    /// Counted TFLOP/s of full tiles at this head dim.
    pub fn peak_tflops(&self, head_dim: f64, causal: bool) -> f64 {
        flops_per_pair(self.pass, head_dim) / self.curve(causal).pair_time(head_dim)
    }

    /// Time of one kernel call: `tiles` tiles and `lead_tiles` thread blocks, for `heads` heads.
    pub fn time_s(&self, head_dim: f64, heads: f64, tiles: f64, lead_tiles: f64, causal: bool) -> f64 {
        let overhead = self.curve(causal).block_overhead_tiles(head_dim);
        heads * self.tile_s(head_dim, causal) * (tiles + overhead * lead_tiles)
    }

    /// Predicted counted TFLOP/s of the benchmark shape: one sequence of `seqlen` (a multiple of
    /// the tile) per batch entry, causal or not.
    pub fn benchmark_tflops(&self, head_dim: f64, seqlen: u32, causal: bool) -> f64 {
        let n = f64::from(seqlen) / f64::from(ATTENTION_TILE_TOKENS);
        let overhead = self.curve(causal).block_overhead_tiles(head_dim);
        let shape = if causal { n / (n + 1.0 + 2.0 * overhead) } else { n / (n + overhead) };
        self.peak_tflops(head_dim, causal) * shape
    }
}

/// Weighted least squares for one head dim and causality: `1/T = A x + C y` with
/// (x, y) = (1, 1/n) non-causal, (1 + 1/n, 2/n) causal; minimising the relative error
/// `T_obs (A x + C y) - 1`.
fn fit_tiles<'a>(head_dim: u32, causal: bool, points: impl Iterator<Item = &'a Point>) -> Result<TileFit> {
    let rows: Vec<(f64, f64, f64)> = points
        .filter(|p| p.tflops > 0.0 && p.seqlen > 0)
        .map(|p| {
            let n = f64::from(p.seqlen) / f64::from(ATTENTION_TILE_TOKENS);
            let (x, y) = if causal { (1.0 + 1.0 / n, 2.0 / n) } else { (1.0, 1.0 / n) };
            (p.tflops * x, p.tflops * y, p.tflops)
        })
        .collect();
    let mut ls = LeastSquares2::default();
    for &(x, y, _) in &rows {
        ls.add(x, y, 1.0, 1.0);
    }
    let (a, c) = match ls.solve() {
        Some((a, c)) if a > 0.0 && c >= 0.0 => (a, c),
        // No measurable per-block overhead (or a single length): the throughput alone.
        _ => (ls.solve_a().unwrap_or(0.0), 0.0),
    };
    if !(a > 0.0) {
        return Err(Error::invalid(
            format!("no usable attention throughput points for head dim {head_dim}"),
            "check the FlashAttention tables or the calibration's kernel curves",
        ));
    }
    let rms = (rows.iter().map(|&(x, y, _)| (a * x + c * y - 1.0).powi(2)).sum::<f64>() / rows.len() as f64).sqrt();
    Ok(TileFit {
        head_dim,
        peak_tflops: 1.0 / a,
        block_overhead_tiles: c / a,
        rms_error: rms,
        points: rows.len(),
    })
}

/// `flops_per_pair(d) / T_inf(d) = a + b d` over the fitted head dims, least squares on the
/// relative error. One head dim: the pair time is taken proportional to d.
fn fit_pair_time(pass: Pass, fits: &[TileFit]) -> (f64, f64) {
    let ys: Vec<(f64, f64)> = fits
        .iter()
        .map(|f| {
            let d = f64::from(f.head_dim);
            (d, flops_per_pair(pass, d) / f.peak_tflops)
        })
        .collect();
    if ys.len() == 1 {
        return (0.0, ys[0].1 / ys[0].0);
    }
    // Weighted by 1/y^2: minimise sum ((a + b d) / y - 1)^2.
    let mut ls = LeastSquares2::default();
    for &(d, y) in &ys {
        ls.add(1.0, d, y, 1.0 / (y * y));
    }
    // Head dims fitted twice over (the same d) leave no slope: proportional to d, as for one.
    ls.solve().unwrap_or_else(|| (0.0, ys[0].1 / ys[0].0))
}

fn pass_name(pass: Pass) -> &'static str {
    match pass {
        Pass::Fwd => "forward",
        Pass::Bwd => "backward",
    }
}

/// The attention kernel of one GPU: forward and backward tile models.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionModel {
    pub kernel: AttentionKernel,
    pub fwd: PassModel,
    pub bwd: PassModel,
}

impl AttentionModel {
    /// The model for the cluster's GPU and `kernel` (None: the default for its architecture),
    /// from the published tables with the cluster's calibrated curves in place of theirs.
    pub fn for_cluster(cluster: &Cluster, kernel: Option<AttentionKernel>) -> Result<AttentionModel> {
        let kernel = kernel.unwrap_or_else(|| AttentionKernel::default_for(cluster.gpu.arch));
        let (mut fwd, mut bwd) = table_points(&cluster.gpu, kernel)?;
        if let Some(cal) = &cluster.calibration {
            // This kernel's curves (and those naming no kernel), dense before varlen: where both
            // were measured, the packed documents training runs replace the dense sequences.
            let mut fits: Vec<&crate::cluster::KernelFit> = cal
                .kernels
                .iter()
                .filter(|f| f.kernel.as_deref().is_none_or(|k| AttentionKernel::of_measured(k) == Some(kernel)))
                .collect();
            fits.sort_by_key(|f| f.varlen == Some(true));
            for fit in fits {
                let target = match fit.kind {
                    KernelKind::AttentionFwd => &mut fwd,
                    KernelKind::AttentionBwd => &mut bwd,
                    KernelKind::Gemm => continue,
                };
                replace_points(target, fit.head_dim, fit.causal, &fit.points);
            }
        }
        Ok(AttentionModel {
            kernel,
            fwd: PassModel::fit(Pass::Fwd, &fwd)?,
            bwd: PassModel::fit(Pass::Bwd, &bwd)?,
        })
    }

    pub fn pass(&self, pass: Pass) -> &PassModel {
        match pass {
            Pass::Fwd => &self.fwd,
            Pass::Bwd => &self.bwd,
        }
    }
}

/// A calibrated curve replaces the table points of its head dim (all head dims when it names
/// none) and causality (both when it names none).
fn replace_points(points: &mut Vec<Point>, head_dim: Option<u32>, causal: Option<bool>, curve: &[(f64, f64)]) {
    let mut dims: Vec<u32> = match head_dim {
        Some(d) => vec![d],
        None => points.iter().map(|p| p.head_dim).collect(),
    };
    dims.sort_unstable();
    dims.dedup();
    let causals: Vec<bool> = match causal {
        Some(c) => vec![c],
        None => vec![false, true],
    };
    points.retain(|p| !(dims.contains(&p.head_dim) && causals.contains(&p.causal)));
    for &d in &dims {
        for &c in &causals {
            points.extend(curve.iter().filter(|(l, t)| *l >= 1.0 && *t > 0.0).map(|&(seqlen, tflops)| Point {
                causal: c,
                head_dim: d,
                seqlen: seqlen.round() as u32,
                tflops,
            }));
        }
    }
}

/// The published throughput of one implementation row set, as points.
pub fn published(table: FaTable, implementation: &str) -> Result<Vec<Point>> {
    let t = reference::tables()?;
    Ok(t.fa_rows(table, implementation)
        .flat_map(|row| {
            FA_SEQLENS.iter().zip(row.tflops).filter_map(move |(&seqlen, tflops)| {
                tflops.map(|tflops| Point {
                    causal: row.causal,
                    head_dim: row.head_dim,
                    seqlen,
                    tflops,
                })
            })
        })
        .collect())
}

fn find(points: &[Point], p: &Point) -> Option<f64> {
    points
        .iter()
        .find(|q| q.causal == p.causal && q.head_dim == p.head_dim && q.seqlen == p.seqlen)
        .map(|q| q.tflops)
}

/// `3.5 / T_fwd_bwd = 1 / T_fwd + 2.5 / T_bwd`, solved for the backward; None when the figures
/// are inconsistent (the forward alone slower than forward and backward together allow).
fn backward_from(fwd_bwd: f64, fwd: f64) -> Option<f64> {
    let rest = 3.5 / fwd_bwd - 1.0 / fwd;
    (rest > 0.0).then(|| 2.5 / rest)
}

/// The FlashAttention-4 paper's peak on B200 (Zadouri et al. 2026, arXiv:2603.05451, abstract):
/// 1613 TFLOP/s forward in BF16, 1.3x cuDNN 9.13's and 2.7x Triton's best.
const FA4_B200_PEAK_TFLOPS: f64 = 1613.0;
const FA4_OVER_TRITON_B200: f64 = 2.7;

/// The GPU whose tables the Blackwell curves are scaled from.
const HOPPER_REFERENCE_PRESET: &str = "dgx-h100";

/// The measured bf16 points of one kernel and pass on one GPU from cuDNN's SDPA benchmark
/// (reference/sdpa_blackwell_hopper_tflops.csv), head dim 128, the newest B200 run (NGC 25.09,
/// artifacts @0b1577c8c834) and the non-deterministic backward.
fn sdpa_points(gpu: &str, kernel: &str, pass: Pass) -> Result<Vec<Point>> {
    let t = reference::tables()?;
    let name = match pass {
        Pass::Fwd => "fwd",
        Pass::Bwd => "bwd",
    };
    let points: Vec<Point> = t
        .sdpa
        .iter()
        .filter(|r| r.gpu == gpu && r.kernel == kernel && r.pass == name && r.dtype == "bf16" && r.head_dim == 128)
        .filter(|r| r.deterministic != "True" && (r.gpu != "B200" || r.source.ends_with("@0b1577c8c834")))
        .map(|r| Point { causal: r.causal, head_dim: r.head_dim, seqlen: r.seqlen, tflops: r.tflops })
        .collect();
    if points.is_empty() {
        return Err(Error::invalid(format!("no {kernel} {name} points for {gpu} in {}", reference::SDPA_FILE), "the embedded table must hold them"));
    }
    Ok(points)
}

/// Causal points and the non-causal ones `ratios` (non-causal over causal, by length) give.
fn with_non_causal(causal: Vec<Point>, ratios: &[Point]) -> Vec<Point> {
    let derived: Vec<Point> = causal
        .iter()
        .filter(|p| p.causal)
        .filter_map(|p| {
            let r = ratios.iter().find(|r| r.seqlen == p.seqlen && r.head_dim == p.head_dim)?;
            Some(Point { causal: false, tflops: p.tflops * r.tflops, ..*p })
        })
        .collect();
    causal.into_iter().filter(|p| p.causal).chain(derived).collect()
}

/// Points scaled by one factor (a kernel on another GPU with the same curve shape).
fn scaled(points: &[Point], factor: f64) -> Vec<Point> {
    points.iter().map(|p| Point { tflops: p.tflops * factor, ..*p }).collect()
}

/// The largest published forward throughput at head dim 128.
fn peak_at_128(points: &[Point]) -> f64 {
    points.iter().filter(|p| p.head_dim == 128).map(|p| p.tflops).fold(0.0, f64::max)
}

/// A kernel's backward on Hopper where only its forward is published: FlashAttention-2's H100
/// backward times the kernel's forward speedup over FlashAttention-2 at the same point
/// (assumption: the backward keeps the forward's advantage; no backward table is published here).
fn backward_like_fa2(fwd: &[Point], fa2_fwd: &[Point], fa2_bwd: &[Point]) -> Vec<Point> {
    fa2_bwd
        .iter()
        .filter_map(|p| Some(Point { tflops: p.tflops * find(fwd, p)? / find(fa2_fwd, p)?, ..*p }))
        .collect()
}

/// The preset whose GPU the published tables of an architecture were measured on (or, for
/// Blackwell, derived for): Ada has no published table and runs the Ampere-era kernels.
fn table_preset(arch: Arch) -> &'static str {
    match arch {
        Arch::Ampere | Arch::Ada => "dgx-a100-80g",
        Arch::Hopper => HOPPER_REFERENCE_PRESET,
        Arch::Blackwell => "dgx-b200",
    }
}

/// How much faster than its architecture's table GPU a GPU runs attention: the ratio of their
/// dense BF16 peaks (1 for the tables' own GPUs and those with the same die; H20 on Hopper's
/// tables, L20 and L40S on A100's, GB200 on B200's). FlashAttention at head dim 64-128 on long
/// sequences is bound by its tensor-core GEMMs, so its curve follows the peak; this is a
/// derivation, not a measurement (the presets that rely on it say so in `uncalibrated`).
/// GB200's measured cuDNN points (reference/sdpa_blackwell_hopper_tflops.csv) check it:
/// tests/cost_validation.rs.
pub fn peak_ratio(gpu: &Gpu) -> Result<f64> {
    let table = Cluster::resolve(table_preset(gpu.arch))?.gpu;
    Ok(gpu.bf16_dense_tflops / table.bf16_dense_tflops)
}

/// Forward and backward points for a GPU and kernel: its architecture's tables (derived as the
/// module explains) scaled by [`peak_ratio`].
pub fn table_points(gpu: &Gpu, kernel: AttentionKernel) -> Result<(Vec<Point>, Vec<Point>)> {
    let table_gpu = Cluster::resolve(table_preset(gpu.arch))?.gpu;
    let factor = gpu.bf16_dense_tflops / table_gpu.bf16_dense_tflops;
    let (fwd, bwd) = arch_points(&table_gpu, kernel).map_err(|e| match gpu.arch {
        Arch::Ada => Error::invalid(
            format!("no published {} attention throughput for Ada GPUs, nor for the Ampere tables they are derived from", kernel.name()),
            "choose another attention_kernel (fa2 runs everywhere)",
        ),
        _ => e,
    })?;
    if factor == 1.0 {
        return Ok((fwd, bwd));
    }
    Ok((scaled(&fwd, factor), scaled(&bwd, factor)))
}

/// The points of the GPU the architecture's tables describe (`gpu` is that GPU).
fn arch_points(gpu: &Gpu, kernel: AttentionKernel) -> Result<(Vec<Point>, Vec<Point>)> {
    let arch = gpu.arch;
    let h100_fa2_fwd = published(FaTable::Fa3H100Fwd, "FlashAttention-2")?;
    let h100_fa2_fb = published(FaTable::Fa2H100FwdBwd, "FlashAttention-2")?;
    let h100_fa2_bwd: Vec<Point> = h100_fa2_fb
        .iter()
        .filter_map(|p| {
            let fwd = find(&h100_fa2_fwd, p)?;
            backward_from(p.tflops, fwd).map(|tflops| Point { tflops, ..*p })
        })
        .collect();
    // Split a forward+backward table into passes with the forward's share of a reference kernel
    // whose passes are both known at the same point.
    let split = |fb: &[Point], ref_fwd: &[Point], ref_fb: &[Point]| -> (Vec<Point>, Vec<Point>) {
        let mut fwd = Vec::new();
        let mut bwd = Vec::new();
        for p in fb {
            let (Some(f), Some(r_fb)) = (find(ref_fwd, p), find(ref_fb, p)) else { continue };
            let forward = p.tflops * f / r_fb;
            fwd.push(Point { tflops: forward, ..*p });
            if let Some(backward) = backward_from(p.tflops, forward) {
                bwd.push(Point { tflops: backward, ..*p });
            }
        }
        (fwd, bwd)
    };
    let hopper_unfused = || -> Result<(Vec<Point>, Vec<Point>)> {
        let fwd = published(FaTable::Fa3H100Fwd, "Standard")?;
        let fb = published(FaTable::Fa2H100FwdBwd, "PyTorch")?;
        let bwd = fb.iter().filter_map(|p| Some(Point { tflops: backward_from(p.tflops, find(&fwd, p)?)?, ..*p })).collect();
        Ok((fwd, bwd))
    };
    let hopper_forward_only = |name: &str| -> Result<(Vec<Point>, Vec<Point>)> {
        let fwd = published(FaTable::Fa3H100Fwd, name)?;
        let bwd = backward_like_fa2(&fwd, &h100_fa2_fwd, &h100_fa2_bwd);
        Ok((fwd, bwd))
    };
    let no_table = |why: &str| {
        Err(Error::invalid(
            format!("no published {} attention throughput for {arch:?} GPUs: {why}", kernel.name()),
            "choose another attention_kernel (fa2 runs everywhere)",
        ))
    };
    match (arch, kernel) {
        (Arch::Ampere, AttentionKernel::Fa2) => {
            Ok(split(&published(FaTable::Fa2A100FwdBwd, "FlashAttention-2")?, &h100_fa2_fwd, &h100_fa2_fb))
        }
        // Only forward+backward is published for A100; its split follows FlashAttention-2's.
        (Arch::Ampere, AttentionKernel::FaTriton) => Ok(split(&published(FaTable::Fa2A100FwdBwd, "FA-Triton")?, &h100_fa2_fwd, &h100_fa2_fb)),
        (Arch::Ampere, AttentionKernel::Triton) => no_table("the FA3 figure's Triton kernel is measured on H100 only"),
        (Arch::Ampere, AttentionKernel::Unfused) => {
            let (h_fwd, _) = hopper_unfused()?;
            Ok(split(&published(FaTable::Fa2A100FwdBwd, "PyTorch")?, &h_fwd, &published(FaTable::Fa2H100FwdBwd, "PyTorch")?))
        }
        (Arch::Ampere, AttentionKernel::Fa3 | AttentionKernel::Cudnn) => no_table("FlashAttention-3 and the cuDNN table are Hopper's"),
        (Arch::Hopper, AttentionKernel::Fa2) => Ok((h100_fa2_fwd, h100_fa2_bwd)),
        (Arch::Hopper, AttentionKernel::Fa3) => hopper_forward_only("FlashAttention-3"),
        (Arch::Hopper, AttentionKernel::Cudnn) => hopper_forward_only("cuDNN"),
        (Arch::Hopper, AttentionKernel::Triton) => hopper_forward_only("Triton"),
        (Arch::Hopper, AttentionKernel::Unfused) => hopper_unfused(),
        // An Ampere-era kernel on Hopper (uncalibrated): its A100 curve times FlashAttention-2's
        // H100/A100 ratio at the same point, both being mma.sync kernels of the same design.
        (Arch::Hopper, AttentionKernel::FaTriton) => {
            let a100 = published(FaTable::Fa2A100FwdBwd, "FlashAttention-2")?;
            let ratio = |p: &Point| Some(find(&h100_fa2_fb, p)? / find(&a100, p)?);
            let on_hopper: Vec<Point> = published(FaTable::Fa2A100FwdBwd, "FA-Triton")?
                .iter()
                .filter_map(|p| Some(Point { tflops: p.tflops * ratio(p)?, ..*p }))
                .collect();
            Ok(split(&on_hopper, &h100_fa2_fwd, &h100_fa2_fb))
        }
        // Blackwell: cuDNN and FlashAttention-2 are measured on B200 for causal calls at head dim
        // 128 (cuDNN's SDPA benchmark); their non-causal curves follow the same kernel's
        // non-causal/causal ratio where that is measured (cuDNN on GB200, FlashAttention-2 on
        // H100). The other kernels are scaled from Hopper, uncalibrated: Triton to the peak the
        // FlashAttention-4 paper implies (FA4's 1613 TFLOP/s over its 2.7x), unfused attention
        // by the dense BF16 peak (its GEMMs), FA-Triton as FlashAttention-2.
        (Arch::Blackwell, AttentionKernel::Cudnn) => {
            let (fwd, bwd) = (sdpa_points("B200", "cudnn_bf16", Pass::Fwd)?, sdpa_points("B200", "cudnn_bf16", Pass::Bwd)?);
            let ratio = |pass| -> Result<Vec<Point>> {
                let gb200 = sdpa_points("GB200", "cudnn", pass)?;
                Ok(gb200.iter().filter(|p| !p.causal).filter_map(|p| {
                    let causal = gb200.iter().find(|q| q.causal && q.seqlen == p.seqlen && q.head_dim == p.head_dim)?;
                    Some(Point { tflops: p.tflops / causal.tflops, ..*p })
                }).collect())
            };
            Ok((with_non_causal(fwd, &ratio(Pass::Fwd)?), with_non_causal(bwd, &ratio(Pass::Bwd)?)))
        }
        (Arch::Blackwell, AttentionKernel::Fa2) => {
            let h100_ratio = |points: &[Point]| -> Vec<Point> {
                points.iter().filter(|p| !p.causal).filter_map(|p| Some(Point { tflops: p.tflops / find(points, &Point { causal: true, ..*p })?, ..*p })).collect()
            };
            let fwd = sdpa_points("B200", "flash_attention", Pass::Fwd)?;
            let bwd = sdpa_points("B200", "flash_attention", Pass::Bwd)?;
            Ok((with_non_causal(fwd, &h100_ratio(&h100_fa2_fwd)), with_non_causal(bwd, &h100_ratio(&h100_fa2_bwd))))
        }
        (Arch::Blackwell, AttentionKernel::Triton) => {
            let (fwd, bwd) = hopper_forward_only("Triton")?;
            let factor = FA4_B200_PEAK_TFLOPS / FA4_OVER_TRITON_B200 / peak_at_128(&fwd);
            Ok((scaled(&fwd, factor), scaled(&bwd, factor)))
        }
        (Arch::Blackwell, AttentionKernel::FaTriton) => {
            let hopper = Cluster::resolve(HOPPER_REFERENCE_PRESET)?.gpu;
            let factor = peak_at_128(&arch_points(gpu, AttentionKernel::Fa2)?.0) / peak_at_128(&arch_points(&hopper, AttentionKernel::Fa2)?.0);
            let (fwd, bwd) = arch_points(&hopper, AttentionKernel::FaTriton)?;
            Ok((scaled(&fwd, factor), scaled(&bwd, factor)))
        }
        (Arch::Blackwell, AttentionKernel::Unfused) => {
            let (fwd, bwd) = hopper_unfused()?;
            let factor = gpu.bf16_dense_tflops / Cluster::resolve(HOPPER_REFERENCE_PRESET)?.gpu.bf16_dense_tflops;
            Ok((scaled(&fwd, factor), scaled(&bwd, factor)))
        }
        (Arch::Blackwell, AttentionKernel::Fa3) => no_table("FlashAttention-3 runs on Hopper only"),
        (Arch::Ada, _) => Err(Error::internal("Ada's attention is derived from the Ampere tables (table_preset)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_model_reproduces_its_closed_forms() {
        // One fit with T_inf = 200 and n0 = 1.5, evaluated on the benchmark shapes, gives back
        // 200 n / (n + 1.5) and 200 n / (n + 4).
        let points: Vec<Point> = [512u32, 2048, 16384]
            .iter()
            .flat_map(|&l| {
                let n = f64::from(l) / 128.0;
                [
                    Point { causal: false, head_dim: 64, seqlen: l, tflops: 200.0 * n / (n + 1.5) },
                    Point { causal: true, head_dim: 64, seqlen: l, tflops: 200.0 * n / (n + 4.0) },
                ]
            })
            .collect();
        let m = PassModel::fit(Pass::Fwd, &points).unwrap();
        for f in [m.causal.fits[0], m.full.fits[0]] {
            assert!((f.peak_tflops - 200.0).abs() < 1e-9 && (f.block_overhead_tiles - 1.5).abs() < 1e-9, "{f:?}");
        }
        // n = 4 causal: 200 x 4 / 8 = 100
        assert!((m.benchmark_tflops(64.0, 512, true) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn pair_time_is_linear_in_head_dim() {
        // Peaks of 4d / (0.2 + 0.02 d): 64 -> 177.78, 128 -> 190.48; the fit recovers a and b.
        let mk = |d: u32, causal: bool| {
            let peak = 4.0 * f64::from(d) / (0.2 + 0.02 * f64::from(d));
            Point { causal, head_dim: d, seqlen: 16384, tflops: peak }
        };
        let m = PassModel::fit(Pass::Fwd, &[mk(64, false), mk(128, false), mk(64, true), mk(128, true)]).unwrap();
        assert!((m.full.pair_time_a - 0.2).abs() < 1e-9 && (m.full.pair_time_b - 0.02).abs() < 1e-12, "{m:?}");
        // head dim 32: 128 / 0.84 = 152.38 TFLOP/s
        assert!((m.peak_tflops(32.0, false) - 128.0 / 0.84).abs() < 1e-9);
    }

    #[test]
    fn forward_and_backward_compose_to_the_published_total() {
        // H100 FA2, non-causal, head dim 128, 16K: forward 370, forward+backward 338, so the
        // backward is 2.5 / (3.5/338 - 1/370) = 326.7 TFLOP/s.
        let (_, bwd) = table_points(&Cluster::resolve("dgx-h100").unwrap().gpu, AttentionKernel::Fa2).unwrap();
        let p = bwd.iter().find(|p| !p.causal && p.head_dim == 128 && p.seqlen == 16384).unwrap();
        assert!((p.tflops - 2.5 / (3.5 / 338.0 - 1.0 / 370.0)).abs() < 1e-9);
        assert!((p.tflops - 326.7).abs() < 0.1);
    }

    #[test]
    fn calibrated_curves_replace_the_tables_for_their_shape() {
        use crate::cluster::{Calibration, KernelFit};
        // A measured causal forward curve at head dim 128: 100 TFLOP/s at 512 tokens (n = 4),
        // 150 at 16K (n = 128). Two points fit the causal tile model exactly.
        let mut cluster = Cluster::resolve("dgx-a100-80g").unwrap();
        cluster.calibration = Some(Calibration {
            collectives: Vec::new(),
            kernels: vec![KernelFit {
                head_dim: Some(128),
                causal: Some(true),
                ..KernelFit::curve(KernelKind::AttentionFwd, vec![(512.0, 100.0), (16384.0, 150.0)], "test")
            }],
            ..Calibration::default()
        });
        let calibrated = AttentionModel::for_cluster(&cluster, None).unwrap();
        let tables = AttentionModel::for_cluster(&Cluster::resolve("dgx-a100-80g").unwrap(), None).unwrap();
        for (l, t) in [(512, 100.0), (16384, 150.0)] {
            let got = calibrated.fwd.benchmark_tflops(128.0, l, true);
            assert!((got - t).abs() < 1e-6, "{l}: {got}");
        }
        // Head dim 64, the non-causal curves and the backward keep the published tables.
        assert_eq!(calibrated.fwd.full, tables.fwd.full);
        assert_eq!(calibrated.bwd, tables.bwd);
        assert_eq!(calibrated.fwd.causal.fits[0], tables.fwd.causal.fits[0]);
    }

    #[test]
    fn the_stack_kernel_selects_its_curves() {
        use crate::cluster::{Calibration, KernelFit};
        // H100, causal forward at head dim 128: cuDNN measured with a peak of 300 TFLOP/s dense;
        // FlashAttention-2 with 200 dense and 250 varlen. Each curve follows the causal tile model
        // with no block overhead, T(L) = T_inf x n / (n + 1) for n = L / 128 tiles, so that the
        // fit returns it exactly: 16K tokens run at T_inf x 128 / 129.
        let curve = |kernel: &str, varlen: bool, peak: f64| KernelFit {
            kernel: Some(kernel.into()),
            head_dim: Some(128),
            causal: Some(true),
            varlen: Some(varlen),
            ..KernelFit::curve(KernelKind::AttentionFwd, [4096.0, 16384.0].iter().map(|&l: &f64| (l, peak * (l / 128.0) / (l / 128.0 + 1.0))).collect(), "test")
        };
        let mut h100 = Cluster::resolve("dgx-h100").unwrap();
        h100.calibration = Some(Calibration {
            kernels: vec![curve("flash_attn_2", true, 250.0), curve("sdpa_cudnn", false, 300.0), curve("sdpa_flash", false, 200.0)],
            ..Calibration::default()
        });
        let at = |k| AttentionModel::for_cluster(&h100, Some(k)).unwrap().fwd.benchmark_tflops(128.0, 16384, true);
        let at16k = |peak: f64| peak * 128.0 / 129.0;
        assert!((at(AttentionKernel::Cudnn) - at16k(300.0)).abs() < 1e-6, "{}", at(AttentionKernel::Cudnn));
        // FlashAttention-2's varlen curve replaces its dense one.
        assert!((at(AttentionKernel::Fa2) - at16k(250.0)).abs() < 1e-6, "{}", at(AttentionKernel::Fa2));
        // No curve of FlashAttention-3: its published table.
        let tables = AttentionModel::for_cluster(&Cluster::resolve("dgx-h100").unwrap(), Some(AttentionKernel::Fa3)).unwrap();
        assert_eq!(at(AttentionKernel::Fa3), tables.fwd.benchmark_tflops(128.0, 16384, true));
        assert_eq!(AttentionKernel::of_measured("sdpa_efficient"), None);
        assert_eq!(AttentionKernel::of_measured(crate::formats::measurements::REFERENCE_KERNEL), None);
    }

    #[test]
    fn fa3_needs_hopper() {
        let a100 = Cluster::resolve("dgx-a100-80g").unwrap();
        let err = AttentionModel::for_cluster(&a100, Some(AttentionKernel::Fa3)).unwrap_err().to_string();
        assert!(err.contains("no published FlashAttention-3 attention throughput for Ampere"), "{err}");
    }

    #[test]
    fn every_kernel_with_a_table_fits_on_its_gpus() {
        use AttentionKernel::*;
        for (preset, kernels) in [
            ("dgx-a100-80g", vec![Fa2, FaTriton, Unfused]),
            ("dgx-h100", vec![Fa2, Fa3, Cudnn, Triton, FaTriton, Unfused]),
            ("dgx-b200", vec![Fa2, Cudnn, Triton, Unfused]),
        ] {
            let cluster = Cluster::resolve(preset).unwrap();
            for k in kernels {
                let m = AttentionModel::for_cluster(&cluster, Some(k)).unwrap_or_else(|e| panic!("{preset} {k:?}: {e}"));
                assert!(m.fwd.peak_tflops(128.0, false) > 0.0 && m.bwd.peak_tflops(128.0, true) > 0.0);
            }
        }
    }

    #[test]
    fn hopper_kernels_keep_their_published_order() {
        // The FA3 figure (H100, head dim 128, 16K, non-causal forward): FlashAttention-3 648,
        // cuDNN 595, Triton 395, FlashAttention-2 370, standard attention out of memory (139 at 8K).
        let h100 = Cluster::resolve("dgx-h100").unwrap();
        let at = |k| AttentionModel::for_cluster(&h100, Some(k)).unwrap().fwd.benchmark_tflops(128.0, 8192, false);
        let (fa3, cudnn, triton, fa2, unfused) =
            (at(AttentionKernel::Fa3), at(AttentionKernel::Cudnn), at(AttentionKernel::Triton), at(AttentionKernel::Fa2), at(AttentionKernel::Unfused));
        assert!(fa3 > cudnn && cudnn > triton && triton > fa2 && fa2 > 2.0 * unfused, "{fa3} {cudnn} {triton} {fa2} {unfused}");
        assert!((unfused / 139.0 - 1.0).abs() < 0.1, "{unfused}");
    }

    #[test]
    fn gb200_follows_b200_by_the_peak_ratio_as_its_published_cudnn_points_do() {
        // GB200's cuDNN (cudnn_fe, the same benchmark's GB200 artifact) causal bf16 at head dim
        // 128: forward 1584, 1668, 1681 TFLOP/s at 8K, 16K, 32K. The preset derives GB200 from
        // B200's tables times 2500 / 2250 = 1.111 and lands within 10% of each.
        let gb200 = Cluster::resolve("gb200-nvl72").unwrap();
        assert!((peak_ratio(&gb200.gpu).unwrap() - 2500.0 / 2250.0).abs() < 1e-12);
        let m = AttentionModel::for_cluster(&gb200, Some(AttentionKernel::Cudnn)).unwrap();
        let measured = sdpa_points("GB200", "cudnn_fe", Pass::Fwd).unwrap();
        for l in [8192, 16384, 32768] {
            let p = measured.iter().find(|p| p.causal && p.seqlen == l).unwrap();
            let got = m.fwd.benchmark_tflops(128.0, l, true);
            assert!((got / p.tflops - 1.0).abs() < 0.1, "{l}: {got} vs {}", p.tflops);
        }
    }

    #[test]
    fn ada_runs_the_ampere_tables_scaled_by_its_peak() {
        // L40S: A100's FlashAttention-2 points times 362.05 / 312; no FlashAttention-3 or cuDNN
        // table exists for Ada.
        let l40s = Cluster::resolve("l40s").unwrap();
        let a100 = Cluster::resolve("dgx-a100-80g").unwrap();
        let (fwd, bwd) = table_points(&l40s.gpu, AttentionKernel::Fa2).unwrap();
        let (a_fwd, a_bwd) = table_points(&a100.gpu, AttentionKernel::Fa2).unwrap();
        for (p, q) in fwd.iter().zip(&a_fwd).chain(bwd.iter().zip(&a_bwd)) {
            assert!((p.tflops - q.tflops * 362.05 / 312.0).abs() < 1e-9);
        }
        assert_eq!(AttentionKernel::default_for(Arch::Ada), AttentionKernel::Fa2);
        let err = AttentionModel::for_cluster(&l40s, Some(AttentionKernel::Fa3)).unwrap_err().to_string();
        assert!(err.contains("no published FlashAttention-3 attention throughput for Ada GPUs"), "{err}");
        // The tables' own GPUs keep their curves unscaled.
        for preset in ["dgx-a100-80g", "a800", "pcie-a100", "dgx-h100", "h800", "dgx-h200", "dgx-b200"] {
            assert_eq!(peak_ratio(&Cluster::resolve(preset).unwrap().gpu).unwrap(), 1.0, "{preset}");
        }
    }

    #[test]
    fn blackwell_kernels_fit_their_measured_b200_points() {
        // cuDNN's SDPA benchmark on B200 (NGC 25.09): causal bf16 at head dim 128 (128 query, 8
        // KV heads), cuDNN forward 1384 TFLOP/s at 8K, backward 995; FlashAttention-2 400 and 318.
        let b200 = Cluster::resolve("dgx-b200").unwrap();
        for (kernel, fwd, bwd) in [(AttentionKernel::Cudnn, 1384.231, 994.850), (AttentionKernel::Fa2, 399.925, 318.004)] {
            let m = AttentionModel::for_cluster(&b200, Some(kernel)).unwrap();
            let (f, b) = (m.fwd.benchmark_tflops(128.0, 8192, true), m.bwd.benchmark_tflops(128.0, 8192, true));
            assert!((f / fwd - 1.0).abs() < 0.1 && (b / bwd - 1.0).abs() < 0.1, "{kernel:?}: {f} vs {fwd}, {b} vs {bwd}");
        }
        // Triton stays scaled to the FA4 paper: its H100 peak times 1613 / 2.7 over it.
        let (fwd, _) = table_points(&b200.gpu, AttentionKernel::Triton).unwrap();
        assert!((peak_at_128(&fwd) - 1613.0 / 2.7).abs() < 1e-9);
        assert!(table_points(&b200.gpu, AttentionKernel::Fa3).is_err());
    }
}
