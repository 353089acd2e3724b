//! `--kernels torch|cudnn|reference` on the real binary without a GPU: every path of
//! `calibrate --run` and `validate` fails with exit code 4 and a message naming what is missing
//! (the driver, Python, PyTorch, cuDNN, cuBLASLt), never a panic; and `scripts/gpu-check`
//! refuses bad arguments (exit 2) and passes hsap-tune's exit 4 on without leaving a folder.

use assert_cmd::cargo::cargo_bin_cmd;
use std::path::Path;

/// Runs hsap-tune with `args` (and HSAP_PYTHON set to `python`), expecting `code`; its stderr.
fn fails(args: &[&str], python: &str, code: i32) -> String {
    let assert = cargo_bin_cmd!("hsap-tune").args(args).env("HSAP_PYTHON", python).assert().code(code);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn no_driver() -> bool {
    if hsap::gpu::cuda::driver_present() {
        eprintln!("skipped: this machine has the NVIDIA driver");
        return false;
    }
    true
}

#[test]
fn calibrate_run_names_what_each_kernel_set_lacks() {
    if !no_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.toml");
    let out = out.to_str().unwrap();
    let run = |set: &str, python: &str| fails(&["calibrate", "--run", "--kernels", set, "--cluster", "dgx-h100", "--out", out], python, 4);

    let e = run("torch", "/nonexistent/python3");
    assert!(e.contains("calibrate --run --kernels torch cannot run here; missing: libcuda.so"), "{e}");
    assert!(e.contains("/nonexistent/python3 was not found") && e.contains("HSAP_PYTHON"), "{e}");
    // The default set is torch.
    let e = fails(&["calibrate", "--run", "--cluster", "dgx-h100", "--out", out], "/nonexistent/python3", 4);
    assert!(e.contains("--kernels torch cannot run here"), "{e}");

    let e = run("cudnn", "python3");
    assert!(e.contains("calibrate --run --kernels cudnn cannot run here; missing: libcuda.so"), "{e}");
    // And every library of the set this machine lacks, by name.
    for (library, present) in hsap::gpu::harness::cudnn_libraries() {
        assert_eq!(e.contains(library), !present, "{library}: {e}");
    }
    assert!(e.contains("cuDNN 9.1 or later"), "{e}");

    let e = run("reference", "python3");
    assert!(e.contains("libcuda.so") && e.contains("srun "), "{e}");
    assert!(!Path::new(out).exists(), "no profile is written");

    // --kernels belongs to --run.
    let e = fails(&["calibrate", "--kernels", "torch", "--cluster", "dgx-h100", "--out", out], "python3", 2);
    assert!(e.contains("--run"), "{e}");
}

fn plan(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("plan.json");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/plan.json"), &path).unwrap();
    path.display().to_string()
}

#[test]
fn validate_names_what_each_kernel_set_lacks() {
    if !no_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&dir);
    let out = dir.path().join("m.csv");
    let out = out.to_str().unwrap();
    let e = fails(&["validate", "--plan", &plan, "--kernels", "torch", "--out", out], "/nonexistent/python3", 4);
    assert!(e.contains("validate --kernels torch cannot run here; missing: libcuda.so") && e.contains("was not found"), "{e}");
    let e = fails(&["validate", "--plan", &plan, "--kernels", "cudnn", "--out", out], "python3", 4);
    assert!(e.contains("validate --kernels cudnn cannot run here") && e.contains("libcuda.so"), "{e}");
    // Without a choice: torch where it can run, else the reference kernels, which say how to launch.
    let e = fails(&["validate", "--plan", &plan, "--out", out], "/nonexistent/python3", 4);
    assert!(e.contains("libcuda.so") && e.contains("srun "), "{e}");
    assert!(!Path::new(out).exists(), "no measurements are written");
}

fn gpu_check(args: &[&str], code: i32) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check");
    let output = std::process::Command::new(&script)
        .args(args)
        .env("HSAP_TUNE", env!("CARGO_BIN_EXE_hsap-tune"))
        .env("HSAP_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    stderr
}

#[test]
fn gpu_check_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("check");
    let out = out.to_str().unwrap();
    assert!(gpu_check(&["--bogus"], 2).contains("unknown argument '--bogus'"));
    assert!(gpu_check(&["--repeats", "x", "--out", out], 2).contains("'x' is not a whole number"));
    assert!(gpu_check(&["--repeats", "0", "--out", out], 2).contains("--repeats must be at least 1"));
    assert!(gpu_check(&["--cluster", "dgx-b300", "--out", out], 2).contains("no cluster preset 'dgx-b300'"));
    assert!(gpu_check(&["--stack", "nope", "--out", out], 2).contains("no stack preset 'nope'"));
    assert!(gpu_check(&["--out"], 2).contains("--out needs a value"));
    assert!(!Path::new(out).exists());
}

#[test]
fn gpu_check_without_a_gpu_exits_4_and_leaves_no_folder() {
    if !no_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("check");
    let e = gpu_check(&["--out", out.to_str().unwrap()], 4);
    assert!(e.contains("calibrate --run --kernels torch cannot run here; missing: libcuda.so"), "{e}");
    assert!(!out.exists(), "a failed check leaves nothing that could pass for a result");
}
