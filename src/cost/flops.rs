//! FLOP conventions that published throughput figures use, so that a prediction can be stated
//! in the user's terms and a published TFLOP/s or utilisation turned back into tokens per second.
//! docs/cost-model.md ("FLOP conventions") states each formula and its source.

use crate::model::{Mlp, ModelShape};

/// Megatron-LM's model FLOPs per token of a training step (forward and backward, no
/// recomputation), as `num_floating_point_operations` in megatron/training/training.py counts
/// them (r0.8.0 onwards; NeMo reports the same): attention non-causal (all `s` keys for every
/// query), the logits included, gated MLPs counted with their third matrix:
///
/// `12 L h^2 [ (1 + g/a + s/h) q/h + (f/h) x gate ] + 6 h V`
///
/// with L layers, h hidden, a heads, g KV heads, q = a x head_dim, f the MLP width, gate 3/2 for
/// gated MLPs, V the vocabulary, s the sequence length.
pub fn megatron_model_flops_per_token(model: &ModelShape, seq_len: u32) -> f64 {
    if model.has_linear_layers() {
        return hybrid_model_flops_per_token(model, seq_len);
    }
    let l = f64::from(model.layers);
    let h = f64::from(model.hidden);
    let s = f64::from(seq_len);
    let q_ratio = f64::from(model.heads * model.head_dim) / h;
    let kv_ratio = f64::from(model.kv_heads) / f64::from(model.heads);
    let gate = match model.mlp {
        Mlp::Gated => 1.5,
        Mlp::Plain => 1.0,
    };
    let attention = (1.0 + kv_ratio + s / h) * q_ratio;
    let mlp = f64::from(model.ffn) / h * gate;
    12.0 * l * h * h * (attention + mlp) + 6.0 * h * f64::from(model.vocab)
}

/// Megatron's count carried to a model with linear-attention layers, term by term: the GEMMs
/// `6 x` every layer's parameters (Megatron's projection and MLP terms are exactly that), each
/// softmax layer's non-causal scores `12 s q`, each linear layer's chunk products
/// `3 x heads x (2 C (d_k + d_v) + 4 d_k d_v)` (forward once, backward twice; docs/cost-model.md
/// section 2b), and the logits `6 h V`.
fn hybrid_model_flops_per_token(model: &ModelShape, seq_len: u32) -> f64 {
    let (softmax, _) = model.layer_counts();
    let gemms = 6.0 * model.kind_counts().iter().map(|&(kind, n)| f64::from(n) * model.kind_layer_params(kind) as f64).sum::<f64>();
    let scores = f64::from(softmax) * 12.0 * f64::from(seq_len) * f64::from(model.heads * model.head_dim);
    let linear = model.linear_attention.as_ref().map_or(0.0, |la| {
        let per_chunk = crate::workload::chunk_flops_per_head(la, 1.0);
        f64::from(model.layer_counts().1) * 3.0 * f64::from(la.heads) * per_chunk / f64::from(la.chunk)
    });
    gemms + scores + linear + 6.0 * f64::from(model.hidden) * f64::from(model.vocab)
}

/// The hardware FLOPs per token Narayanan et al. (2021, "Efficient Large-Scale Language Model
/// Training on GPU Clusters Using Megatron-LM", equation 3) count for GPT models trained with
/// full activation recomputation (the forward runs twice): `96 L h^2 (1 + s/(6h) + V/(16 L h))`.
/// Megatron-LM's 2021 README reports its "percentage of theoretical peak" in these FLOPs.
pub fn narayanan_hardware_flops_per_token(model: &ModelShape, seq_len: u32) -> f64 {
    let l = f64::from(model.layers);
    let h = f64::from(model.hidden);
    let s = f64::from(seq_len);
    let v = f64::from(model.vocab);
    96.0 * l * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * l * h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_models_count_has_no_quadratic_term() {
        // linear-llama3-1b: 16 x 67,108,864 layer parameters x 6 = 6,442,450,944; chunk products
        // 16 layers x 3 x 16 heads x 6,291,456 / 64 = 75,497,472; logits 6 x 2048 x 128,256 =
        // 1,576,009,728.
        let m = ModelShape::resolve("linear-llama3-1b").unwrap();
        let want = 6_442_450_944.0 + 75_497_472.0 + 1_576_009_728.0;
        assert_eq!(megatron_model_flops_per_token(&m, 4096), want);
        assert_eq!(megatron_model_flops_per_token(&m, 1 << 20), want, "independent of the sequence length");
    }

    fn gpt(layers: u32, hidden: u32, vocab: u32) -> ModelShape {
        ModelShape {
            name: "gpt".into(),
            layers,
            hidden,
            heads: hidden / 128,
            kv_heads: hidden / 128,
            head_dim: 128,
            ffn: 4 * hidden,
            vocab,
            mlp: Mlp::Plain,
            tied_embeddings: false,
            source: "test".into(),
            layer_pattern: None,
            softmax_layers: None,
            linear_attention: None,
        }
    }

    #[test]
    fn megatron_count_is_six_n_plus_non_causal_attention() {
        // A plain MHA model: 12 L h^2 (2 + s/h + 4) + 6 h V = 6 x (12 L h^2) + 12 L h s + 6 h V,
        // i.e. 6 x (layer weights) + 12 L h s + 6 x (output projection).
        let m = gpt(32, 4096, 50_000);
        let (l, h, s, v) = (32.0, 4096.0, 2048.0, 50_000.0);
        let expected = 6.0 * 12.0 * l * h * h + 12.0 * l * h * s + 6.0 * h * v;
        let got = megatron_model_flops_per_token(&m, 2048);
        assert!((got - expected).abs() / expected < 1e-12, "{got} vs {expected}");
        // The same as 6 x the model's layer and output parameters plus the attention term.
        let from_params = 6.0 * (m.params() as f64 - h * v) + 12.0 * l * h * s;
        assert!((got - from_params).abs() / from_params < 1e-12);
    }

    #[test]
    fn megatron_count_reproduces_a_published_figure() {
        // reference/e2e: Megatron-Core r0.8.0, GPT-7.1B (30 layers, hidden 4096, MHA, ffn 4h,
        // vocab 131072, seq 4096): 12 x 30 x 4096^2 x (3 + 4) + 6 x 4096 x 131072 = 4.54998e10
        // per token, so its 465.9 TFLOP/s per GPU are 10,240 tokens/s per GPU.
        let m = gpt(30, 4096, 131_072);
        let per_token = megatron_model_flops_per_token(&m, 4096);
        assert!((per_token - 4.549_981e10).abs() / 4.549_981e10 < 1e-6, "{per_token}");
        assert!((465.9e12 / per_token - 10_239.6).abs() < 0.1);
    }

    #[test]
    fn narayanan_count_is_four_passes_of_the_layer_weights() {
        // 96 L h^2 = 4 passes (forward, recomputed forward, backward = 2) x 2 FLOPs x 12 L h^2.
        let m = gpt(24, 2304, 51_200);
        let (l, h, s, v) = (24.0, 2304.0, 2048.0, 51_200.0);
        let expected = 96.0 * l * h * h + 16.0 * l * h * s + 6.0 * h * v;
        let got = narayanan_hardware_flops_per_token(&m, 2048);
        assert!((got - expected).abs() / expected < 1e-12);
    }
}
