//! Pipeline parallelism: a step's micro-batches flowing through `stages` pipeline stages, each
//! holding `layers / stages` layers (the first also the embedding, the last the LM head and
//! loss), with the 1F1B schedule or its interleaved form (Narayanan et al. 2021, "Efficient
//! Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", section 2.2).
//! docs/cost-model.md ("Pipeline parallelism") states the formulas.

use serde::{Deserialize, Serialize};

/// How micro-batches are ordered through the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PpSchedule {
    /// One forward, one backward (PipeDream-Flush): the bubble is `stages - 1` micro-batch times.
    #[default]
    #[serde(rename = "1f1b")]
    OneFOneB,
    /// Each stage holds `virtual` chunks of layers; the bubble shrinks by that factor.
    #[serde(rename = "interleaved")]
    Interleaved,
}

impl PpSchedule {
    pub fn name(self) -> &'static str {
        match self {
            PpSchedule::OneFOneB => "1f1b",
            PpSchedule::Interleaved => "interleaved",
        }
    }
}

/// A pipeline layout: stages, virtual chunks per stage, schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub stages: u32,
    /// Model chunks per stage (1 unless interleaved).
    pub virtual_stages: u32,
    pub schedule: PpSchedule,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline { stages: 1, virtual_stages: 1, schedule: PpSchedule::OneFOneB }
    }
}

/// One micro-batch on the pipeline: its forward and backward (recomputation included) on the
/// slowest stage, the same on an average stage, and one stage-to-stage transfer of its
/// activations (the gradient going back is as large).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageMicrobatch {
    pub slowest_s: f64,
    pub mean_s: f64,
    /// Time of one send/recv of the boundary activations between adjacent (virtual) stages.
    pub p2p_s: f64,
}

/// Where a pipelined step's time goes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct PipelineTime {
    pub time_s: f64,
    /// Warm-up and cool-down: stages idle while the pipeline fills and drains.
    pub bubble_s: f64,
    /// Stage-to-stage transfers on the critical path.
    pub p2p_exposed_s: f64,
}

impl Pipeline {
    pub fn is_pipelined(&self) -> bool {
        self.stages > 1
    }

    /// Layers of the largest stage (its chunks together): `ceil(layers / stages)`.
    pub fn layers_per_stage(&self, layers: u32) -> u32 {
        layers.div_ceil(self.stages.max(1))
    }

    /// How many micro-batches' activations the first stage holds at its peak, in units of one
    /// micro-batch on its layers: `stages` under 1F1B (fewer when the step has fewer
    /// micro-batches), times `1 + (stages - 1) / (stages x virtual)` when interleaved
    /// (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    /// Models", section 4.2.3).
    pub fn in_flight_microbatches(&self, microbatches: u32) -> f64 {
        let p = f64::from(self.stages.max(1));
        let v = f64::from(self.virtual_stages.max(1));
        let base = p.min(f64::from(microbatches.max(1)));
        match self.schedule {
            PpSchedule::OneFOneB => base,
            PpSchedule::Interleaved => base * (1.0 + (p - 1.0) / (p * v)),
        }
    }

    /// The step's time over its micro-batches: each micro-batch occupies the slowest stage for
    /// its forward and backward, and the fill and drain add `(stages - 1) / virtual` average
    /// micro-batch times (the bubble). Without overlap, each micro-batch also waits for two
    /// transfers per chunk boundary it crosses on a stage (activations forward, gradients back):
    /// `2 x virtual` per micro-batch, and `stages - 1` more of each along the fill and drain.
    pub fn step_time(&self, microbatches: &[StageMicrobatch], p2p_overlapped: bool) -> PipelineTime {
        if microbatches.is_empty() {
            return PipelineTime::default();
        }
        let p = f64::from(self.stages.max(1));
        let v = f64::from(self.virtual_stages.max(1));
        let steady: f64 = microbatches.iter().map(|m| m.slowest_s).sum();
        let mean = microbatches.iter().map(|m| m.mean_s).sum::<f64>() / microbatches.len() as f64;
        let bubble_s = (p - 1.0) / v * mean;
        let p2p = microbatches.iter().map(|m| m.p2p_s).sum::<f64>() / microbatches.len() as f64;
        let p2p_exposed_s = if p2p_overlapped || p <= 1.0 {
            0.0
        } else {
            2.0 * p2p * (v * microbatches.len() as f64 + (p - 1.0))
        };
        PipelineTime { time_s: steady + bubble_s + p2p_exposed_s, bubble_s, p2p_exposed_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(slowest_s: f64, mean_s: f64, p2p_s: f64) -> StageMicrobatch {
        StageMicrobatch { slowest_s, mean_s, p2p_s }
    }

    #[test]
    fn one_f_one_b_bubble_is_stages_minus_one_microbatches() {
        // 8 stages, 32 micro-batches of 10 ms: 320 ms of work plus a 7 x 10 ms bubble.
        let pipe = Pipeline { stages: 8, virtual_stages: 1, schedule: PpSchedule::OneFOneB };
        let t = pipe.step_time(&vec![mb(0.010, 0.010, 0.0); 32], true);
        assert!((t.time_s - 0.390).abs() < 1e-12);
        assert!((t.bubble_s - 0.070).abs() < 1e-12);
        // Interleaving over 4 chunks divides the bubble by 4: 17.5 ms.
        let inter = Pipeline { virtual_stages: 4, schedule: PpSchedule::Interleaved, ..pipe };
        assert!((inter.step_time(&vec![mb(0.010, 0.010, 0.0); 32], true).bubble_s - 0.0175).abs() < 1e-12);
    }

    #[test]
    fn exposed_transfers_count_two_per_chunk_and_the_fill() {
        // 4 stages, 2 chunks, 8 micro-batches, 1 ms per transfer: 2 x (2 x 8 + 3) = 38 ms.
        let pipe = Pipeline { stages: 4, virtual_stages: 2, schedule: PpSchedule::Interleaved };
        let t = pipe.step_time(&vec![mb(0.010, 0.008, 0.001); 8], false);
        assert!((t.p2p_exposed_s - 0.038).abs() < 1e-12);
        // The slowest stage sets the pace; the bubble uses the average stage: 80 + 3/2 x 8 + 38.
        assert!((t.time_s - (0.080 + 0.012 + 0.038)).abs() < 1e-12);
    }

    #[test]
    fn the_first_stage_holds_stages_microbatches_more_when_interleaved() {
        let pipe = Pipeline { stages: 8, virtual_stages: 1, schedule: PpSchedule::OneFOneB };
        assert_eq!(pipe.in_flight_microbatches(64), 8.0);
        assert_eq!(pipe.in_flight_microbatches(2), 2.0);
        let inter = Pipeline { virtual_stages: 7, schedule: PpSchedule::Interleaved, ..pipe };
        assert!((inter.in_flight_microbatches(64) - 8.0 * (1.0 + 7.0 / 56.0)).abs() < 1e-12);
        assert_eq!(pipe.layers_per_stage(126), 16);
    }
}
