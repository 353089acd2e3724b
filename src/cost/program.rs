//! Pricing a group's workload (`crate::workload`) into its stage program: every kernel by the
//! cost model's GEMM, memory and attention models, every collective by its NCCL model, and the
//! program evaluated in isolation. docs/cost-model.md states every formula used here.

use super::comm::{self, Transfer};
use super::compute::{gemm_time_s, launch_s, memory_time_s, Pass};
use super::memory::MemoryBreakdown;
use super::{CommCost, CostModel, GroupCost, Scope};
use crate::cluster::Cluster;
use crate::scheme::GroupShape;
use crate::workload::{Compute, Kernel, Step, Workload};
use serde::{Deserialize, Serialize};

pub use crate::workload::{Part, RECOMPUTE};

/// A unit of work every rank of the group runs in lock step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub label: String,
    pub part: Part,
    pub pass: Pass,
    /// How many times the stage runs (layers).
    pub repeat: u32,
    /// Compute time of the slowest rank, and of the average rank.
    pub compute_s: f64,
    pub mean_compute_s: f64,
    pub transfer: Option<Transfer>,
    /// The transfer's time on an idle cluster.
    pub transfer_s: f64,
    /// The transfer runs alongside the compute (ring attention, ZeRO-3 prefetch) rather than
    /// before it.
    pub overlapped: bool,
}

impl Stage {
    /// Time of one repetition given the transfer's time.
    pub fn time_with(&self, transfer_s: f64) -> f64 {
        if self.overlapped {
            self.compute_s.max(transfer_s)
        } else {
            self.compute_s + transfer_s
        }
    }

    pub fn time_s(&self) -> f64 {
        self.time_with(self.transfer_s)
    }

    /// Whether the stage runs in the backward pass (recomputation included): from here on a
    /// group's gradients are being produced.
    pub fn in_backward(&self) -> bool {
        self.pass == Pass::Bwd || self.label.starts_with(RECOMPUTE)
    }
}

/// A group's micro-batch as stages, with its memory peak and FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub shape: GroupShape,
    pub stages: Vec<Stage>,
    /// Peak memory of the group's most loaded GPU (`memory.total_bytes()`).
    pub memory_bytes: f64,
    pub memory: MemoryBreakdown,
    /// FLOPs the most loaded GPU executes (padding and recomputation included).
    pub flops_per_gpu: f64,
    /// FLOPs of the model's work on the group's real tokens, per GPU of the group (no padding,
    /// no recomputation): what model FLOPs utilisation counts.
    pub model_flops_per_gpu: f64,
    /// Tokens (padding included) each GPU holds outside attention.
    pub tokens_per_gpu: f64,
}

/// A program's time split by what ZeRO's overlapped traffic does to it:
/// `time = rest + sum over the overlapped linear stages of max(compute, transfer)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OverlapSplit {
    /// Every stage but the linear stages that carry ZeRO traffic.
    pub rest_s: f64,
    pub overlapped_compute_s: f64,
    pub overlapped_transfer_s: f64,
}

impl Program {
    /// The workload priced: every kernel and collective by the cost model; a whole step's
    /// (`Scope::Step`) with the stack's fitted factor (`CostModel::step_factor`) on every time.
    pub fn price(cm: &CostModel, workload: Workload) -> Program {
        let factor = if workload.scope == Scope::Step { cm.step_factor() } else { 1.0 };
        Program {
            shape: workload.shape,
            stages: workload.steps.iter().map(|s| price_step(cm, s, factor)).collect(),
            memory_bytes: workload.memory.total_bytes(),
            memory: workload.memory,
            flops_per_gpu: workload.flops_per_gpu,
            model_flops_per_gpu: workload.model_flops_per_gpu,
            tokens_per_gpu: workload.tokens_per_gpu,
        }
    }

    pub fn time_s(&self) -> f64 {
        self.stages.iter().map(|s| f64::from(s.repeat) * s.time_s()).sum()
    }

    /// Time until the backward pass begins, on an idle cluster.
    pub fn forward_s(&self) -> f64 {
        self.stages
            .iter()
            .take_while(|s| !s.in_backward())
            .map(|s| f64::from(s.repeat) * s.time_s())
            .sum()
    }

    /// The split behind the planner's two-line linear model (`CostModel::group_linear`).
    pub fn overlap_split(&self) -> OverlapSplit {
        let mut split = OverlapSplit { rest_s: 0.0, overlapped_compute_s: 0.0, overlapped_transfer_s: 0.0 };
        for s in &self.stages {
            let n = f64::from(s.repeat);
            if s.part == Part::Linear && s.overlapped && s.transfer.is_some() {
                split.overlapped_compute_s += n * s.compute_s;
                split.overlapped_transfer_s += n * s.transfer_s;
            } else {
                split.rest_s += n * s.time_s();
            }
        }
        split
    }

    /// The isolated cost: compute, idle, and each collective's exposed part.
    pub fn cost(&self, _cluster: &Cluster) -> GroupCost {
        let mut comm: Vec<CommCost> = Vec::new();
        let (mut compute_s, mut idle_s) = (0.0, 0.0);
        for s in &self.stages {
            let n = f64::from(s.repeat);
            compute_s += n * s.mean_compute_s;
            idle_s += n * (s.compute_s - s.mean_compute_s);
            let Some(t) = &s.transfer else { continue };
            let exposed = s.time_s() - s.compute_s;
            match comm.iter_mut().find(|c| c.collective == t.collective) {
                Some(c) => {
                    c.total_s += n * s.transfer_s;
                    c.exposed_s += n * exposed;
                }
                None => comm.push(CommCost {
                    collective: t.collective,
                    total_s: n * s.transfer_s,
                    exposed_s: n * exposed,
                }),
            }
        }
        GroupCost {
            time_s: self.time_s(),
            compute_s,
            idle_s,
            comm,
            memory_bytes: self.memory_bytes,
            memory: self.memory,
            flops_per_gpu: self.flops_per_gpu,
            model_flops_per_gpu: self.model_flops_per_gpu,
        }
    }
}

/// One kernel's time.
pub fn kernel_s(cm: &CostModel, kernel: &Kernel) -> f64 {
    let c = &cm.cluster;
    match *kernel {
        Kernel::Gemm { m, n, k, .. } => gemm_time_s(c, cm.train.dtype, m, n, k),
        Kernel::Memory { bytes, .. } => memory_time_s(c, bytes),
        Kernel::Attention { pass, heads, head_dim, tiles, lead, causal } => {
            if tiles <= 0.0 {
                return 0.0;
            }
            cm.attention.pass(pass).time_s(head_dim, heads, tiles, lead, causal).max(launch_s(c))
        }
    }
}

/// A step's stage: its compute on the slowest and on the average rank, its transfer's time on an
/// idle cluster, each times `factor`.
fn price_step(cm: &CostModel, step: &Step, factor: f64) -> Stage {
    let (compute_s, mean_compute_s) = compute_s(cm, &step.compute, factor);
    Stage {
        label: step.label.clone(),
        part: step.part,
        pass: step.pass,
        repeat: step.repeat,
        compute_s,
        mean_compute_s,
        transfer: step.transfer,
        transfer_s: step.transfer.map_or(0.0, |t| factor * comm::time_s(&cm.cluster, &t)),
        overlapped: step.transfer.is_some() && step.overlapped,
    }
}

/// (slowest, mean) compute time of one repetition times `factor`: over slots, or inner steps
/// summed.
fn compute_s(cm: &CostModel, compute: &Compute, factor: f64) -> (f64, f64) {
    match compute {
        Compute::Slots(slots) => {
            let times: Vec<f64> = slots.iter().map(|k| factor * k.iter().map(|k| kernel_s(cm, k)).sum::<f64>()).collect();
            if times.is_empty() {
                return (0.0, 0.0);
            }
            let max = times.iter().copied().fold(0.0, f64::max);
            (max, times.iter().sum::<f64>() / times.len() as f64)
        }
        Compute::Steps(steps) => steps.iter().map(|s| price_step(cm, s, factor)).fold((0.0, 0.0), |(max, mean), s| {
            (max + f64::from(s.repeat) * s.time_s(), mean + f64::from(s.repeat) * s.mean_compute_s)
        }),
    }
}

/// A program of one exposed stage carrying `t` in `transfer_s` and nothing else: the unit tests'
/// smallest user of the network.
#[cfg(test)]
pub(crate) fn one_transfer(shape: GroupShape, part: Part, t: Transfer, transfer_s: f64) -> Program {
    Program {
        shape,
        stages: vec![Stage {
            label: "transfer".into(),
            part,
            pass: Pass::Fwd,
            repeat: 1,
            compute_s: 0.0,
            mean_compute_s: 0.0,
            transfer_s,
            transfer: Some(t),
            overlapped: false,
        }],
        memory_bytes: 0.0,
        memory: Default::default(),
        flops_per_gpu: 0.0,
        model_flops_per_gpu: 0.0,
        tokens_per_gpu: 0.0,
    }
}
