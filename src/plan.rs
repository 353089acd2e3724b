//! Plans: what to run, per global batch, on which GPUs. These are the types of `plan.json`
//! (docs/plan-format.md), written by the planner and read by the simulator and the validator
//! through `formats::plan`.

use crate::scheme::{GroupShape, RingVariant, Scheme};
use crate::trace::Doc;
use serde::{Deserialize, Serialize};

/// Bumped whenever a field changes meaning.
pub const PLAN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    /// The strategy that made it: `hsap`, or a baseline's name.
    pub strategy: String,
    pub trace: String,
    pub model: crate::model::ModelShape,
    pub cluster: crate::cluster::Cluster,
    /// How training runs (ZeRO stage, checkpointing, dtype...), which the plan was priced with.
    #[serde(default)]
    pub train: crate::cost::TrainConfig,
    /// Usable memory per GPU the plan was made against (the cost model's limit).
    #[serde(default)]
    pub memory_limit_bytes: f64,
    pub batches: Vec<BatchPlan>,
}

impl Plan {
    /// The batch with index `k`.
    pub fn batch(&self, k: usize) -> crate::Result<&BatchPlan> {
        self.batches.iter().find(|b| b.index == k).ok_or_else(|| {
            crate::Error::invalid(
                format!("the plan has no batch {k} (it has {} batches)", self.batches.len()),
                format!(
                    "choose --batch between {} and {}",
                    self.batches.first().map_or(0, |b| b.index),
                    self.batches.last().map_or(0, |b| b.index)
                ),
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub index: usize,
    pub microbatches: Vec<MicroBatch>,
    /// The cost model's step time: micro-batches in sequence plus exposed gradient synchronisation.
    pub predicted_step_s: f64,
    /// Highest predicted memory of any GPU in the step.
    pub predicted_peak_memory_bytes: f64,
    /// The part of the gradient synchronisation the last micro-batch's backward pass does not
    /// hide (included in `predicted_step_s`). Micro-batches are listed in execution order.
    #[serde(default)]
    pub grad_sync_exposed_s: f64,
    /// Which search produced the batch's plan (hsap: `greedy`, `milp` or `incumbent:<baseline>`).
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MicroBatch {
    pub groups: Vec<GroupPlan>,
    /// The slowest group's predicted time.
    pub predicted_time_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// Global ranks, in local-rank order (`q = slot * ulysses + i`).
    pub ranks: Vec<u32>,
    pub ulysses: u32,
    pub ring: u32,
    pub scheme: Scheme,
    pub ring_variant: RingVariant,
    /// Trace indices of the group's documents, in packing order.
    pub sequences: Vec<u32>,
    /// The same documents with the piece of each that is used (split documents have offsets).
    pub docs: Vec<Doc>,
    /// Per rank: which tokens it holds and its cu_seqlens.
    pub rank_layouts: Vec<RankLayout>,
    pub predicted_time_s: f64,
    pub predicted_memory_bytes: f64,
}

impl GroupPlan {
    pub fn shape(&self) -> GroupShape {
        GroupShape {
            scheme: self.scheme,
            ulysses: self.ulysses,
            ring: self.ring,
            variant: self.ring_variant,
        }
    }

    pub fn doc_lengths(&self) -> Vec<u32> {
        self.docs.iter().map(|d| d.len).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankLayout {
    pub rank: u32,
    /// Ring position of the rank within its group.
    pub slot: u32,
    /// `[start, end)` ranges in the group's packed (unpadded) token sequence; stripe layouts use
    /// `stride`, every other layout has stride 1.
    pub token_ranges: Vec<TokenRange>,
    /// Document boundaries of the rank's shard, unpadded and in the padded THD form.
    pub cu_seqlens: Vec<u32>,
    pub cu_seqlens_padded: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRange {
    pub start: u64,
    pub end: u64,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stride: u32,
}

fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

impl RankLayout {
    /// The rank layouts of a group laid out by `layout`, with its global `ranks`.
    pub fn from_layout(layout: &crate::scheme::GroupLayout, ranks: &[u32]) -> Vec<RankLayout> {
        let mut offsets = Vec::with_capacity(layout.docs.len());
        let mut at = 0u64;
        for &d in &layout.docs {
            offsets.push(at);
            at += u64::from(d);
        }
        layout
            .ranks
            .iter()
            .zip(ranks)
            .map(|(shard, &rank)| RankLayout {
                rank,
                slot: shard.slot,
                token_ranges: shard
                    .pieces
                    .iter()
                    .map(|p| {
                        let start = offsets[p.doc as usize] + u64::from(p.start);
                        TokenRange {
                            start,
                            end: start + u64::from(p.len - 1) * u64::from(p.stride) + 1,
                            stride: p.stride,
                        }
                    })
                    .collect(),
                cu_seqlens: shard.cu_seqlens(),
                cu_seqlens_padded: shard.cu_seqlens_padded(),
            })
            .collect()
    }
}
