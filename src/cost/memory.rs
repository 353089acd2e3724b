//! Memory per GPU: model states under ZeRO, activations per token, logits, and what each scheme
//! adds (program.rs adds the scheme buffers, which depend on the layout).

use super::TrainConfig;
use crate::model::{Mlp, ModelShape};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    /// Keep every activation.
    None,
    /// Recompute the attention core (FlashAttention's forward) and the MLP activation function
    /// in the backward pass; keep the rest.
    Selective,
    /// Keep only each layer's input; recompute the layer in the backward pass.
    #[default]
    Full,
}

impl Checkpointing {
    pub fn name(self) -> &'static str {
        match self {
            Checkpointing::None => "none",
            Checkpointing::Selective => "selective",
            Checkpointing::Full => "full",
        }
    }
}

/// Bytes per parameter of mixed-precision Adam: bf16 weights and gradients, fp32 master weights,
/// momentum and variance (the ZeRO paper's 2 + 2 + 12).
pub const WEIGHT_BYTES_PER_PARAM: f64 = 2.0;
pub const GRAD_BYTES_PER_PARAM: f64 = 2.0;
pub const OPTIMIZER_BYTES_PER_PARAM: f64 = 12.0;

/// One GPU's memory by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct MemoryBreakdown {
    /// Weights, gradients and optimizer states (sharded by ZeRO), and ZeRO-3's gathered layers.
    pub model_states_bytes: f64,
    /// Activations kept for the backward pass, plus the working layer's.
    pub activations_bytes: f64,
    /// Output logits and the loss's fp32 copy.
    pub logits_bytes: f64,
    /// Communication buffers of the SP scheme (all-to-all, ring blocks, gathered K/V, fp32
    /// accumulators of ring attention).
    pub buffers_bytes: f64,
}

impl MemoryBreakdown {
    pub fn total_bytes(&self) -> f64 {
        self.model_states_bytes + self.activations_bytes + self.logits_bytes + self.buffers_bytes
    }
}

/// Bytes of weights, gradients and Adam states per GPU: the tensor-parallel slice of the model,
/// sharded by ZeRO over `shard_ranks` data-parallel ranks (ZeRO 1: optimizer states; 2: and
/// gradients; 3: and weights, plus the layers gathered for use).
pub fn model_state_bytes(model: &ModelShape, train: &TrainConfig, shard_ranks: u32) -> f64 {
    let p = model.params() as f64 / f64::from(train.tp.max(1));
    let n = f64::from(shard_ranks.max(1));
    let (weights, grads, optimizer) = (
        WEIGHT_BYTES_PER_PARAM * p,
        GRAD_BYTES_PER_PARAM * p,
        OPTIMIZER_BYTES_PER_PARAM * p,
    );
    match train.zero {
        0 => weights + grads + optimizer,
        1 => weights + grads + optimizer / n,
        2 => weights + (grads + optimizer) / n,
        _ => (weights + grads + optimizer) / n + zero3_gathered_bytes(model, train),
    }
}

/// ZeRO-3 gathers each layer's weights before use: two layers in flight (the one computing and
/// the one prefetched).
pub fn zero3_gathered_bytes(model: &ModelShape, train: &TrainConfig) -> f64 {
    2.0 * WEIGHT_BYTES_PER_PARAM * model.layer_params() as f64 / f64::from(train.tp.max(1))
}

/// Activation bytes one token keeps for one layer until the backward pass, without checkpointing
/// (bf16 tensors, no dropout; FlashAttention keeps no s x s matrix, only its fp32 log-sum-exp per
/// head). As Korthikanti et al. count them for Megatron, generalised to GQA and gated MLPs:
/// the two norms' inputs and outputs (4h), Q, K and V (q + 2kv), the attention output (q), the
/// MLP's internals (gated: gate and up, 2f, and their product, f; plain: the activation's input
/// and output, 2f).
pub fn layer_activation_bytes_per_token(model: &ModelShape) -> f64 {
    let h = f64::from(model.hidden);
    let q = f64::from(model.heads * model.head_dim);
    let kv = f64::from(model.kv_heads * model.head_dim);
    let f = f64::from(model.ffn);
    let mlp = match model.mlp {
        Mlp::Gated => 3.0 * f,
        Mlp::Plain => 2.0 * f,
    };
    2.0 * (4.0 * h + q + 2.0 * kv + q + mlp) + 4.0 * f64::from(model.heads)
}

/// Bytes per token per layer kept under the checkpointing policy.
pub fn kept_bytes_per_token_layer(model: &ModelShape, policy: Checkpointing) -> f64 {
    let h = f64::from(model.hidden);
    match policy {
        Checkpointing::None => layer_activation_bytes_per_token(model),
        Checkpointing::Selective => {
            // The attention output and log-sum-exp, and the activation function's output, are
            // recomputed.
            let q = f64::from(model.heads * model.head_dim);
            let f = f64::from(model.ffn);
            layer_activation_bytes_per_token(model) - 2.0 * q - 4.0 * f64::from(model.heads) - 2.0 * f
        }
        Checkpointing::Full => 2.0 * h,
    }
}

/// Logits of one token: the bf16 output of the LM head and the loss's fp32 copy.
pub fn logits_bytes_per_token(model: &ModelShape, tp: u32) -> f64 {
    (2.0 + 4.0) * f64::from(model.vocab) / f64::from(tp.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(zero: u8) -> TrainConfig {
        TrainConfig { zero, ..TrainConfig::default() }
    }

    #[test]
    fn zero_stages_shard_what_they_should() {
        // llama3-8b: 8,029,995,008 parameters; one layer 218,103,808. Over 64 ranks:
        // ZeRO-0: 16 B/param = 128.48 GB; ZeRO-1: 4 + 12/64 = 4.1875 B/param = 33.63 GB;
        // ZeRO-2: 2 + 14/64 = 2.21875 B/param = 17.82 GB;
        // ZeRO-3: 16/64 = 0.25 B/param = 2.0075 GB, plus 2 layers x 2 B = 872.4 MB gathered.
        let m = ModelShape::resolve("llama3-8b").unwrap();
        let p = 8_029_995_008.0;
        assert_eq!(model_state_bytes(&m, &train(0), 64), 16.0 * p);
        assert_eq!(model_state_bytes(&m, &train(1), 64), 4.1875 * p);
        assert_eq!(model_state_bytes(&m, &train(2), 64), 2.21875 * p);
        assert_eq!(model_state_bytes(&m, &train(3), 64), 0.25 * p + 4.0 * 218_103_808.0);
    }

    #[test]
    fn tensor_parallelism_slices_before_zero_shards() {
        // tp 2 over 32 data-parallel ranks: 16 B x p / 2 / 32 under ZeRO-3 (+ 2 layers of half).
        let m = ModelShape::resolve("llama3-8b").unwrap();
        let t = TrainConfig { zero: 3, tp: 2, ..TrainConfig::default() };
        let expected = 16.0 * 8_029_995_008.0 / 2.0 / 32.0 + 4.0 * 218_103_808.0 / 2.0;
        assert_eq!(model_state_bytes(&m, &t, 32), expected);
    }

    #[test]
    fn activations_per_token_follow_korthikanti() {
        // gpt-7b (plain MLP, MHA, h = 4096, f = 4h): 2 x (4h + 4h + 8h) + 4 x 64 = 32h + 256 bytes
        // = 131,328: Korthikanti's 34h less the two dropout masks, plus the log-sum-exp.
        let gpt = ModelShape::resolve("gpt-7b").unwrap();
        assert_eq!(layer_activation_bytes_per_token(&gpt), 32.0 * 4096.0 + 256.0);
        // llama3-8b (gated, GQA 32/8 heads of 128, f = 14336): 2 x (16384 + 4096 + 2048 + 4096 +
        // 43008) + 128 = 139,392.
        let llama = ModelShape::resolve("llama3-8b").unwrap();
        assert_eq!(layer_activation_bytes_per_token(&llama), 139_392.0);
        // Selective drops the attention output (8192), log-sum-exp (128) and product (28672).
        assert_eq!(kept_bytes_per_token_layer(&llama, Checkpointing::Selective), 139_392.0 - 36_992.0);
        assert_eq!(kept_bytes_per_token_layer(&llama, Checkpointing::Full), 8192.0);
    }
}
