//! The cost model against published measurements (reference/): every measured cell of the USP
//! benchmark, the FlashAttention kernel tables, and FlexSP's effective all-to-all bandwidth.
//! Nothing here is fitted to these end-to-end numbers; the kernel tables seed the attention model
//! (so their comparison shows the fit's residual), the USP and FlexSP figures are out of sample.

use super::compute::memory_time_s;
use super::{comm, AttentionKernel, Checkpointing, CostModel, Scope, TrainConfig, Transfer};
use crate::cluster::{Cluster, Collective};
use crate::error::Result;
use crate::model::{Mlp, ModelShape};
use crate::reference::{self, FaTable, UspCell, UspVariant, FA_BENCH_HIDDEN, FA_BENCH_TOKENS, FA_SEQLENS};
use crate::scheme::{GroupShape, RingVariant, Scheme};
use serde::Serialize;

/// The cluster the USP benchmark ran on (8x A100-SXM4-80GB, NVLink).
pub const USP_CLUSTER: &str = "dgx-a100-80g";

/// One measured cell of the USP table and the model's prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UspCheck {
    pub line: usize,
    pub seqlen: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub group_num: u32,
    pub bs: u32,
    pub ulysses: u32,
    pub ring: u32,
    pub variant: String,
    pub measured_iters_per_s: f64,
    pub predicted_iters_per_s: f64,
    /// (predicted - measured) / measured, on time per iteration.
    pub time_error: f64,
    /// Share of the predicted time spent in attention kernels (the rest: communication exposed,
    /// layout copies, softmax merges, launches).
    pub kernel_share: f64,
    /// Measured minus predicted time per iteration, in ms: what the benchmark spent beyond the
    /// GPU work the model prices.
    pub unexplained_ms: f64,
}

/// A minimal model shape for attention-only scopes: only heads, KV heads and head dim matter.
pub fn attention_shape(name: &str, heads: u32, kv_heads: u32, head_dim: u32) -> ModelShape {
    ModelShape {
        name: name.to_string(),
        layers: 1,
        hidden: heads * head_dim,
        heads,
        kv_heads,
        head_dim,
        ffn: 4 * heads * head_dim,
        vocab: 32_000,
        mlp: Mlp::Plain,
        tied_embeddings: false,
        source: "benchmark shape".into(),
        layer_pattern: None,
        softmax_layers: None,
        linear_attention: None,
    }
}

/// The group shape of a USP split: pure Ulysses, pure ring, or the 2D grid.
pub fn usp_shape(ulysses: u32, ring: u32, variant: RingVariant) -> GroupShape {
    let scheme = match (ulysses, ring) {
        (_, 1) => Scheme::Ulysses,
        (1, _) => Scheme::Ring,
        _ => Scheme::Usp,
    };
    GroupShape { scheme, ulysses, ring, variant }
}

/// Predicts every measured cell of reference/usp_8xA100_nvlink_fwd_iters_per_s.csv: one causal
/// bf16 attention forward of `bs` sequences of the global length on 8 GPUs. The variant columns
/// are modelled as what they change: the ring layout, and Q/K/V in one all-to-all or three.
pub fn usp() -> Result<Vec<UspCheck>> {
    let t = reference::tables()?;
    let cluster = Cluster::resolve(USP_CLUSTER)?;
    let mut out = Vec::new();
    for row in &t.usp {
        let model = attention_shape("usp-bench", row.head_num, row.kv_heads(), row.head_size);
        for (variant, cell) in UspVariant::COLUMNS.iter().zip(row.cells) {
            let UspCell::Measured(measured) = cell else { continue };
            let train = TrainConfig {
                backward: false,
                zero: 0,
                qkv_packed: variant.qkv_packed,
                ..TrainConfig::default()
            };
            let cm = CostModel::new(model.clone(), cluster.clone(), train)?;
            let shape = usp_shape(row.ulysses, row.ring, variant.ring);
            let sequences = vec![vec![row.seqlen]; row.bs as usize];
            let program = cm.program_batch(&shape, &sequences, Scope::Attention);
            let time = program.time_s();
            let kernel: f64 = program
                .stages
                .iter()
                .filter(|s| s.label.starts_with("attention") || s.label.starts_with("ring step"))
                .map(|s| f64::from(s.repeat) * s.compute_s)
                .sum();
            out.push(UspCheck {
                line: row.line,
                seqlen: row.seqlen,
                heads: row.head_num,
                kv_heads: row.kv_heads(),
                head_dim: row.head_size,
                group_num: row.group_num,
                bs: row.bs,
                ulysses: row.ulysses,
                ring: row.ring,
                variant: variant.name(),
                measured_iters_per_s: measured,
                predicted_iters_per_s: 1.0 / time,
                time_error: time * measured - 1.0,
                kernel_share: kernel / time,
                unexplained_ms: 1e3 * (1.0 / measured - time),
            });
        }
    }
    Ok(out)
}

/// For one row group (seqlen, heads, head dim, group_num) and one variant column: the split the
/// model ranks fastest and how it measured against the measured fastest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankingCheck {
    pub seqlen: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub group_num: u32,
    pub variant: String,
    /// Splits measured in this column.
    pub splits: usize,
    pub model_pick: (u32, u32),
    pub measured_best: (u32, u32),
    /// measured(best) / measured(pick) - 1: how much slower the model's pick ran.
    pub shortfall: f64,
}

/// Rankings per row group and variant column (a column is one experiment: the same code with
/// only the split changing).
pub fn usp_rankings(checks: &[UspCheck]) -> Vec<RankingCheck> {
    let mut groups: Vec<(u32, u32, u32, u32, String)> = checks
        .iter()
        .map(|c| (c.seqlen, c.heads, c.head_dim, c.group_num, c.variant.clone()))
        .collect();
    groups.dedup();
    let mut seen = Vec::new();
    for g in groups {
        if !seen.contains(&g) {
            seen.push(g);
        }
    }
    seen.into_iter()
        .filter_map(|(seqlen, heads, head_dim, group_num, variant)| {
            let cells: Vec<&UspCheck> = checks
                .iter()
                .filter(|c| (c.seqlen, c.heads, c.head_dim, c.group_num) == (seqlen, heads, head_dim, group_num) && c.variant == variant)
                .collect();
            let pick = cells.iter().max_by(|a, b| a.predicted_iters_per_s.total_cmp(&b.predicted_iters_per_s))?;
            let best = cells.iter().max_by(|a, b| a.measured_iters_per_s.total_cmp(&b.measured_iters_per_s))?;
            Some(RankingCheck {
                seqlen,
                heads,
                head_dim,
                group_num,
                variant,
                splits: cells.len(),
                model_pick: (pick.ulysses, pick.ring),
                measured_best: (best.ulysses, best.ring),
                shortfall: best.measured_iters_per_s / pick.measured_iters_per_s - 1.0,
            })
        })
        .collect()
}

/// One cell of a FlashAttention table and the model's prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaCheck {
    pub table: FaTable,
    pub line: usize,
    pub implementation: String,
    pub causal: bool,
    pub head_dim: u32,
    pub seqlen: u32,
    pub measured_tflops: f64,
    pub predicted_tflops: f64,
    pub error: f64,
}

/// Predicts every FlashAttention-2 and FlashAttention-3 cell of the kernel tables on one GPU: a
/// batch of 16K / seqlen sequences with 2048 / head_dim heads. Causal cells run through the whole
/// cost model (layout, tiles, launch floor); non-causal ones, which training never runs, through
/// the kernel tile model alone.
pub fn fa() -> Result<Vec<FaCheck>> {
    let t = reference::tables()?;
    let mut out = Vec::new();
    for row in &t.fa {
        let kernel = match row.implementation.as_str() {
            "FlashAttention-2" => AttentionKernel::Fa2,
            "FlashAttention-3" => AttentionKernel::Fa3,
            _ => continue,
        };
        let cluster = Cluster::resolve(row.table.cluster_preset())?;
        let heads = FA_BENCH_HIDDEN / row.head_dim;
        let model = attention_shape("fa-bench", heads, heads, row.head_dim);
        let train = TrainConfig {
            backward: row.table.fwd_bwd(),
            zero: 0,
            checkpointing: Checkpointing::None,
            attention_kernel: Some(kernel),
            ..TrainConfig::default()
        };
        let cm = CostModel::new(model, cluster, train)?;
        for (&seqlen, measured) in FA_SEQLENS.iter().zip(row.tflops) {
            let Some(measured) = measured else { continue };
            let batch = FA_BENCH_TOKENS / seqlen;
            let (l, b, h, d) = (f64::from(seqlen), f64::from(batch), f64::from(heads), f64::from(row.head_dim));
            let passes = if row.table.fwd_bwd() { 3.5 } else { 1.0 };
            let counted = 4.0 * b * l * l * h * d * passes * if row.causal { 0.5 } else { 1.0 };
            let time = if row.causal {
                let shape = usp_shape(1, 1, RingVariant::Zigzag);
                cm.program_batch(&shape, &vec![vec![seqlen]; batch as usize], Scope::Attention).time_s()
            } else {
                let n = l / f64::from(super::pairs::ATTENTION_TILE_TOKENS);
                let fwd = cm.attention.fwd.time_s(d, b * h, n * n, n, false);
                let bwd = if row.table.fwd_bwd() { cm.attention.bwd.time_s(d, b * h, n * n, n, false) } else { 0.0 };
                fwd + bwd
            };
            let predicted = counted / time / 1e12;
            out.push(FaCheck {
                table: row.table,
                line: row.line,
                implementation: row.implementation.clone(),
                causal: row.causal,
                head_dim: row.head_dim,
                seqlen,
                measured_tflops: measured,
                predicted_tflops: predicted,
                error: predicted / measured - 1.0,
            });
        }
    }
    Ok(out)
}

/// The cluster of FlexSP's all-to-all measurements.
pub const FLEXSP_CLUSTER: &str = "a100-40g-ib400";

/// Tokens of the sequence FlexSP's all-to-all measurement splits over the SP group ("4k seq").
pub const FLEXSP_ALLTOALL_TOKENS: u32 = 4096;

/// Hidden size of the model of FlexSP's measurement (GPT-7B).
pub const FLEXSP_ALLTOALL_HIDDEN: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlltoallCheck {
    pub line: usize,
    pub sp_degree: u32,
    pub nodes: u32,
    pub bytes_per_rank: f64,
    pub measured_gb_per_s: f64,
    pub predicted_gb_per_s: f64,
    pub error: f64,
}

/// Predicts FlexSP's effective all-to-all bandwidth (bytes per rank over the time of the
/// Ulysses all-to-all with its two layout copies) for each SP degree, from the cluster preset.
pub fn flexsp_alltoall() -> Result<Vec<AlltoallCheck>> {
    let t = reference::tables()?;
    let base = Cluster::resolve(FLEXSP_CLUSTER)?;
    t.alltoall
        .iter()
        .map(|row| {
            let nodes = row.sp_degree.div_ceil(base.gpus_per_node);
            let cluster = base.clone().with_nodes(nodes)?;
            let tokens = f64::from(FLEXSP_ALLTOALL_TOKENS) / f64::from(row.sp_degree);
            let bytes = tokens * f64::from(FLEXSP_ALLTOALL_HIDDEN) * 2.0;
            let transfer = Transfer::new(Collective::AllToAll, row.sp_degree, nodes, bytes);
            let time = comm::time_s(&cluster, &transfer) + 2.0 * memory_time_s(&cluster, 2.0 * bytes);
            let predicted = bytes / time / 1e9;
            Ok(AlltoallCheck {
                line: row.line,
                sp_degree: row.sp_degree,
                nodes,
                bytes_per_rank: bytes,
                measured_gb_per_s: row.effective_gb_per_s,
                predicted_gb_per_s: predicted,
                error: predicted / row.effective_gb_per_s - 1.0,
            })
        })
        .collect()
}

/// A measured efficiency of ring attention against the ideal, and the model's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EfficiencyCheck {
    /// The row of reference/hardware_facts.csv.
    pub item: String,
    pub measured: f64,
    pub predicted: f64,
    pub error: f64,
}

/// Tokens per GPU of ring-flash-attention's benchmark (reference/hardware_facts.csv).
pub const RING_FLASH_ATTN_TOKENS_PER_GPU: u32 = 8192;

/// ring-flash-attention's measured efficiency of zigzag and basic ring attention (forward and
/// backward, 8x A100, Llama-3-8B attention: 32 query heads, 8 KV heads of 128) against
/// single-GPU FlashAttention over the whole sequence, divided by 8. Its third figure, the
/// all-gather implementation, is left out: ring-flash-attention's llama3 functions split the
/// sequence contiguously (so the basic layout's causal imbalance applies), while the `allgather`
/// scheme here is Llama 3's load-balanced zigzag split; they are not the same scheme.
pub fn ring_flash_attn() -> Result<Vec<EfficiencyCheck>> {
    let t = reference::tables()?;
    let cluster = Cluster::resolve(USP_CLUSTER)?;
    let model = attention_shape("llama3-8b-attention", 32, 8, 128);
    let train = TrainConfig { backward: true, zero: 0, checkpointing: Checkpointing::None, ..TrainConfig::default() };
    let cm = CostModel::new(model, cluster, train)?;
    let gpus = 8;
    let sequence = vec![vec![RING_FLASH_ATTN_TOKENS_PER_GPU * gpus]];
    let single = cm.program_batch(&usp_shape(1, 1, RingVariant::Zigzag), &sequence, Scope::Attention).time_s();
    let ideal = single / f64::from(gpus);
    let cases = [
        ("ring_flash_attn.zigzag_vs_ideal_fwd_bwd_a100", RingVariant::Zigzag),
        ("ring_flash_attn.basic_ring_vs_ideal_fwd_bwd_a100", RingVariant::Basic),
    ];
    cases
        .iter()
        .map(|(item, variant)| {
            let measured = t.fact(item)?;
            let shape = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: gpus, variant: *variant };
            let predicted = ideal / cm.program_batch(&shape, &sequence, Scope::Attention).time_s();
            Ok(EfficiencyCheck {
                item: item.to_string(),
                measured,
                predicted,
                error: predicted / measured - 1.0,
            })
        })
        .collect()
}

/// The median of |x| over `values` (the headline error of a table); `None` for no values.
pub fn median_abs(values: impl Iterator<Item = f64>) -> Option<f64> {
    crate::stats::median(&values.map(f64::abs).collect::<Vec<_>>())
}
