//! Validation on GPUs (`hsap-tune validate`) and everything about it that can be proven without
//! one. docs/validate.md describes the command.
//!
//! - [`varlen`]: the metadata of packed buffers, derived from a plan's per-rank layouts.
//! - [`attention`]: the attention kernels' algorithm on the CPU, tile for tile.
//! - [`linear_attention`]: the linear-attention chunk kernel's algorithm on the CPU.
//! - [`kernels`]: the CUDA C sources of `kernels/` and their NVRTC compilation.
//! - [`schedule`]: each rank's ordered ops (kernels, collectives, streams, waits).
//! - [`program`]: a rank's blocks laid out from its group's workload, and priced back.
//! - [`launch`]: rank detection (Slurm, Open MPI, torchrun) and the TCP rendezvous.
//! - [`cuda`]: the CUDA executor and the calibration microbenchmarks.
//! - [`cudnn`]: `--kernels cudnn`: cuDNN's fused attention (graph API) and cuBLASLt, timed
//!   without Python.
//! - [`harness`]: the kernel sets (`--kernels torch|cudnn|reference`) and the production-kernel
//!   harness (harness/hsap_kernels.py) run with PyTorch.
//! - [`reference`]: the CPU reference executor, a group's attention schedule with real numbers
//!   (and [`reference::linear`]: the LASP schemes' linear-attention shards and state exchanges).
//! - [`report`]: measured against predicted, as a table and a plot.

pub mod attention;
pub mod cuda;
pub mod cudnn;
pub mod harness;
pub mod kernels;
pub mod launch;
pub mod linear_attention;
pub mod reference;
pub mod report;
pub mod pricing;
pub mod program;
pub mod schedule;
pub mod varlen;
