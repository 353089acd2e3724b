//! The software stack that runs a training step: which attention kernel it calls, how much
//! memory traffic its elementwise code moves, what it overlaps, what its FP8 recipe and
//! gradient reduction cost, and the time its host side adds. The same step on Megatron-Core,
//! TorchTitan or DeepSpeed differs by tens of percent; these are the reasons the cost model
//! can name. Presets live in `models/stacks/` (embedded by build.rs), each figure citing its
//! source; `[stack] preset = NAME|FILE` in scenarios and `--stack` on the commands choose one.
//! docs/cost-model.md ("Software stacks") describes every field.

use crate::cluster::Arch;
use crate::cost::AttentionKernel;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A software stack's behaviour, as far as the cost model prices it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub attention: StackAttention,
    pub elementwise: Elementwise,
    pub overlap: Overlap,
    pub precision: Precision,
    #[serde(default)]
    pub host: Host,
    /// Terms fitted to the development set where no measurement describes them.
    #[serde(default)]
    pub fitted: Fitted,
}

/// What the development set (reference/e2e/) says about the stack beyond the priced terms:
/// `cost::devset::fit_stack_terms` computes these; the preset records them with the
/// leave-one-source-out cross-validated error of doing so.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fitted {
    /// Measured over priced step time: the geometric median over the stack's rows.
    pub time_factor: f64,
    /// The 10th and 90th percentiles of (measured / predicted - 1) with the factor applied,
    /// from the cross-validated residuals: the prediction's error bar.
    pub residual_low: f64,
    pub residual_high: f64,
    /// Development-set rows the terms were fitted on (0: nothing fitted, no error bar).
    pub rows: u32,
}

impl Default for Fitted {
    fn default() -> Self {
        Fitted { time_factor: 1.0, residual_low: 0.0, residual_high: 0.0, rows: 0 }
    }
}

/// The attention kernel the stack calls on each GPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackAttention {
    pub ampere: AttentionKernel,
    /// Ada Lovelace; the Ampere kernel when absent (FlashAttention-2 and the Ampere-era kernels
    /// run on sm89 as written; FlashAttention-3 needs Hopper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ada: Option<AttentionKernel>,
    pub hopper: AttentionKernel,
    pub blackwell: AttentionKernel,
}

impl StackAttention {
    pub fn kernel(&self, arch: Arch) -> AttentionKernel {
        match arch {
            Arch::Ampere => self.ampere,
            Arch::Ada => self.ada.unwrap_or(self.ampere),
            Arch::Hopper => self.hopper,
            Arch::Blackwell => self.blackwell,
        }
    }
}

/// HBM traffic of the stack's elementwise code relative to one fused kernel per operation (read
/// the inputs once, write the output once; what Transformer Engine's fused kernels move).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elementwise {
    /// RMSNorm/LayerNorm (fused: read and write the hidden state).
    pub norm: f64,
    /// Rotary embedding of Q and K (fused: read and write them).
    pub rotary: f64,
    /// The MLP activation (fused gated: read 2f, write f; plain: read and write f).
    pub activation: f64,
    /// Bytes per logit per pass of the loss (softmax cross-entropy over the vocabulary).
    pub loss_bytes_per_logit: f64,
}

/// What the stack runs alongside compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlap {
    /// ZeRO-3/FSDP parameter all-gathers are prefetched during the previous layer's compute
    /// (false: each layer waits for its gather).
    pub zero3_prefetch: bool,
    /// Tensor-parallel all-gathers and reduce-scatters run inside the GEMMs next to them
    /// (Megatron's userbuffers, PyTorch's async TP); false: exposed.
    pub tp_comm: bool,
    /// The data-parallel gradient reduction runs in buckets during the backward pass.
    pub grad_reduce: bool,
    /// Pipeline stage-to-stage sends run alongside compute.
    pub pp_p2p: bool,
    /// The distributed optimizer's all-gather of updated weights (ZeRO 1 and 2) runs during the
    /// next step's forward pass (Megatron's `--overlap-param-gather`); false: exposed.
    pub param_gather: bool,
}

/// Precision choices that cost time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precision {
    /// Bytes per gradient element in the data-parallel reduction (4: reduced in fp32).
    pub grad_reduce_bytes: f64,
    /// HBM bytes per GEMM operand element for the FP8 recipe's scaling and casts (amax, cast,
    /// transposed copy), per use; 0 for bf16 runs.
    pub fp8_cast_bytes_per_element: f64,
}

/// Host-side time the GPU waits for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Host {
    /// CPU time to issue one kernel (Python dispatch and launch); a layer whose GPU work is
    /// shorter than its kernels' issue time runs at the host's pace.
    pub issue_us_per_kernel: f64,
    /// Kernels one layer's forward pass issues (its backward issues twice as many).
    pub kernels_per_layer: f64,
    /// Time per training step outside the micro-batches (data loading, logging, the optimizer's
    /// launch), seconds.
    pub step_s: f64,
}

/// The stack assumed when none is named: the kernels at their measured speed and nothing else
/// (fused elementwise kernels, every overlap, bf16 gradient reduction, no host time).
impl Default for Stack {
    fn default() -> Self {
        Stack {
            name: "kernels-only".into(),
            description: "GPU kernels only: fused elementwise kernels, every overlap, no host time".into(),
            attention: StackAttention { ampere: AttentionKernel::Fa2, ada: None, hopper: AttentionKernel::Fa3, blackwell: AttentionKernel::Cudnn },
            elementwise: Elementwise { norm: 1.0, rotary: 1.0, activation: 1.0, loss_bytes_per_logit: 6.0 },
            overlap: Overlap { zero3_prefetch: true, tp_comm: false, grad_reduce: true, pp_p2p: false, param_gather: false },
            precision: Precision { grad_reduce_bytes: 2.0, fp8_cast_bytes_per_element: 0.0 },
            host: Host::default(),
            fitted: Fitted::default(),
        }
    }
}

impl Stack {
    /// A preset by name (`models/stacks/NAME.toml`) or a stack TOML file.
    pub fn resolve(name_or_path: &str) -> Result<Stack> {
        if let Some((file, text)) = crate::presets::STACK_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            return Stack::from_toml(Path::new(&format!("models/stacks/{file}.toml")), text);
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            return Stack::from_toml(path, &text);
        }
        Err(Error::Unknown {
            kind: "stack",
            name: name_or_path.to_string(),
            known: Stack::preset_names(),
            hint: "name a preset, or pass a path to a stack TOML (models/stacks/ has the format)".into(),
        })
    }

    pub fn preset_names() -> Vec<String> {
        crate::presets::STACK_PRESETS.iter().map(|(n, _)| n.to_string()).collect()
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Stack> {
        let stack: Stack = crate::toml_input::parse(path, text, "see models/stacks/megatron-core.toml for the format")?;
        stack.check(path)?;
        Ok(stack)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let e = &self.elementwise;
        let p = &self.precision;
        let h = &self.host;
        let fields = [
            ("elementwise.norm", e.norm, 1.0),
            ("elementwise.rotary", e.rotary, 1.0),
            ("elementwise.activation", e.activation, 1.0),
            ("elementwise.loss_bytes_per_logit", e.loss_bytes_per_logit, 0.0),
            ("precision.grad_reduce_bytes", p.grad_reduce_bytes, 1.0),
            ("precision.fp8_cast_bytes_per_element", p.fp8_cast_bytes_per_element, 0.0),
            ("host.issue_us_per_kernel", h.issue_us_per_kernel, 0.0),
            ("host.kernels_per_layer", h.kernels_per_layer, 0.0),
            ("host.step_s", h.step_s, 0.0),
            ("fitted.time_factor", self.fitted.time_factor, 0.1),
            ("fitted.residual_high", self.fitted.residual_high, self.fitted.residual_low),
        ];
        for (name, value, min) in fields {
            if !(value.is_finite() && value >= min) {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let line = crate::cost::scenario::line_of_field(&text, name);
                return Err(Error::input(path, line, format!("field '{name}' = {value} must be a number of at least {min}"), "fix the stack file"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        assert!(Stack::preset_names().len() >= 4);
        for name in Stack::preset_names() {
            let stack = Stack::resolve(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(stack.name, name);
        }
    }

    #[test]
    fn unknown_stacks_list_the_presets() {
        let err = Stack::resolve("no-such-stack").unwrap_err().to_string();
        assert!(err.contains("megatron-core") && err.contains("torchtitan"), "{err}");
    }

    #[test]
    fn bad_figures_name_their_field_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let text = Stack::resolve("megatron-core")
            .map(|s| toml::to_string(&s).unwrap())
            .unwrap()
            .replace("norm = 1.0", "norm = 0.5");
        std::fs::write(&path, &text).unwrap();
        let err = Stack::resolve(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("elementwise.norm") && err.contains(&format!(":{}", crate::cost::scenario::line_of_field(&text, "norm"))), "{err}");
    }
}
