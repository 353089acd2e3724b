//! The native half of the Python package `hsap` (python/hsap/ is the other): a planner that
//! resolves its model, cluster and training flags exactly as `hsap-tune` does and returns each
//! batch's plan as the JSON `plan.json` holds, and a plan reader that checks a written plan and
//! hands it out batch by batch. The Python side turns the JSON into objects.

use hsap::cli::{ClusterArgs, ModelArgs, TrainArgs};
use hsap::plan::{BatchPlan, Plan};
use hsap::planner::{Planner, PlannerOptions};
use hsap::solver::Strategy;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;

/// hsap's errors as Python exceptions: bad input is a ValueError, a bug of hsap's a RuntimeError.
fn to_py(e: hsap::Error) -> PyErr {
    match e {
        hsap::Error::Internal { .. } => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn to_json(batch: &BatchPlan) -> PyResult<String> {
    serde_json::to_string(batch).map_err(|e| PyRuntimeError::new_err(format!("cannot write the plan as JSON: {e}")))
}

/// Plans global batches for one model on one cluster (`hsap.Planner` wraps it).
#[pyclass(name = "NativePlanner", frozen)]
struct NativePlanner {
    inner: Planner,
}

#[pymethods]
impl NativePlanner {
    #[new]
    #[pyo3(signature = (model, cluster, nodes, stack, zero, checkpointing, tp, pp, max_seq, time_limit_s, milp_rounds, baselines, flexsp_time_limit_s))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: String,
        cluster: String,
        nodes: Option<u32>,
        stack: Option<String>,
        zero: u8,
        checkpointing: String,
        tp: u32,
        pp: u32,
        max_seq: u32,
        time_limit_s: f64,
        milp_rounds: usize,
        baselines: Vec<String>,
        flexsp_time_limit_s: f64,
    ) -> PyResult<Self> {
        if !["none", "selective", "full"].contains(&checkpointing.as_str()) {
            return Err(PyValueError::new_err(format!("checkpointing '{checkpointing}' is not one of none, selective, full")));
        }
        let train = TrainArgs { zero, checkpointing, tp, pp, stack };
        let model = ModelArgs { model }.load().map_err(to_py)?;
        let cluster = ClusterArgs { cluster, nodes }.load().map_err(to_py)?;
        let (model, cluster, train) = train.apply(model, cluster).map_err(to_py)?;
        let baselines = baselines.iter().map(|b| Strategy::from_name(b)).collect::<hsap::Result<Vec<_>>>().map_err(to_py)?;
        let opts = PlannerOptions { max_seq, time_limit_s, milp_rounds, baselines, flexsp_time_limit_s };
        Ok(NativePlanner { inner: Planner::new(model, cluster, train, opts).map_err(to_py)? })
    }

    /// The plan of one global batch, as `plan.json` holds a batch (JSON text).
    fn plan_batch_json(&self, py: Python<'_>, lengths: Vec<u32>) -> PyResult<String> {
        // Planning takes milliseconds to seconds: other Python threads (a data loader) run meanwhile.
        let batch = py.detach(|| self.inner.plan(&lengths)).map_err(to_py)?;
        to_json(&batch)
    }

    /// GPUs the plans cover (one pipeline stage's when pp > 1).
    #[getter]
    fn gpus(&self) -> u32 {
        self.inner.cluster().gpus()
    }

    #[getter]
    fn gpus_per_node(&self) -> u32 {
        self.inner.cluster().gpus_per_node
    }
}

/// A written plan, checked as every reader checks it, handed out one batch at a time.
#[pyclass(name = "NativePlanReader")]
struct NativePlanReader {
    plan: Plan,
    next: usize,
}

#[pymethods]
impl NativePlanReader {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        Ok(NativePlanReader { plan: Plan::read(&path).map_err(to_py)?, next: 0 })
    }

    /// The plan's strategy, trace, model, cluster and training setup (JSON text, without batches).
    fn header_json(&self) -> PyResult<String> {
        let mut value = serde_json::to_value(&self.plan).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            obj.remove("batches");
        }
        Ok(value.to_string())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> PyResult<Option<String>> {
        let Some(batch) = self.plan.batches.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        to_json(batch).map(Some)
    }
}

#[pymodule]
fn _hsap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativePlanner>()?;
    m.add_class::<NativePlanReader>()?;
    m.add("PLAN_FORMAT_VERSION", hsap::plan::PLAN_FORMAT_VERSION)?;
    Ok(())
}
