//! `recommendation.json` and `recommendation.md` (docs/recommendation.md): the run's verdict on
//! per-batch planning and the launch configuration of its best static plan in each framework.
//! The types are plain data; `crate::recommend` fills them.

use super::run::ErrorBar;
use super::write_json;
use crate::cost::memory::Checkpointing;
use crate::error::Result;
use crate::scheme::{RingVariant, Scheme};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

pub const RECOMMENDATION_JSON: &str = "recommendation.json";
pub const RECOMMENDATION_MD: &str = "recommendation.md";
/// Bumped whenever a field of `recommendation.json` changes meaning.
pub const RECOMMENDATION_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub format_version: u32,
    pub verdict: Verdict,
    /// The best static plan's layout; absent when no static plan holds every document.
    #[serde(default)]
    pub launch: Option<Launch>,
    /// One entry per framework (Megatron-Core, DeepSpeed, TorchTitan, yunchang); empty without
    /// a launch.
    #[serde(default)]
    pub frameworks: Vec<FrameworkLaunch>,
}

/// What to do, in numbers and in one paragraph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    /// The best static strategy (`static-ulysses`...) and its `u x r`; empty without one.
    pub best_static: String,
    pub configuration: String,
    /// The median over batches of the best static step over hsap's, minus 1.
    #[serde(default)]
    pub median_gain: Option<f64>,
    /// The best static total over hsap's total, minus 1.
    #[serde(default)]
    pub whole_run_gain: Option<f64>,
    /// The stack's error bar, when it has one, and whether the two totals' intervals overlap.
    #[serde(default)]
    pub error_bar: Option<ErrorBar>,
    #[serde(default)]
    pub intervals_overlap: Option<bool>,
    /// 1 - highest peak memory / limit over the run's batches.
    pub hsap_memory_headroom: f64,
    #[serde(default)]
    pub static_memory_headroom: Option<f64>,
    pub paragraph: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The gain is beyond the model's ranking tolerance and the totals' error-bar intervals are
    /// apart (or the stack has no error bar).
    Adopt,
    /// Beyond the ranking tolerance, but the totals' error-bar intervals overlap: measure both.
    Measure,
    /// Within the ranking tolerance: keep the static configuration.
    KeepStatic,
    /// No static plan holds every document: only per-batch plans run this trace.
    NoStatic,
    /// No static baseline ran (`--baselines` named none): there is nothing to compare with.
    NoBaseline,
}

/// The best static plan's parallel layout, what every framework entry is derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub strategy: String,
    pub scheme: Scheme,
    pub ulysses: u32,
    pub ring: u32,
    pub variant: RingVariant,
    /// `ulysses x ring`: the SP (context-parallel) group.
    pub sp_degree: u32,
    pub tensor_parallel: u32,
    /// GPUs / (sp_degree x tensor_parallel).
    pub data_parallel: u32,
    pub gpus: u32,
    pub gpus_per_node: u32,
    pub zero: u8,
    pub checkpointing: Checkpointing,
    pub sequence_parallel: bool,
    /// The longest packed sequence one SP group ran in one micro-batch, in tokens (before the
    /// ring layout's per-document padding).
    pub max_group_tokens: u64,
    /// Micro-batches per global batch under the static plan: fewest and most.
    pub microbatches_min: u32,
    pub microbatches_max: u32,
}

/// One framework's settings for the launch, or why it cannot express it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkLaunch {
    /// `megatron-core`, `deepspeed`, `torchtitan`, `yunchang`.
    pub framework: String,
    /// The release whose argument definitions the settings follow.
    pub version: String,
    /// The files of that release that define the settings.
    pub sources: Vec<String>,
    /// False when the framework cannot run this layout; `settings` is then empty and `notes`
    /// says why.
    pub expressible: bool,
    /// Each setting: a command-line flag (`--context-parallel-size`), a dotted config key
    /// (`parallelism.context_parallel_degree`) or a function argument
    /// (`set_seq_parallel_pg.sp_ulysses_degree`); `null` for a flag that takes no value.
    pub settings: Vec<Setting>,
    /// The settings as they are pasted: a command line, a JSON, TOML or Python fragment.
    pub snippet: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
}

impl Recommendation {
    /// Writes `recommendation.json` and `recommendation.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(RECOMMENDATION_JSON), self)?;
        crate::output::write_atomic(&dir.join(RECOMMENDATION_MD), markdown(self).as_bytes())
    }
}

/// `recommendation.md`: the verdict, the layout, then each framework's settings or why not.
pub fn markdown(r: &Recommendation) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Recommendation\n\n{}\n", r.verdict.paragraph);
    let Some(l) = &r.launch else {
        return md;
    };
    let _ = writeln!(
        md,
        "## Launch: {} ({} x {}, {})\n\n{} GPUs: sequence parallel {} ({} Ulysses x {} ring, {} layout), tensor parallel {}, data parallel {}; ZeRO-{}, {} recomputation; packed sequences of at most {} tokens per SP group and micro-batch, {} to {} micro-batches per global batch.\n",
        l.strategy,
        l.ulysses,
        l.ring,
        l.scheme.name(),
        l.gpus,
        l.sp_degree,
        l.ulysses,
        l.ring,
        l.variant.name(),
        l.tensor_parallel,
        l.data_parallel,
        l.zero,
        l.checkpointing.name(),
        crate::units::thousands(l.max_group_tokens),
        l.microbatches_min,
        l.microbatches_max
    );
    for f in &r.frameworks {
        let _ = writeln!(md, "### {} ({})\n", f.framework, f.version);
        if f.expressible {
            let _ = writeln!(md, "```\n{}\n```\n", f.snippet.trim_end());
        } else {
            let _ = writeln!(md, "Cannot run this layout.\n");
        }
        for n in &f.notes {
            let _ = writeln!(md, "- {n}");
        }
        let _ = writeln!(md, "\nDefined in: {}\n", f.sources.join(", "));
    }
    md
}
