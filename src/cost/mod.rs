//! The analytic cost model: what one SP group's micro-batch costs in time and memory on a cluster.
//!
//! A group's work is described as a [`Program`]: stages of compute and collectives, each stage
//! either exposed (transfer, then compute) or overlapped (transfer alongside compute, as ring
//! attention does). The cost model evaluates a program on an idle cluster; the simulator replays
//! the same programs with several groups sharing links. docs/cost-model.md states the formulas.

pub mod comm;
pub mod compute;
pub mod memory;
pub mod pairs;
mod program;

pub use comm::Transfer;
pub use compute::{Dtype, Pass};
pub use memory::Checkpointing;
pub use program::{Part, Program, Stage};

use crate::cluster::{Cluster, Collective};
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::scheme::{GroupShape, HsapParams};
use serde::{Deserialize, Serialize};

/// How training runs, beyond the parallel scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub dtype: Dtype,
    /// ZeRO stage 0-3, sharding over all GPUs (data and sequence parallel ranks).
    pub zero: u8,
    pub checkpointing: Checkpointing,
    /// Tensor-parallel degree inside each SP rank (1: none).
    pub tp: u32,
    /// Whether the data-parallel gradient reduction overlaps the backward pass.
    pub overlap_grad_sync: bool,
    /// Run the backward pass too (false: forward only).
    pub backward: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dtype: Dtype::Bf16,
            zero: 3,
            checkpointing: Checkpointing::Full,
            tp: 1,
            overlap_grad_sync: true,
            backward: true,
        }
    }
}

/// A group's predicted cost for one micro-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupCost {
    pub time_s: f64,
    /// Busy compute time, averaged over the group's ranks.
    pub compute_s: f64,
    /// Time the average rank waits on slower ranks of its group (load imbalance).
    pub idle_s: f64,
    /// Per collective: total time and the part not hidden behind compute.
    pub comm: Vec<CommCost>,
    /// Peak memory of the group's most loaded GPU.
    pub memory_bytes: f64,
    /// FLOPs one GPU executes (including recomputation).
    pub flops_per_gpu: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommCost {
    pub collective: Collective,
    pub total_s: f64,
    pub exposed_s: f64,
}

impl GroupCost {
    pub fn exposed_comm_s(&self) -> f64 {
        self.comm.iter().map(|c| c.exposed_s).sum()
    }
}

/// Gradient synchronisation of one step over all GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SyncCost {
    pub time_s: f64,
    /// What remains after overlapping with the last micro-batch's backward pass.
    pub exposed_s: f64,
}

#[derive(Debug, Clone)]
pub struct CostModel {
    pub model: ModelShape,
    pub cluster: Cluster,
    pub train: TrainConfig,
}

impl CostModel {
    pub fn new(model: ModelShape, cluster: Cluster, train: TrainConfig) -> Result<CostModel> {
        if train.zero > 3 {
            return Err(Error::invalid(format!("ZeRO stage {} does not exist", train.zero), "use 0, 1, 2 or 3"));
        }
        if train.tp == 0 || model.heads % train.tp != 0 {
            return Err(Error::invalid(
                format!("tensor-parallel degree {} must divide the {} heads", train.tp, model.heads),
                "choose a tp that divides the number of heads",
            ));
        }
        Ok(CostModel { model, cluster, train })
    }

    /// The parameters the sequence-aware layout balances with.
    pub fn hsap_params(&self) -> HsapParams {
        HsapParams {
            split_threshold: None,
            linear_weight: program::linear_weight(&self.model),
        }
    }

    /// The stage program of one group running `docs` (lengths, packing order) as one micro-batch.
    pub fn program(&self, shape: &GroupShape, docs: &[u32]) -> Program {
        program::build(self, shape, docs)
    }

    /// Cost of one group's micro-batch on an idle cluster.
    pub fn group(&self, shape: &GroupShape, docs: &[u32]) -> GroupCost {
        let program = self.program(shape, docs);
        program.cost(&self.cluster)
    }

    /// Memory the model states take per GPU when all `gpus` GPUs shard them.
    pub fn static_memory_bytes(&self, gpus: u32) -> f64 {
        memory::model_state_bytes(&self.model, &self.train, gpus)
    }

    /// Usable memory per GPU: HBM less what the CUDA context, NCCL and allocator fragmentation
    /// take (a fixed 10%, as PyTorch's caching allocator typically loses).
    pub fn memory_limit_bytes(&self) -> f64 {
        self.cluster.hbm_bytes() * 0.9
    }

    /// The optimizer step on each GPU's shard: Adam reads fp32 master weights, momentum, variance
    /// and the bf16 gradient (14 bytes per parameter) and writes the first three and the bf16
    /// weights (14 bytes), a memory-bound pass at HBM bandwidth.
    pub fn optimizer_step_s(&self, gpus: u32) -> f64 {
        let params = self.model.params() as f64 / f64::from(self.train.tp);
        let shard = if self.train.zero >= 1 { params / f64::from(gpus.max(1)) } else { params };
        shard * 28.0 / (self.cluster.gpu.hbm_gb_per_s * crate::cluster::GB)
    }

    /// The gradient reduction over all GPUs: reduce-scatter under ZeRO 2/3, all-reduce otherwise,
    /// of bf16 gradients.
    pub fn grad_sync_transfer(&self, gpus: u32) -> Transfer {
        let nodes = gpus.div_ceil(self.cluster.gpus_per_node);
        let bytes = 2.0 * self.model.params() as f64 / f64::from(self.train.tp);
        let collective = if self.train.zero >= 2 { Collective::ReduceScatter } else { Collective::AllReduce };
        Transfer::new(collective, gpus, nodes, bytes)
    }

    /// Gradient synchronisation of a step whose last micro-batch runs `last` (one program per
    /// group). Gradients of the shared weights are complete layer by layer once every group has
    /// reached that layer's backward, so the reduction starts when the last group enters its
    /// backward pass and overlaps what remains of the micro-batch (unless overlap is off).
    pub fn grad_sync(&self, gpus: u32, last: &[&Program]) -> SyncCost {
        let time_s = comm::time_s(&self.cluster, &self.grad_sync_transfer(gpus));
        if !self.train.overlap_grad_sync {
            return SyncCost { time_s, exposed_s: time_s };
        }
        let start = last.iter().map(|p| p.forward_s()).fold(0.0, f64::max);
        let end = last.iter().map(|p| p.time_s()).fold(0.0, f64::max);
        SyncCost {
            time_s,
            exposed_s: (start + time_s - end).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{RingVariant, Scheme};

    fn gpt7b() -> CostModel {
        CostModel::new(
            ModelShape::resolve("gpt-7b").unwrap(),
            Cluster::resolve("a100-40g-ib400").unwrap(),
            TrainConfig::default(),
        )
        .unwrap()
    }

    fn shape(scheme: Scheme, u: u32, r: u32) -> GroupShape {
        GroupShape { scheme, ulysses: u, ring: r, variant: RingVariant::Zigzag }
    }

    #[test]
    fn ulysses_all_to_all_volume_per_layer() {
        // gpt-7b, u = 8 over 8192 tokens: each rank holds 1024 tokens; Q, K, V of 64 heads x 64
        // dims in bf16 is 1024 x 192 x 64 x 2 = 25,165,824 bytes per rank, the output a third of it.
        let cm = gpt7b();
        let p = cm.program(&shape(Scheme::Ulysses, 8, 1), &[8192]);
        let a2a: Vec<f64> = p
            .stages
            .iter()
            .filter(|s| s.label == "ulysses all_to_all in fwd" || s.label == "ulysses all_to_all out fwd")
            .map(|s| s.transfer.unwrap().bytes)
            .collect();
        assert_eq!(a2a, vec![25_165_824.0, 8_388_608.0]);
    }
}
