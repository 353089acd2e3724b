//! Flag definitions shared by the commands.

use crate::error::{Error, Result};
use crate::trace::{BatchBy, BatchSpec, OverLong, Trace, TraceFormat};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "hsap-tune",
    version,
    about = "Plan hierarchical, sequence-aware parallelism per batch for long-context LLM training",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, `hsap-tune [FLAGS]` runs `tune` with these flags.
    #[command(flatten)]
    pub tune: super::TuneArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe a trace: counts, length percentiles, a log-scale histogram, long-document share.
    Inspect(super::InspectArgs),
    /// Fit the cost model to nccl-tests logs and measurements of your cluster; writes a
    /// calibrated cluster profile that every command takes as --cluster FILE.toml.
    Calibrate(super::CalibrateArgs),
    /// Draw the comparison report of a planner run: DIR/report/index.html, figures as SVG and PNG.
    Report(super::ReportArgs),
    /// Replay a plan with the groups of each micro-batch sharing links; write a Perfetto timeline.
    Simulate(super::SimulateArgs),
    /// Plan every batch with hsap and the baselines, print the comparison, write plans (the default).
    Tune(super::TuneArgs),
    /// Price one setup with the cost model: time, TFLOP/s, MFU, memory and a breakdown.
    Predict(super::PredictArgs),
    /// Run a plan's kernels and collectives on GPUs (one process per GPU) and compare with the
    /// prediction; --dry-run prints every rank's schedule without a GPU.
    Validate(super::ValidateArgs),
}

/// Where document lengths come from and how they form batches.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Document lengths in training order: CSV, JSON Lines, text (one per line) or Megatron .idx.
    /// Without it, the embedded trace traces/distca_textbookchapters_llama3.csv is used.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Trace format, when the extension does not tell.
    #[arg(long, value_name = "FORMAT", value_parser = clap::builder::PossibleValuesParser::new(TraceFormat::NAMES))]
    pub format: Option<String>,
    /// Documents per global batch (FlexSP's convention).
    #[arg(long, value_name = "N", conflicts_with = "batch_tokens", default_value_t = 512)]
    pub global_batch: usize,
    /// Tokens per global batch instead of a document count.
    #[arg(long, value_name = "N")]
    pub batch_tokens: Option<u64>,
    /// Longest document, in tokens; longer ones are handled by --over-long (tune: 196608 when
    /// not given, FlexSP's 192K).
    #[arg(long, value_name = "N")]
    pub max_seq: Option<u32>,
    /// What to do with documents longer than --max-seq.
    #[arg(long, value_enum, default_value_t = OverLongArg::Drop)]
    pub over_long: OverLongArg,
    /// Shuffle documents with this seed before batching.
    #[arg(long, value_name = "SEED")]
    pub shuffle: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverLongArg {
    /// Leave them out and report how many.
    Drop,
    /// Cut them into --max-seq pieces.
    Split,
}

impl TraceArgs {
    pub fn load(&self) -> Result<Trace> {
        let Some(path) = &self.trace else {
            return Trace::embedded(crate::trace::embedded::DEFAULT);
        };
        match &self.format {
            Some(name) => {
                let format = TraceFormat::from_name(name).ok_or_else(|| {
                    Error::invalid(format!("unknown trace format '{name}'"), format!("use one of {:?}", TraceFormat::NAMES))
                })?;
                Trace::read_as(path, format)
            }
            None => Trace::read(path),
        }
    }

    pub fn batch_spec(&self) -> BatchSpec {
        BatchSpec {
            by: match self.batch_tokens {
                Some(t) => BatchBy::Tokens(t),
                None => BatchBy::Count(self.global_batch),
            },
            max_seq: self.max_seq,
            over_long: match self.over_long {
                OverLongArg::Drop => OverLong::Drop,
                OverLongArg::Split => OverLong::Split,
            },
            shuffle_seed: self.shuffle,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model preset name, a preset-style TOML, or a Hugging Face config.json.
    #[arg(long, value_name = "NAME|FILE", default_value = "gpt-7b")]
    pub model: String,
}

impl ModelArgs {
    pub fn load(&self) -> Result<crate::model::ModelShape> {
        crate::model::ModelShape::resolve(&self.model)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Cluster preset name, or a cluster TOML (e.g. a calibrated profile).
    #[arg(long, value_name = "NAME|FILE", default_value = "a100-40g-ib400")]
    pub cluster: String,
    /// Nodes in use (default: the preset's).
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,
}

impl ClusterArgs {
    pub fn load(&self) -> Result<crate::cluster::Cluster> {
        let cluster = crate::cluster::Cluster::resolve(&self.cluster)?;
        match self.nodes {
            Some(n) => cluster.with_nodes(n),
            None => Ok(cluster),
        }
    }
}

/// How training runs, in the terms of `predict`'s scenarios: the planner prices the same setup.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// ZeRO stage of the data-parallel sharding (0-3).
    #[arg(long, value_name = "STAGE", default_value_t = 3)]
    pub zero: u8,
    /// Activation checkpointing.
    #[arg(long, value_name = "POLICY", default_value = "full", value_parser = clap::builder::PossibleValuesParser::new(["none", "selective", "full"]))]
    pub checkpointing: String,
    /// Tensor-parallel degree inside each SP rank (may cross nodes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tp: u32,
    /// Pipeline stages: the planner plans the SP groups of one stage, which holds nodes / pp
    /// nodes and ceil(layers / pp) layers (the pipeline bubble is common to every strategy and
    /// left out of the comparison).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub pp: u32,
    /// The software stack: a preset of models/stacks/ or a stack TOML (default: the GPU kernels
    /// alone).
    #[arg(long, value_name = "NAME|FILE")]
    pub stack: Option<String>,
}

impl TrainArgs {
    /// The training configuration, the stage's model and the stage's cluster for `model` on
    /// `cluster`.
    pub fn apply(
        &self,
        mut model: crate::model::ModelShape,
        cluster: crate::cluster::Cluster,
    ) -> Result<(crate::model::ModelShape, crate::cluster::Cluster, crate::cost::TrainConfig)> {
        use crate::cost::{Checkpointing, TrainConfig};
        let checkpointing = match self.checkpointing.as_str() {
            "none" => Checkpointing::None,
            "selective" => Checkpointing::Selective,
            _ => Checkpointing::Full,
        };
        if self.pp == 0 || self.pp > model.layers {
            return Err(Error::invalid(
                format!("--pp {} must be between 1 and the model's {} layers", self.pp, model.layers),
                "use --pp 1 for no pipeline parallelism",
            ));
        }
        if cluster.nodes % self.pp != 0 {
            return Err(Error::invalid(
                format!("--pp {} does not divide the {} nodes", self.pp, cluster.nodes),
                "each pipeline stage holds whole nodes: choose --nodes a multiple of --pp",
            ));
        }
        let nodes = cluster.nodes / self.pp;
        let cluster = cluster.with_nodes(nodes)?;
        model.layers = model.layers.div_ceil(self.pp);
        let stack = match &self.stack {
            Some(name) => crate::stack::Stack::resolve(name)?,
            None => crate::stack::Stack::default(),
        };
        let train = TrainConfig { zero: self.zero, checkpointing, tp: self.tp, stack, ..TrainConfig::default() };
        Ok((model, cluster, train))
    }
}
