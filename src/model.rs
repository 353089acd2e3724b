//! Transformer shapes: the presets in `models/transformers/`, and Hugging Face `config.json` files.

use crate::error::{Error, Result};
use crate::units::thousands;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shape of a decoder-only transformer, as far as cost and memory depend on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub name: String,
    pub layers: u32,
    pub hidden: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads (= `heads` without grouped-query attention).
    pub kv_heads: u32,
    pub head_dim: u32,
    /// Width of the MLP's inner layer.
    pub ffn: u32,
    pub vocab: u32,
    #[serde(default)]
    pub mlp: Mlp,
    /// Input embedding and output projection share one matrix.
    #[serde(default)]
    pub tied_embeddings: bool,
    /// Where the shape comes from.
    #[serde(default)]
    pub source: String,
    /// The layers' token mixers as a pattern of `S` (softmax attention) and `L` (linear attention)
    /// repeated over the layers, first layer first: `"LLLS"` is three linear layers per softmax
    /// layer. Absent (with `softmax_layers`): every layer is softmax attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_pattern: Option<String>,
    /// The softmax layers by index (0-based), the others linear: the explicit form of a hybrid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softmax_layers: Option<Vec<u32>>,
    /// The linear-attention layers' shape; required when any layer is linear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_attention: Option<LinearAttention>,
}

/// A layer's token mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Softmax attention (FlashAttention), `heads` x `head_dim` with `kv_heads` key/value heads.
    Softmax,
    /// Linear attention computed chunk by chunk with a `key_dim x value_dim` state per head.
    Linear,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Softmax => "softmax",
            LayerKind::Linear => "linear",
        }
    }
}

/// Which linear-attention recurrence the linear layers run; all share the chunked form (an
/// intra-chunk quadratic block and an inter-chunk state), docs/cost-model.md section 2b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LinearVariant {
    /// `M_t = M_{t-1} + K_t^T V_t` (Katharopoulos et al. 2020; LASP and LASP-2's Linear-Llama3).
    #[default]
    Basic,
    /// Lightning attention: the same products with a per-head decay applied to the state and
    /// the intra-chunk mask (Qin et al. 2024, arXiv 2405.17381; MiniMax-01's linear layers).
    Lightning,
    /// Gated DeltaNet: a data-dependent decay and the delta rule, computed chunkwise with the
    /// WY representation (Yang et al. 2024, arXiv 2412.06464, section 3.3).
    GatedDelta,
}

impl LinearVariant {
    pub fn name(self) -> &'static str {
        match self {
            LinearVariant::Basic => "basic",
            LinearVariant::Lightning => "lightning",
            LinearVariant::GatedDelta => "gated_delta",
        }
    }
}

/// The shape of the linear-attention layers: `heads` heads, each with a `key_dim x value_dim`
/// memory state, computed in chunks of `chunk` tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearAttention {
    #[serde(default)]
    pub variant: LinearVariant,
    pub heads: u32,
    pub key_dim: u32,
    pub value_dim: u32,
    /// Tokens per chunk of the chunked algorithm (flash-linear-attention's chunk kernels use 64).
    pub chunk: u32,
}

/// The largest linear-attention chunk hsap computes with (a chunk is one tile-sized quadratic
/// block; the published kernels use 64 to 256).
pub const MAX_CHUNK: u32 = 4_096;

impl LinearAttention {
    /// Elements of one head's memory state.
    pub fn state_elements_per_head(&self) -> f64 {
        f64::from(self.key_dim) * f64::from(self.value_dim)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mlp {
    /// SwiGLU-style: gate, up and down projections (three matrices of hidden x ffn).
    #[default]
    Gated,
    /// GELU-style: up and down projections (two matrices).
    Plain,
}

/// Each dimension: its field, its name in a Hugging Face config.json, and the largest value hsap
/// computes with: a few times the largest published model's (405B: 126 layers, hidden 16,384,
/// 128 heads, ffn 53,248; vocabularies up to 256K), and small enough that parameter counts
/// (hidden x heads x head_dim, x layers) fit in 64 bits and heads x head_dim in 32.
pub const MAX_DIMS: [(&str, &str, u32); 7] = [
    ("layers", "num_hidden_layers", 4_096),
    ("hidden", "hidden_size", 262_144),
    ("heads", "num_attention_heads", 16_384),
    ("kv_heads", "num_key_value_heads", 16_384),
    ("head_dim", "head_dim", 4_096),
    ("ffn", "intermediate_size", 1_048_576),
    ("vocab", "vocab_size", 16_777_216),
];

impl ModelShape {
    /// Looks a preset up by name, or reads a file (a preset-style TOML or a Hugging Face `config.json`).
    pub fn resolve(name_or_path: &str) -> Result<ModelShape> {
        if let Some(shape) = Self::preset(name_or_path) {
            return shape;
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            return Self::from_file(path);
        }
        Err(Error::Unknown {
            kind: "model",
            name: name_or_path.to_string(),
            known: Self::preset_names(),
            hint: "name a preset, or pass a path to a preset TOML or a Hugging Face config.json".into(),
        })
    }

    pub fn preset_names() -> Vec<String> {
        crate::presets::MODEL_PRESETS.iter().map(|(n, _)| n.to_string()).collect()
    }

    fn preset(name: &str) -> Option<Result<ModelShape>> {
        let (file, text) = crate::presets::MODEL_PRESETS.iter().find(|(n, _)| *n == name)?;
        let path = format!("models/transformers/{file}.toml");
        Some(Self::from_toml(Path::new(&path), text))
    }

    pub fn from_file(path: &Path) -> Result<ModelShape> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_hf_config(path, &text)
        } else {
            Self::from_toml(path, &text)
        }
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<ModelShape> {
        let shape: ModelShape = crate::toml_input::parse(path, text, "see models/transformers/llama3-8b.toml for the format")?;
        shape.check(path)?;
        Ok(shape)
    }

    /// Reads the fields of a Hugging Face `config.json` that the cost model needs.
    pub fn from_hf_config(path: &Path, text: &str) -> Result<ModelShape> {
        let top: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
            Error::input(path, e.line(), format!("not valid JSON: {e}"), "pass a Hugging Face config.json")
        })?;
        // A multimodal config (LLaVA, Gemma 3, Llama 4, Mllama) keeps its language model in
        // `text_config`; the vision encoder is not modelled.
        let (config, prefix) = match top.get("text_config") {
            Some(inner) if inner.is_object() && top.get("hidden_size").is_none() => (inner, "text_config."),
            _ => (&top, ""),
        };
        refuse_mixture_of_experts(path, text, config, prefix)?;
        let field = |name: &str| -> Result<Option<u32>> {
            match config.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().and_then(|v| u32::try_from(v).ok()).map(Some).ok_or_else(|| {
                    Error::input(path, line_of(text, name), format!("field '{prefix}{name}' = {v} is not a positive integer"), "fix the config")
                }),
            }
        };
        let required = |name: &str| -> Result<u32> {
            field(name)?.ok_or_else(|| {
                let vision = top.get("vision_config").is_some() && prefix.is_empty();
                Error::input(
                    path,
                    0,
                    format!("missing field '{prefix}{name}'"),
                    if vision {
                        "a multimodal config.json keeps its language model's shape in text_config; this one has none"
                    } else {
                        "a config.json needs hidden_size, num_attention_heads, num_hidden_layers, intermediate_size and vocab_size"
                    },
                )
            })
        };
        let hidden = required("hidden_size")?;
        let heads = required("num_attention_heads")?;
        let layers = required("num_hidden_layers")?;
        let ffn = required("intermediate_size")?;
        let vocab = required("vocab_size")?;
        // Transformers itself defaults these two when absent: MHA, and hidden / heads.
        let kv_heads = field("num_key_value_heads")?.unwrap_or(heads);
        let head_dim = field("head_dim")?.unwrap_or(if heads == 0 { 0 } else { hidden / heads });
        let model_type = config.get("model_type").or_else(|| top.get("model_type")).and_then(|v| v.as_str()).unwrap_or("");
        let act = config.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("");
        let gated = matches!(model_type, "llama" | "mistral" | "mixtral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "gemma3_text")
            || act == "silu"
            || act == "swiglu";
        let shape = ModelShape {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            mlp: if gated { Mlp::Gated } else { Mlp::Plain },
            tied_embeddings: config
                .get("tie_word_embeddings")
                .or_else(|| top.get("tie_word_embeddings"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            source: if prefix.is_empty() {
                format!("Hugging Face config {}", path.display())
            } else {
                format!("Hugging Face config {} (its text_config; the vision encoder is not modelled)", path.display())
            },
            layer_pattern: None,
            softmax_layers: None,
            linear_attention: None,
        };
        shape.check_named(path, |i| MAX_DIMS[i].1)?;
        Ok(shape)
    }

    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        self.check_named(path, |i| MAX_DIMS[i].0)
    }

    /// Checks the shape; `name(i)` is what dimension `i` of [`MAX_DIMS`] is called in the file read.
    fn check_named(&self, path: &Path, name: impl Fn(usize) -> &'static str) -> Result<()> {
        let dims = [self.layers, self.hidden, self.heads, self.kv_heads, self.head_dim, self.ffn, self.vocab];
        if let Some(i) = dims.iter().position(|&v| v == 0) {
            return Err(Error::input(path, 0, format!("{} must be positive", name(i)), "fix the model shape"));
        }
        for (i, (&v, (_, _, max))) in dims.iter().zip(MAX_DIMS).enumerate() {
            if v > max {
                return Err(Error::input(
                    path,
                    0,
                    format!("{} = {} is larger than hsap computes with (at most {})", name(i), thousands(u64::from(v)), thousands(u64::from(max))),
                    "check the model's dimensions",
                ));
            }
        }
        if self.heads % self.kv_heads != 0 {
            return Err(Error::input(
                path,
                0,
                format!("heads ({}) is not a multiple of kv_heads ({})", self.heads, self.kv_heads),
                "grouped-query attention needs heads divisible by kv_heads",
            ));
        }
        self.check_layer_kinds(path)
    }

    /// Checks the hybrid pattern (or the softmax indices) and the linear layers' shape.
    fn check_layer_kinds(&self, path: &Path) -> Result<()> {
        let bad = |what: String, hint: &str| Err(Error::input(path, 0, what, hint));
        match (&self.layer_pattern, &self.softmax_layers) {
            (Some(_), Some(_)) => return bad("both layer_pattern and softmax_layers given".into(), "give one of them"),
            (Some(p), None) => {
                if p.is_empty() || p.len() > self.layers as usize || p.chars().any(|c| c != 'S' && c != 'L') {
                    return bad(
                        format!("layer_pattern \"{p}\" is not 1 to {} letters S (softmax) and L (linear)", self.layers),
                        "e.g. layer_pattern = \"LLLS\": three linear layers per softmax layer, repeated",
                    );
                }
            }
            (None, Some(indices)) => {
                let mut seen = vec![false; self.layers as usize];
                for &i in indices {
                    match seen.get_mut(i as usize) {
                        Some(s) if !*s => *s = true,
                        Some(_) => return bad(format!("softmax_layers lists layer {i} twice"), "list each softmax layer once"),
                        None => return bad(format!("softmax_layers lists layer {i} of {} (indices start at 0)", self.layers), "use indices below layers"),
                    }
                }
            }
            (None, None) => {}
        }
        let linear = self.pattern_kinds().contains(&LayerKind::Linear);
        match &self.linear_attention {
            None if linear => bad("linear layers without a [linear_attention] shape".into(), "add [linear_attention] with heads, key_dim, value_dim and chunk"),
            Some(la) => {
                let dims = [("heads", la.heads, MAX_DIMS[2].2), ("key_dim", la.key_dim, MAX_DIMS[4].2), ("value_dim", la.value_dim, MAX_DIMS[4].2), ("chunk", la.chunk, MAX_CHUNK)];
                for (name, v, max) in dims {
                    if v == 0 || v > max {
                        return bad(format!("linear_attention.{name} = {v} is outside 1 to {}", thousands(u64::from(max))), "fix the linear-attention shape");
                    }
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Each layer's token mixer, first layer first. Without a [`LinearAttention`] shape (which
    /// `check` requires of a model with linear layers) every layer prices as softmax.
    pub fn layer_kinds(&self) -> Vec<LayerKind> {
        if self.linear_attention.is_none() {
            return vec![LayerKind::Softmax; self.layers as usize];
        }
        self.pattern_kinds()
    }

    /// The kinds the pattern or the indices name.
    fn pattern_kinds(&self) -> Vec<LayerKind> {
        let kind = |c: char| if c == 'L' { LayerKind::Linear } else { LayerKind::Softmax };
        match (&self.layer_pattern, &self.softmax_layers) {
            (Some(p), _) if !p.is_empty() => p.chars().cycle().take(self.layers as usize).map(kind).collect(),
            (_, Some(indices)) => {
                let mut kinds = vec![LayerKind::Linear; self.layers as usize];
                for &i in indices {
                    if let Some(k) = kinds.get_mut(i as usize) {
                        *k = LayerKind::Softmax;
                    }
                }
                kinds
            }
            _ => vec![LayerKind::Softmax; self.layers as usize],
        }
    }

    /// (softmax layers, linear layers).
    pub fn layer_counts(&self) -> (u32, u32) {
        let linear = self.layer_kinds().iter().filter(|&&k| k == LayerKind::Linear).count() as u32;
        (self.layers - linear, linear)
    }

    /// The kinds the model has with their layer counts, softmax first; kinds without layers left out.
    pub fn kind_counts(&self) -> Vec<(LayerKind, u32)> {
        let (softmax, linear) = self.layer_counts();
        [(LayerKind::Softmax, softmax), (LayerKind::Linear, linear)].into_iter().filter(|&(_, n)| n > 0).collect()
    }

    /// The kind a one-layer scope (`layer`, `attention`) prices: the model's more frequent kind,
    /// linear on a tie.
    pub fn dominant_kind(&self) -> LayerKind {
        let (softmax, linear) = self.layer_counts();
        if linear >= softmax && linear > 0 {
            LayerKind::Linear
        } else {
            LayerKind::Softmax
        }
    }

    /// Whether any layer is linear attention.
    pub fn has_linear_layers(&self) -> bool {
        self.layer_counts().1 > 0
    }

    /// Output widths of a layer's Q/K/V projection (all three together) and input width of its
    /// output projection: softmax `(a + 2g) d` and `a d`; linear `H (2 d_k + d_v)` and `H d_v`.
    pub fn mixer_widths(&self, kind: LayerKind) -> (u64, u64) {
        match (kind, &self.linear_attention) {
            (LayerKind::Linear, Some(la)) => {
                let (h, k, v) = (u64::from(la.heads), u64::from(la.key_dim), u64::from(la.value_dim));
                (h * (2 * k + v), h * v)
            }
            _ => {
                let q = u64::from(self.heads * self.head_dim);
                (q + 2 * u64::from(self.kv_heads * self.head_dim), q)
            }
        }
    }

    /// Parameters of one layer of `kind` (mixer projections and MLP; norms and gates left out).
    pub fn kind_layer_params(&self, kind: LayerKind) -> u64 {
        let h = u64::from(self.hidden);
        let (qkv, o) = self.mixer_widths(kind);
        let mlp_matrices = match self.mlp {
            Mlp::Gated => 3,
            Mlp::Plain => 2,
        };
        h * qkv + o * h + mlp_matrices * h * u64::from(self.ffn)
    }

    /// Parameters of one transformer layer (attention and MLP weights; norms are negligible and
    /// left out): a hybrid's mean over its layers (rounded down), which is what per-layer weight
    /// traffic and memory average to.
    pub fn layer_params(&self) -> u64 {
        self.all_layer_params() / u64::from(self.layers.max(1))
    }

    /// Parameters of every layer, each of its kind.
    fn all_layer_params(&self) -> u64 {
        self.kind_counts().iter().map(|&(kind, n)| u64::from(n) * self.kind_layer_params(kind)).sum()
    }

    /// Parameters of the embedding and output projection.
    pub fn embedding_params(&self) -> u64 {
        let one = u64::from(self.vocab) * u64::from(self.hidden);
        if self.tied_embeddings {
            one
        } else {
            2 * one
        }
    }

    pub fn params(&self) -> u64 {
        self.all_layer_params() + self.embedding_params()
    }
}

/// Fields by which Hugging Face configs declare routed experts: Mixtral, Qwen-MoE, DeepSeek,
/// DBRX, OLMoE, Llama 4, Granite-MoE, Jamba.
const EXPERT_FIELDS: [&str; 5] = ["num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok"];

/// The cost model prices dense transformers: a mixture-of-experts config planned as one would
/// miss its expert MLPs, its routing and expert parallelism's all-to-all.
fn refuse_mixture_of_experts(path: &Path, text: &str, config: &serde_json::Value, prefix: &str) -> Result<()> {
    let number = |name: &str| config.get(name).and_then(serde_json::Value::as_u64);
    let Some(field) = EXPERT_FIELDS.iter().find(|f| number(f).is_some_and(|n| n > 1)) else { return Ok(()) };
    let experts = EXPERT_FIELDS[..4].iter().find_map(|f| number(f));
    let per_token = number("num_experts_per_tok");
    let mut what = "a mixture-of-experts model".to_string();
    match (experts, per_token) {
        (Some(e), Some(k)) => what.push_str(&format!(" ({e} experts, {k} per token)")),
        (Some(e), None) => what.push_str(&format!(" ({e} experts)")),
        _ => {}
    }
    Err(Error::input(
        path,
        line_of(text, field),
        format!("{what}, declared by '{prefix}{field}': hsap models dense transformers only, not expert MLPs, routing or expert parallelism"),
        "plan a dense model of the same attention shape (a preset TOML, or a config.json without experts) and read its MLP figures as a bound",
    ))
}

/// The 1-based line of the first `"name"` key in a JSON text; 0 when absent.
fn line_of(text: &str, name: &str) -> usize {
    let key = format!("\"{name}\"");
    text.lines().position(|l| l.contains(&key)).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        for name in ModelShape::preset_names() {
            let shape = ModelShape::resolve(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(shape.name, name, "a preset's name matches its file name");
        }
    }

    #[test]
    fn llama3_8b_has_eight_billion_parameters() {
        // 32 layers x 218,103,808 + 2 x 128256 x 4096 = 8,029,995,008; with the 266,240 RMSNorm
        // weights left out here, that is the 8,030,261,248 of the released checkpoint.
        let m = ModelShape::resolve("llama3-8b").unwrap();
        assert_eq!(m.layer_params(), 218_103_808);
        assert_eq!(m.params(), 8_029_995_008);
    }

    #[test]
    fn gpt_7b_matches_flexsp_shape() {
        let m = ModelShape::resolve("gpt-7b").unwrap();
        assert_eq!((m.layers, m.hidden, m.heads, m.head_dim, m.kv_heads), (32, 4096, 64, 64, 64));
        assert_eq!(m.mlp, Mlp::Plain);
        // 12 h^2 per layer with ffn = 4h
        assert_eq!(m.layer_params(), 12 * 4096 * 4096);
    }

    #[test]
    fn experts_are_found_under_every_name_but_one_expert_is_dense() {
        let dense = r#"{"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 2,
                        "intermediate_size": 4096, "vocab_size": 1000, "num_local_experts": 1, "num_experts_per_tok": null}"#;
        assert!(ModelShape::from_hf_config(Path::new("c.json"), dense).is_ok());
        let qwen_moe = dense.replace(r#""num_local_experts": 1, "num_experts_per_tok": null"#, r#""num_experts": 60, "num_experts_per_tok": 4"#);
        let err = ModelShape::from_hf_config(Path::new("c.json"), &qwen_moe).unwrap_err().to_string();
        assert!(err.contains("c.json:2: a mixture-of-experts model (60 experts, 4 per token), declared by 'num_experts'"), "{err}");
        let deepseek = dense.replace(r#""num_local_experts": 1"#, r#""n_routed_experts": 64"#);
        let err = ModelShape::from_hf_config(Path::new("c.json"), &deepseek).unwrap_err().to_string();
        assert!(err.contains("(64 experts)") && err.contains("'n_routed_experts'"), "{err}");
    }

    #[test]
    fn a_text_config_gives_the_shape_and_the_top_level_the_rest() {
        let config = r#"{"model_type": "gemma3", "tie_word_embeddings": true, "vision_config": {"hidden_size": 1152},
            "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "num_hidden_layers": 34, "intermediate_size": 10240, "vocab_size": 262208}}"#;
        let m = ModelShape::from_hf_config(Path::new("gemma.json"), config).unwrap();
        assert_eq!((m.hidden, m.heads, m.kv_heads, m.head_dim, m.layers, m.ffn), (2560, 8, 4, 256, 34, 10240));
        assert_eq!((m.mlp, m.tied_embeddings), (Mlp::Gated, true));
        assert!(m.source.contains("text_config; the vision encoder is not modelled"), "{}", m.source);
        // A byte-order mark before the JSON is not an error.
        assert!(ModelShape::from_hf_config(Path::new("gemma.json"), &format!("\u{feff}{config}")).is_ok());
    }

    #[test]
    fn hf_config_defaults_and_missing_fields() {
        let ok = r#"{"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 2,
                     "intermediate_size": 4096, "vocab_size": 1000, "model_type": "gpt2"}"#;
        let m = ModelShape::from_hf_config(Path::new("c.json"), ok).unwrap();
        assert_eq!((m.kv_heads, m.head_dim, m.mlp), (16, 64, Mlp::Plain));
        let missing = r#"{"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 2, "vocab_size": 1000}"#;
        let err = ModelShape::from_hf_config(Path::new("c.json"), missing).unwrap_err().to_string();
        assert!(err.contains("missing field 'intermediate_size'"), "{err}");
    }
}
