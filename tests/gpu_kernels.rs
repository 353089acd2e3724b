//! Every kernel in `kernels/` compiles to PTX with NVRTC, for the head dimensions models use.
//! NVRTC needs no GPU; without libnvrtc the test is skipped, unless HSAP_REQUIRE_NVRTC=1 (set by
//! scripts/test, so CI fails instead of skipping).

use hsap::gpu::attention::Tiling;
use hsap::gpu::kernels::{compile_ptx, nvrtc_present, ATTENTION, DEFAULT_ARCH, FILES, LINEAR_ATTENTION};

fn nvrtc_or_skip() -> bool {
    if nvrtc_present() {
        return true;
    }
    assert!(
        std::env::var("HSAP_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
        "HSAP_REQUIRE_NVRTC=1 but libnvrtc.so.12 is not on LD_LIBRARY_PATH (scripts/env.sh ensure_test_deps installs it)"
    );
    eprintln!("skipped: libnvrtc not found (source scripts/env.sh && ensure_test_deps)");
    false
}

/// The kernel names the executor loads, as `extern "C" __global__` definitions in the source.
fn defined_kernels(source: &str) -> Vec<String> {
    source
        .split("extern \"C\" __global__ void")
        .skip(1)
        .map(|rest| {
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix("__launch_bounds__(") {
                Some(bounded) => bounded.split_once(')').map_or(bounded, |(_, after)| after).trim_start(),
                None => rest,
            };
            rest.split('(').next().unwrap_or("").trim().to_string()
        })
        .collect()
}

#[test]
fn the_declared_kernel_lists_match_the_sources() {
    for file in FILES {
        let mut defined = defined_kernels(file.source);
        defined.sort();
        let mut declared: Vec<String> = file.functions.iter().map(|s| s.to_string()).collect();
        declared.sort();
        assert_eq!(defined, declared, "{}", file.path);
    }
    // And every .cu file in kernels/ is embedded.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| format!("kernels/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = FILES.iter().map(|f| f.path.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded);
}

#[test]
fn every_kernel_compiles_to_ptx() {
    if !nvrtc_or_skip() {
        return;
    }
    for file in FILES {
        // Only the attention kernels depend on the head dimension (linear attention's: the key
        // and value size of a head).
        let dims: &[u32] = if [ATTENTION.path, LINEAR_ATTENTION.path].contains(&file.path) { &[64, 128, 256] } else { &[128] };
        for &head_dim in dims {
            let ptx = compile_ptx(&file, head_dim, &Tiling::default(), DEFAULT_ARCH)
                .unwrap_or_else(|e| panic!("{e}"))
                .to_src();
            for f in file.functions {
                assert!(ptx.contains(&format!(".entry {f}(")), "{}: no entry for {f} in the PTX", file.path);
            }
        }
    }
}

#[test]
fn the_small_test_tiling_compiles_too() {
    if !nvrtc_or_skip() {
        return;
    }
    let tiling = Tiling {
        block_m: 8,
        block_n: 4,
        threads_per_row: 4,
    };
    let ptx = compile_ptx(&FILES[0], 16, &tiling, "compute_90").unwrap_or_else(|e| panic!("{e}")).to_src();
    assert!(ptx.contains(".target sm_90"), "{}", &ptx[..ptx.len().min(400)]);
}

#[test]
fn a_compile_error_names_the_file_and_shows_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = hsap::gpu::kernels::KernelFile {
        path: "kernels/broken.cu",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        functions: &["k"],
    };
    let err = compile_ptx(&broken, 64, &Tiling::default(), DEFAULT_ARCH).unwrap_err().to_string();
    assert!(err.contains("kernels/broken.cu") && err.contains("undefined_name"), "{err}");
}
