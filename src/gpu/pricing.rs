//! The cost model's prediction for every op of a validation schedule: what `validate` compares
//! its measurements with (and what `--dry-run` prints).

use super::schedule::{Op, OpKind, PriceContext, Pricer, Work};
use crate::cost::{comm, compute, kernel_s, CostModel, Pass, Transfer};
use crate::cost::pairs::ATTENTION_TILE_TOKENS;
use crate::error::Result;
use crate::plan::Plan;

/// Prices kernels with the cost model's GEMM, attention and memory-bound models and collectives
/// with its NCCL model (which uses a calibrated profile's fits when the plan's cluster has them).
pub struct CostModelPricer {
    cm: CostModel,
}

impl CostModelPricer {
    /// The plan's cost model, which the schedule's step is priced with.
    pub fn cost_model(&self) -> &CostModel {
        &self.cm
    }

    pub fn new(plan: &Plan) -> Result<CostModelPricer> {
        Ok(CostModelPricer {
            cm: CostModel::new(plan.model.clone(), plan.cluster.clone(), plan.train.clone())?,
        })
    }

    /// A memory-bound pass over `bytes`.
    fn memory(&self, bytes: f64) -> f64 {
        compute::memory_time_s(&self.cm.cluster, bytes)
    }
}

impl Pricer for CostModelPricer {
    /// An op that runs part of the workload is priced as the cost model priced that part; the
    /// executor's own ops by their shapes.
    fn price(&self, op: &Op, ctx: &PriceContext) -> Option<f64> {
        match op.work {
            Some(Work::Kernel(k)) => return Some(kernel_s(&self.cm, &k)),
            Some(Work::Transfer(t)) => return Some(comm::time_s(&self.cm.cluster, &t)),
            None => {}
        }
        let op = &op.kind;
        let cluster = &self.cm.cluster;
        let dtype = self.cm.train.dtype;
        let head_dim = f64::from(self.cm.model.head_dim);
        Some(match op {
            OpKind::Gemm { m, n, k, count, .. } => {
                *count as f64 * compute::gemm_time_s(cluster, dtype, *m as f64, *n as f64, *k as f64)
            }
            OpKind::AttnFwd(a) | OpKind::AttnBwd(a) => {
                if a.skip {
                    return Some(0.0);
                }
                let pass = if matches!(op, OpKind::AttnFwd(_)) { Pass::Fwd } else { Pass::Bwd };
                // The cost model's tiles: pairs in full 128 x 128 tiles, one thread block per
                // query tile.
                let tile = f64::from(ATTENTION_TILE_TOKENS);
                let tiles = a.pairs as f64 / (tile * tile);
                let lead = (f64::from(a.rows_q) / tile).ceil();
                let heads = f64::from(a.heads.q_heads);
                self.cm.attention.pass(pass).time_s(head_dim, heads, tiles, lead, true).max(compute::launch_s(cluster))
            }
            // Reads dO and O (bf16), writes one f32 per row and head.
            OpKind::BwdPreprocess { rows, heads, .. } => {
                let (rows, heads) = (f64::from(*rows), f64::from(*heads));
                self.memory(rows * heads * (2.0 * 2.0 * head_dim + 4.0))
            }
            // f32 in, bf16 out.
            OpKind::Cast { elems, .. } => self.memory(*elems as f64 * 6.0),
            // Two f32 operands in, one out.
            OpKind::Add { elems, .. } => self.memory(*elems as f64 * 12.0),
            OpKind::SumReplicas { elems, .. } => self.memory(*elems as f64 * 8.0),
            OpKind::Memory { bytes, .. } => self.memory(*bytes as f64),
            _ => {
                let (collective, bytes, ranks) = op.collective()?;
                comm::time_s(cluster, &Transfer::new(collective, ranks, ctx.nodes, bytes as f64))
            }
        })
    }
}
