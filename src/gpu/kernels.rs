//! The CUDA C kernels of `kernels/`, embedded in the binary and compiled at run time by NVRTC.
//! NVRTC needs no GPU, so the tests compile every kernel here too.

use super::attention::Tiling;
use crate::error::{Error, Result};

/// One `.cu` file and the kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    pub path: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

pub const ATTENTION: KernelFile = KernelFile {
    path: "kernels/attention.cu",
    source: include_str!("../../kernels/attention.cu"),
    functions: &["attn_fwd_varlen", "attn_bwd_preprocess", "attn_bwd_dq", "attn_bwd_dkdv"],
};

pub const ELEMENTWISE: KernelFile = KernelFile {
    path: "kernels/elementwise.cu",
    source: include_str!("../../kernels/elementwise.cu"),
    functions: &["fill_random_bf16", "fill_random_f32", "cast_f32_bf16", "add_f32", "add_heads_bf16"],
};

/// Linear attention's chunk kernel (intra-chunk block, inter-chunk product, state update; varlen).
/// Compiled and checked to PTX, not yet launched: the validator's schedules have no
/// linear-attention ops (docs/validate.md).
pub const LINEAR_ATTENTION: KernelFile = KernelFile {
    path: "kernels/linear_attention.cu",
    source: include_str!("../../kernels/linear_attention.cu"),
    functions: &["linear_attn_fwd_varlen"],
};

pub const FILES: [KernelFile; 3] = [ATTENTION, ELEMENTWISE, LINEAR_ATTENTION];

/// The virtual architecture kernels are compiled for when no GPU says otherwise: Ampere, the
/// oldest generation the cluster presets have.
pub const DEFAULT_ARCH: &str = "compute_80";

/// Whether libnvrtc can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `file` to PTX for `head_dim` with the tiles of `tiling` and a virtual architecture
/// such as `compute_80`.
pub fn compile_ptx(file: &KernelFile, head_dim: u32, tiling: &Tiling, arch: &'static str) -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_present() {
        return Err(Error::Gpu {
            what: "libnvrtc.so (CUDA's run-time compiler) is not on the library path".into(),
            hint: "install the CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12` and add its lib directory to LD_LIBRARY_PATH".into(),
        });
    }
    let options = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("-DHEAD_DIM={head_dim}"),
            format!("-DBLOCK_M={}", tiling.block_m),
            format!("-DBLOCK_N={}", tiling.block_n),
            format!("-DTHREADS_PER_ROW={}", tiling.threads_per_row),
            "-std=c++17".into(),
        ],
        arch: Some(arch),
        name: Some(file.path.rsplit('/').next().unwrap_or(file.path).to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(file.source, options).map_err(|e| Error::Gpu {
        what: format!("NVRTC could not compile {} (head_dim {head_dim}, {arch}): {}", file.path, compile_log(&e)),
        hint: "the kernel sources are part of hsap; report this with the NVRTC version".into(),
    })
}

fn compile_log(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().trim().to_string(),
        other => format!("{other:?}"),
    }
}
