//! Planning one global batch at a time, as a training loop asks for it (the Python package's
//! `hsap.Planner`, python/). It runs what `tune` runs on a trace holding that batch alone: the
//! same batching, cost model, candidate table and solver, and the same plan form, so a batch
//! planned here is the `plan.json` batch of `hsap-tune --trace B --global-batch len(B)
//! --limit-batches 1` with the same model, cluster, training flags, limits and baselines.

use crate::cluster::Cluster;
use crate::cost::{CostModel, TrainConfig};
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::plan::BatchPlan;
use crate::solver::{run_all, Ctx, FlexspOptions, HsapOptions, RunOptions, Strategy};
use crate::trace::{make_batches, BatchBy, BatchSpec, OverLong};

/// How a batch is planned; the defaults are `hsap-tune`'s.
#[derive(Debug, Clone)]
pub struct PlannerOptions {
    /// Longest document, in tokens (`--max-seq`).
    pub max_seq: u32,
    /// Seconds hsap's LP/MILP stage may spend on the batch (`--time-limit`; 0 skips it).
    pub time_limit_s: f64,
    /// Rounds of hsap's integer type MILP (`--milp-rounds`).
    pub milp_rounds: usize,
    /// Baselines whose plans hsap starts from (`--baselines`); hsap keeps the best.
    pub baselines: Vec<Strategy>,
    /// Seconds FlexSP's MILP may spend on a micro-batch, when it is a baseline
    /// (`--flexsp-time-limit`).
    pub flexsp_time_limit_s: f64,
}

impl Default for PlannerOptions {
    fn default() -> Self {
        PlannerOptions {
            max_seq: crate::tune::DEFAULT_MAX_SEQ,
            time_limit_s: DEFAULT_TIME_LIMIT_S,
            milp_rounds: 0,
            baselines: Vec::new(),
            flexsp_time_limit_s: crate::tune::DEFAULT_FLEXSP_TIME_LIMIT_S,
        }
    }
}

/// `hsap-tune --time-limit`'s default: hsap's own.
pub const DEFAULT_TIME_LIMIT_S: f64 = 2.0;

/// A model on a cluster, ready to plan batches.
#[derive(Debug, Clone)]
pub struct Planner {
    model: ModelShape,
    cluster: Cluster,
    train: TrainConfig,
    opts: PlannerOptions,
}

impl Planner {
    /// Checks the setup once (the model states fit, the limits are sane), so that a training loop
    /// learns of a bad configuration before its first batch.
    pub fn new(model: ModelShape, cluster: Cluster, train: TrainConfig, opts: PlannerOptions) -> Result<Planner> {
        crate::tune::check_time_limits(opts.time_limit_s, opts.flexsp_time_limit_s)?;
        let cm = CostModel::new(model.clone(), cluster.clone(), train.clone())?;
        Ctx::new(cm, 1)?;
        Ok(Planner { model, cluster, train, opts })
    }

    pub fn model(&self) -> &ModelShape {
        &self.model
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Plans one global batch of documents of these lengths (tokens, in order): hsap's plan, as
    /// `tune` writes it into `plan.json`. A document longer than `max_seq` is an error (`tune`
    /// would drop it).
    pub fn plan(&self, lengths: &[u32]) -> Result<BatchPlan> {
        if lengths.is_empty() {
            return Err(Error::invalid("the batch has no documents", "pass at least one document length"));
        }
        if let Some(i) = lengths.iter().position(|&l| l == 0) {
            return Err(Error::invalid(format!("document {i} has length 0"), "lengths are tokens, at least 1"));
        }
        let spec = BatchSpec {
            by: BatchBy::Count(lengths.len()),
            max_seq: Some(self.opts.max_seq),
            over_long: OverLong::Drop,
            shuffle_seed: None,
        };
        let mut batches = make_batches(lengths, &spec)?;
        if batches.dropped > 0 {
            return Err(Error::invalid(
                format!("{} documents are longer than max_seq {}", batches.dropped, self.opts.max_seq),
                "raise max_seq, or cut them before planning",
            ));
        }
        let batch = batches.batches.remove(0);
        let cm = CostModel::new(self.model.clone(), self.cluster.clone(), self.train.clone())?;
        let max_len = batch.docs.iter().map(|d| d.len).max().unwrap_or(1);
        let ctx = Ctx::new(cm, max_len)?;
        crate::tune::check_holdable(&ctx, max_len)?;
        let run_opts = RunOptions {
            hsap: HsapOptions {
                time_limit_s: self.opts.time_limit_s,
                max_milp_solves: self.opts.milp_rounds,
                use_milp: self.opts.time_limit_s > 0.0,
                ..HsapOptions::default()
            },
            flexsp: FlexspOptions { time_limit_s: self.opts.flexsp_time_limit_s, ..FlexspOptions::default() },
            baselines: self.opts.baselines.clone(),
            progress: crate::progress::Mode::Off,
        };
        let result = run_all(&ctx, std::slice::from_ref(&batch), &run_opts)?;
        let priced = result.strategies.first().and_then(|s| s.priced.first()).ok_or_else(|| Error::internal("hsap planned no batch"))?;
        Ok(ctx.to_batch_plan(&batch, priced))
    }
}
