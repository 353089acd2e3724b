//! Memory per GPU: model states under ZeRO, activations per token, and what each scheme adds.

use super::TrainConfig;
use crate::model::{Mlp, ModelShape};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    /// Keep every activation.
    None,
    /// Recompute the attention core and activation functions; keep the rest.
    Selective,
    /// Keep only each layer's input; recompute the layer in the backward pass.
    #[default]
    Full,
}

/// Bytes of weights, gradients and Adam states per GPU, with ZeRO sharding over `shard_ranks`:
/// bf16 weights (2) and gradients (2), fp32 master weights, momentum and variance (12).
pub fn model_state_bytes(model: &ModelShape, train: &TrainConfig, shard_ranks: u32) -> f64 {
    let p = model.params() as f64 / f64::from(train.tp.max(1));
    let n = f64::from(shard_ranks.max(1));
    let (weights, grads, optimizer) = (2.0 * p, 2.0 * p, 12.0 * p);
    match train.zero {
        0 => weights + grads + optimizer,
        1 => weights + grads + optimizer / n,
        2 => weights + (grads + optimizer) / n,
        _ => (weights + grads + optimizer) / n + zero3_gathered_bytes(model, train),
    }
}

/// ZeRO-3 gathers each layer's weights before use: two layers in flight (prefetch).
fn zero3_gathered_bytes(model: &ModelShape, train: &TrainConfig) -> f64 {
    2.0 * 2.0 * model.layer_params() as f64 / f64::from(train.tp.max(1))
}

/// Activation bytes one token keeps for one layer until the backward pass, without checkpointing
/// (bf16 tensors; FlashAttention keeps no s x s matrix, only fp32 log-sum-exp per head).
pub fn layer_activation_bytes_per_token(model: &ModelShape) -> f64 {
    let h = f64::from(model.hidden);
    let q = f64::from(model.heads * model.head_dim);
    let kv = f64::from(model.kv_heads * model.head_dim);
    let f = f64::from(model.ffn);
    let mlp = match model.mlp {
        Mlp::Gated => 3.0 * f, // gate, up, and their product
        Mlp::Plain => 2.0 * f, // pre- and post-activation
    };
    // norm input, attention input, q, k, v, attention output, residual, MLP input
    2.0 * (h + h + q + 2.0 * kv + q + h + h + mlp) + 4.0 * f64::from(model.heads)
}

/// Bytes per token per layer kept under the checkpointing policy.
pub fn kept_bytes_per_token_layer(model: &ModelShape, policy: Checkpointing) -> f64 {
    let h = f64::from(model.hidden);
    match policy {
        Checkpointing::None => layer_activation_bytes_per_token(model),
        Checkpointing::Selective => {
            let f = f64::from(model.ffn);
            let recomputed = match model.mlp {
                Mlp::Gated => f,
                Mlp::Plain => f,
            };
            layer_activation_bytes_per_token(model) - 2.0 * recomputed
        }
        Checkpointing::Full => 2.0 * h,
    }
}
