//! Compute time of the kernels a layer runs: GEMMs (tile and wave quantisation, memory roofline),
//! memory-bound operations (bytes over achievable HBM bandwidth) and the launch floor. Attention
//! has its own fitted model in `cost::attention`.

use super::attention::AttentionModel;
use crate::cluster::{Cluster, KernelKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    #[default]
    Bf16,
    Fp8,
}

impl Dtype {
    /// Bytes of one activation element as communicated (FP8 training still moves bf16 activations).
    pub fn activation_bytes(self) -> f64 {
        2.0
    }

    /// Bytes of one GEMM operand element as read from memory.
    pub fn gemm_operand_bytes(self) -> f64 {
        match self {
            Dtype::Bf16 => 2.0,
            Dtype::Fp8 => 1.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::Fp8 => "fp8",
        }
    }
}

/// Which pass of the attention kernel (FlashAttention counts backward as 2.5x forward FLOPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    Fwd,
    Bwd,
}

/// Output tiles (rows x columns) cuBLAS cuts a GEMM into, most efficient first: NVIDIA's "Matrix
/// Multiplication Background User's Guide" (DU-09799-001, section 2.3, "Typical Tile Dimensions
/// In cuBLAS And Performance") lists 256x128 and 128x256 (most efficient), 128x128, 256x64 and
/// 64x256, 128x64 and 64x128, and 64x64 (least efficient, for small GEMMs). CUTLASS's Ampere,
/// Hopper and Blackwell bf16 kernels are built from the same shapes.
pub const GEMM_TILES: [(f64, f64); 8] =
    [(256.0, 128.0), (128.0, 256.0), (128.0, 128.0), (256.0, 64.0), (64.0, 256.0), (128.0, 64.0), (64.0, 128.0), (64.0, 64.0)];

/// Operand reuse `rows x cols / (rows + cols)` (FLOPs per operand element a tile loads per step
/// of K, halved) of the 128 x 128 tile. The guide above: larger tiles "have more data reuse,
/// allowing them to use less bandwidth and be more efficient than smaller tiles". Assumed: from
/// 128 x 128 up a tile runs at the GPU's measured maximum matmul rate (CUTLASS's and cuBLAS's
/// peak kernels are 128 x 128 and larger), and below it its mainloop is bound by the operand
/// bandwidth that 128 x 128 just saturates, so it runs in proportion to its reuse.
pub const GEMM_FULL_RATE_REUSE: f64 = 128.0 * 128.0 / 256.0;

/// A tile's mainloop rate as a fraction of the measured maximum matmul rate.
pub fn tile_efficiency(rows: f64, cols: f64) -> f64 {
    (rows * cols / (rows + cols) / GEMM_FULL_RATE_REUSE).min(1.0)
}

/// Peak dense tensor throughput for the dtype, FLOP/s.
pub fn peak_flops(cluster: &Cluster, dtype: Dtype) -> f64 {
    let tflops = match dtype {
        Dtype::Bf16 => cluster.gpu.bf16_dense_tflops,
        Dtype::Fp8 => cluster.gpu.fp8_dense_tflops.unwrap_or(cluster.gpu.bf16_dense_tflops),
    };
    tflops * 1e12
}

/// The fraction of the dtype's dense peak a large GEMM sustains.
pub fn gemm_efficiency(cluster: &Cluster, dtype: Dtype) -> f64 {
    let bf16 = cluster.gpu.gemm_efficiency.unwrap_or(1.0);
    match dtype {
        Dtype::Bf16 => bf16,
        Dtype::Fp8 => cluster.gpu.fp8_gemm_efficiency.unwrap_or(bf16),
    }
}

/// The shortest time one kernel takes: its launch overhead.
pub fn launch_s(cluster: &Cluster) -> f64 {
    cluster.gpu.kernel_launch_us.unwrap_or(0.0) * 1e-6
}

/// Bytes per second a streaming kernel achieves.
pub fn hbm_bytes_per_s(cluster: &Cluster) -> f64 {
    cluster.gpu.hbm_gb_per_s * 1e9 * cluster.gpu.hbm_efficiency.unwrap_or(1.0)
}

/// Time of a memory-bound kernel that reads and writes `bytes` in all.
pub fn memory_time_s(cluster: &Cluster, bytes: f64) -> f64 {
    if bytes <= 0.0 {
        return 0.0;
    }
    (bytes / hbm_bytes_per_s(cluster)).max(launch_s(cluster))
}

/// Time of an `m x k` by `k x n` GEMM: the fastest of cuBLAS's tiles ([`GEMM_TILES`]) under
/// tile quantisation (a partial tile costs a full one), wave quantisation (tiles run in waves of
/// one per SM; a partial last wave costs a full one) and the tile's efficiency
/// ([`tile_efficiency`]), bounded below by the memory roofline (operands read once, the output
/// written once: what makes small-K GEMMs memory-bound) and the launch.
pub fn gemm_time_s(cluster: &Cluster, dtype: Dtype, m: f64, n: f64, k: f64) -> f64 {
    if m <= 0.0 || n <= 0.0 || k <= 0.0 {
        return 0.0;
    }
    let flops = 2.0 * m * n * k;
    if let Some(tflops) = calibrated_gemm_tflops(cluster, dtype, m * n * k) {
        return (flops / (tflops * 1e12)).max(launch_s(cluster));
    }
    let rate = peak_flops(cluster, dtype) * gemm_efficiency(cluster, dtype);
    let compute_s = GEMM_TILES
        .iter()
        .map(|&(rows, cols)| tiled_gemm_s(cluster.gpu.sms, rate, rows, cols, m, n, k))
        .fold(f64::INFINITY, f64::min);
    // Operands once from HBM, the output written in bf16: the roofline's memory side.
    let bytes = (m * k + k * n) * dtype.gemm_operand_bytes() + m * n * Dtype::Bf16.activation_bytes();
    compute_s.max(bytes / hbm_bytes_per_s(cluster)).max(launch_s(cluster))
}

/// Compute time of a GEMM cut into `rows x cols` tiles on `sms` SMs sustaining `rate` FLOP/s
/// together with the largest tiles: every tile a full one, every wave a full one (without an SM
/// count, the work spread evenly), each SM at its share of `rate` times the tile's efficiency.
pub fn tiled_gemm_s(sms: Option<u32>, rate: f64, rows: f64, cols: f64, m: f64, n: f64, k: f64) -> f64 {
    let tiles = (m / rows).ceil() * (n / cols).ceil();
    let tile_flops = 2.0 * rows * cols * k;
    let rate = rate * tile_efficiency(rows, cols);
    match sms {
        Some(sms) => {
            let sms = f64::from(sms);
            (tiles / sms).ceil() * tile_flops / (rate / sms)
        }
        None => tiles * tile_flops / rate,
    }
}

/// A calibrated GEMM curve of `dtype` (m x n x k -> TFLOP/s), interpolated in log size, clamped
/// at its ends: the first curve measured in that dtype, else the first that names none (profiles
/// written before rows named their dtype). A curve of another dtype never prices these GEMMs.
fn calibrated_gemm_tflops(cluster: &Cluster, dtype: Dtype, size: f64) -> Option<f64> {
    let gemms = || cluster.calibration.as_ref().into_iter().flat_map(|c| &c.kernels).filter(|k| k.kind == KernelKind::Gemm);
    let fit = gemms()
        .find(|k| k.dtype.as_deref() == Some(dtype.name()))
        .or_else(|| gemms().find(|k| k.dtype.is_none()))?;
    interpolate_log(&fit.points, size)
}

/// Piecewise-linear interpolation of (x, y) points in log x, clamped at the ends.
pub fn interpolate_log(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let usable: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
    let (first, last) = (usable.first()?, usable.last()?);
    if x <= first.0 {
        return Some(first.1);
    }
    if x >= last.0 {
        return Some(last.1);
    }
    usable.windows(2).find(|w| x <= w[1].0).map(|w| {
        let t = (x.ln() - w[0].0.ln()) / (w[1].0.ln() - w[0].0.ln());
        w[0].1 + t * (w[1].1 - w[0].1)
    })
}

/// Time of attention over `pairs` (query, key) pairs for `heads` heads of `head_dim`, where the
/// kernel sees query blocks of `q_len` and key blocks of `k_len` tokens, as causal squares of
/// `min(q_len, k_len)`. The cost model itself prices exact tiles from the layout
/// (`cost::pairs::SlotWork`); this is the same tile model for callers that only know sizes.
#[allow(clippy::too_many_arguments)]
pub fn attention_time_s(
    cluster: &Cluster,
    _dtype: Dtype,
    pass: Pass,
    heads: f64,
    head_dim: f64,
    pairs: f64,
    q_len: f64,
    k_len: f64,
) -> f64 {
    if pairs <= 0.0 {
        return 0.0;
    }
    let Ok(model) = AttentionModel::for_cluster(cluster, None) else { return 0.0 };
    let tile = f64::from(super::pairs::ATTENTION_TILE_TOKENS);
    let len = q_len.min(k_len).max(1.0);
    let t = (len / tile).ceil();
    // `pairs / (len^2 / 2)` causal squares of t tiles a side.
    let squares = pairs / (len * (len + 1.0) / 2.0);
    let m = model.pass(pass);
    m.time_s(head_dim, heads, squares * t * (t + 1.0) / 2.0, squares * t, true).max(launch_s(cluster))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a100() -> Cluster {
        Cluster::resolve("dgx-a100-80g").unwrap()
    }

    #[test]
    fn large_gemms_run_at_the_sustained_fraction_of_peak() {
        // 8192 x 8192 x 8192: 128 x 128 tiles, 64 x 64 = 4096 of them in 38 waves of 108 (4096/4104
        // = 99.8% full; 256 x 128 tiles fill 19 waves as well); 2 x 8192^3 = 1.0995e12 FLOPs at 312
        // x 0.869 (A100's measured MAMF share) x 0.99805 TFLOP/s = 4.0627 ms.
        let t = gemm_time_s(&a100(), Dtype::Bf16, 8192.0, 8192.0, 8192.0);
        let expected = 2.0 * 8192f64.powi(3) / (312e12 * 0.869 * (4096.0 / 4104.0));
        assert!((t - expected).abs() / expected < 1e-12, "{t} vs {expected}");
    }

    #[test]
    fn tile_efficiency_follows_operand_reuse_below_128_by_128() {
        // rows x cols / (rows + cols) over 128 x 128's 64.
        assert_eq!(tile_efficiency(256.0, 128.0), 1.0);
        assert_eq!(tile_efficiency(128.0, 128.0), 1.0);
        assert!((tile_efficiency(256.0, 64.0) - 0.8).abs() < 1e-15);
        assert!((tile_efficiency(128.0, 64.0) - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(tile_efficiency(64.0, 64.0), 0.5);
    }

    #[test]
    fn one_tile_past_a_full_wave_doubles_the_time() {
        // 1152 x 1536 on an A100: 9 x 12 = 108 tiles of 128 x 128, one full wave on 108 SMs, each SM
        // one tile of 2 x 128^2 x 4096 FLOPs at 312 x 0.869 / 108 TFLOP/s = 53.46 us.
        let c = a100();
        let one_wave = gemm_time_s(&c, Dtype::Bf16, 1152.0, 1536.0, 4096.0);
        let per_sm = 312e12 * 0.869 / 108.0;
        let expected = 2.0 * 128.0 * 128.0 * 4096.0 / per_sm;
        assert!((one_wave - expected).abs() / expected < 1e-12, "{one_wave} vs {expected}");
        // 128 columns more: 117 tiles, a second wave with 9 tiles in it. No other tile does better:
        // 256 x 128 and 128 x 256 run 65 and 63 tiles of twice the work in one wave (2x), 128 x 64
        // and 64 x 128 234 half tiles in 3 waves at 2/3 efficiency (2.25x), 64 x 64 468 quarter
        // tiles in 5 waves at 1/2 (2.5x), 256 x 64 and 64 x 256 130 and 126 tiles in 2 waves at 0.8
        // (2.5x).
        let one_more = gemm_time_s(&c, Dtype::Bf16, 1152.0, 1664.0, 4096.0);
        assert!((one_more - 2.0 * expected).abs() / expected < 1e-12, "{one_more} vs {}", 2.0 * expected);
    }

    #[test]
    fn thin_gemms_take_small_tiles_and_the_memory_roofline() {
        // 16 tokens x 4096 x 4096 on an A100: 64 x 64 tiles (1 x 64 of them, one wave, at half the
        // rate) take 2 x 64^2 x 4096 / (312e12 x 0.869 / 108 x 0.5) = 26.7 us; 64 x 128 tiles 40.1
        // us, 128 x 128 53.5 us. The operands and output (33.8 MB) take 18.8 us from HBM.
        let c = a100();
        let t = gemm_time_s(&c, Dtype::Bf16, 16.0, 4096.0, 4096.0);
        let expected = 2.0 * 64.0 * 64.0 * 4096.0 / (312e12 * 0.869 / 108.0 * 0.5);
        assert!((t - expected).abs() / expected < 1e-12, "{t} vs {expected}");
        let per_token_small = t / 16.0;
        let per_token_large = gemm_time_s(&c, Dtype::Bf16, 16384.0, 4096.0, 4096.0) / 16384.0;
        // 16384 tokens take 38 waves of 128 x 128 tiles, 2.03 ms: 124 ns a token against 1.67 us.
        assert!(per_token_small > 13.0 * per_token_large && per_token_small < 14.0 * per_token_large);
        // One token pads to the same 64 x 64 tiles: 26.7 us again (its weights, 33.6 MB, would take
        // 18.7 us; split-K and GEMV kernels, which cuBLAS also has, are not modelled).
        let gemv = gemm_time_s(&c, Dtype::Bf16, 1.0, 4096.0, 4096.0);
        assert!((gemv - expected).abs() / expected < 1e-12);
    }

    #[test]
    fn small_k_gemms_are_memory_bound() {
        // 8192 x 8192 x 64 on an A100: 8.6 GFLOP take about 32 us at the sustained rate, but the
        // 8192^2 bf16 output alone is 134 MB: (2 x 8192 x 64 x 2 + 8192^2 x 2) bytes / (2039e9 x
        // 0.88) = 76.0 us.
        let t = gemm_time_s(&a100(), Dtype::Bf16, 8192.0, 8192.0, 64.0);
        let bytes = 2.0 * 8192.0 * 64.0 * 2.0 + 8192f64.powi(2) * 2.0;
        let expected = bytes / (2039e9 * 0.88);
        assert!((t - expected).abs() / expected < 1e-12, "{t} vs {expected}");
    }

    #[test]
    fn fp8_gemms_run_at_their_own_measured_share_of_the_fp8_peak() {
        // H100: 8192^3 in FP8 at 1979 x 0.709 TFLOP/s (64 x 64 tiles on 132 SMs: 4096 / 4224 full),
        // against BF16 at 989 x 0.803: 1.77x faster, not the peaks' 2x.
        let h100 = Cluster::resolve("dgx-h100").unwrap();
        let fp8 = gemm_time_s(&h100, Dtype::Fp8, 8192.0, 8192.0, 8192.0);
        let bf16 = gemm_time_s(&h100, Dtype::Bf16, 8192.0, 8192.0, 8192.0);
        let wave = 4096.0 / 4224.0;
        assert!((fp8 - 2.0 * 8192f64.powi(3) / (1979e12 * 0.709 * wave)).abs() / fp8 < 1e-12);
        assert!((bf16 / fp8 - 1979.0 * 0.709 / (989.0 * 0.803)).abs() < 1e-9);
    }

    #[test]
    fn memory_bound_work_is_bytes_over_achievable_bandwidth_with_a_launch_floor() {
        // 1 GB on an A100 80GB: 1e9 / (2039e9 x 0.88) = 0.5573 ms; 1 kB: the 3 us launch.
        let c = a100();
        assert!((memory_time_s(&c, 1e9) - 1e9 / (2039e9 * 0.88)).abs() < 1e-15);
        assert_eq!(memory_time_s(&c, 1e3), 3e-6);
        assert_eq!(memory_time_s(&c, 0.0), 0.0);
    }

    #[test]
    fn calibrated_gemm_curve_replaces_the_physics() {
        use crate::cluster::{Calibration, KernelFit};
        // Measured: 100 TFLOP/s at m n k = 1e9, 250 at 1e12. A 4096^3 GEMM (6.87e10) interpolates
        // in log size: 100 + 150 x (log 6.87e10 - log 1e9) / (log 1e12 - log 1e9) = 191.8 TFLOP/s.
        let mut c = a100();
        c.calibration = Some(Calibration {
            collectives: Vec::new(),
            kernels: vec![KernelFit::curve(KernelKind::Gemm, vec![(1e9, 100.0), (1e12, 250.0)], "test")],
            ..Calibration::default()
        });
        let size = 4096f64.powi(3);
        let tflops = 100.0 + 150.0 * (size.ln() - 1e9f64.ln()) / (1e12f64.ln() - 1e9f64.ln());
        let expected = 2.0 * size / (tflops * 1e12);
        assert!((gemm_time_s(&c, Dtype::Bf16, 4096.0, 4096.0, 4096.0) - expected).abs() < 1e-15);
        assert!((tflops - 191.8).abs() < 0.1);
    }

    #[test]
    fn a_gemm_curve_prices_only_its_dtype() {
        use crate::cluster::{Calibration, KernelFit};
        // An FP8 curve at 400 TFLOP/s and a bf16 one at 200: each dtype's GEMMs take their own.
        let curve = |dtype: &str, tflops: f64| KernelFit { dtype: Some(dtype.into()), ..KernelFit::curve(KernelKind::Gemm, vec![(1e9, tflops), (1e12, tflops)], "test") };
        let mut c = a100();
        let (m, n, k) = (8192.0, 8192.0, 8192.0);
        let physics_bf16 = gemm_time_s(&c, Dtype::Bf16, m, n, k);
        c.calibration = Some(Calibration { kernels: vec![curve("fp8", 400.0)], ..Calibration::default() });
        assert_eq!(gemm_time_s(&c, Dtype::Bf16, m, n, k), physics_bf16, "an fp8 curve must not price bf16 GEMMs");
        assert!((gemm_time_s(&c, Dtype::Fp8, m, n, k) - 2.0 * m * n * k / 400e12).abs() < 1e-15);
        c.calibration = Some(Calibration { kernels: vec![curve("fp8", 400.0), curve("bf16", 200.0)], ..Calibration::default() });
        assert!((gemm_time_s(&c, Dtype::Bf16, m, n, k) - 2.0 * m * n * k / 200e12).abs() < 1e-15);
    }

    #[test]
    fn log_interpolation_clamps_at_the_ends() {
        let pts = [(1e6, 10.0), (1e9, 100.0)];
        assert_eq!(interpolate_log(&pts, 1e3), Some(10.0));
        assert_eq!(interpolate_log(&pts, 1e12), Some(100.0));
        assert!((interpolate_log(&pts, 1e7).unwrap() - 40.0).abs() < 1e-9);
        assert_eq!(interpolate_log(&[], 1.0), None);
    }
}
