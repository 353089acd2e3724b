//! Compute time of GEMMs and attention: FLOPs over the GPU's peak times an achieved efficiency
//! that depends on the shape of the work.

use crate::cluster::Cluster;
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
}

/// Which pass of the attention kernel (FlashAttention counts backward as 2.5x forward FLOPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    Fwd,
    Bwd,
}

/// Peak dense tensor throughput for the dtype, FLOP/s.
pub fn peak_flops(cluster: &Cluster, dtype: Dtype) -> f64 {
    let tflops = match dtype {
        Dtype::Bf16 => cluster.gpu.bf16_dense_tflops,
        Dtype::Fp8 => cluster.gpu.fp8_dense_tflops.unwrap_or(cluster.gpu.bf16_dense_tflops),
    };
    tflops * 1e12
}

/// Time of an `m x k` by `k x n` GEMM.
pub fn gemm_time_s(cluster: &Cluster, dtype: Dtype, m: f64, n: f64, k: f64) -> f64 {
    if m <= 0.0 || n <= 0.0 || k <= 0.0 {
        return 0.0;
    }
    2.0 * m * n * k / (peak_flops(cluster, dtype) * gemm_efficiency(m, n, k))
}

/// Achieved fraction of peak for a GEMM: small dimensions leave tensor cores underfed.
fn gemm_efficiency(m: f64, n: f64, k: f64) -> f64 {
    let fill = |x: f64, half: f64| x / (x + half);
    0.8 * fill(m, 128.0) * fill(n, 64.0) * fill(k, 64.0)
}

/// Time of attention over `pairs` (query, key) pairs for `heads` heads of `head_dim`, where the
/// kernel sees query blocks of `q_len` and key blocks of `k_len` tokens.
pub fn attention_time_s(
    cluster: &Cluster,
    dtype: Dtype,
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
    // FlashAttention's count: 4 FLOPs per pair and head dimension forward, 2.5x that backward.
    let pass_factor = match pass {
        Pass::Fwd => 1.0,
        Pass::Bwd => 2.5,
    };
    let flops = 4.0 * pairs * heads * head_dim * pass_factor;
    flops / (peak_flops(cluster, dtype) * attention_efficiency(pass, head_dim, q_len, k_len))
}

fn attention_efficiency(pass: Pass, head_dim: f64, q_len: f64, k_len: f64) -> f64 {
    let top = match pass {
        Pass::Fwd => 0.70,
        Pass::Bwd => 0.60,
    } * (head_dim / (head_dim + 16.0));
    let len = q_len.min(k_len).max(1.0);
    top * len / (len + 256.0)
}
