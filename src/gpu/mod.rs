//! Validation on GPUs (`hsap-tune validate`) and everything about it that can be proven without
//! one. docs/validate.md describes the command.
//!
//! - [`varlen`]: the metadata of packed buffers, derived from a plan's per-rank layouts.
//! - [`attention`]: the attention kernels' algorithm on the CPU, tile for tile.
//! - [`kernels`]: the CUDA C sources of `kernels/` and their NVRTC compilation.

pub mod attention;
pub mod kernels;
pub mod varlen;
