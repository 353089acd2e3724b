//! The set-up script's checks (scripts/env.sh), run against fake directory trees through
//! `HSAP_SYSROOT`, so that they test the detection itself whatever this machine has installed.

use std::path::Path;
use std::process::Command;

/// Runs `missing_build_deps` with the given files present under a fresh fake root; returns the
/// packages it asks for.
fn missing_with(files: &[&str], libclang_path: Option<&str>) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    for f in files {
        let path = root.path().join(f.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/env.sh");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("source '{}' && missing_build_deps", script.display()))
        .env("HSAP_SYSROOT", root.path())
        .env("CARGO_TARGET_DIR", root.path().join("target"))
        .env("HSAP_CACHE", root.path().join("cache"))
        .env_remove("LIBCLANG_PATH")
        .env_remove("HSAP_FONT");
    if let Some(dir) = libclang_path {
        cmd.env("LIBCLANG_PATH", dir);
    }
    let out = cmd.output().expect("run bash");
    assert!(out.status.success(), "missing_build_deps failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

const HEADERS: &str = "/usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn asks_for_libclang(files: &[&str]) -> bool {
    missing_with(files, None).iter().any(|p| p == "libclang-dev")
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    // What Debian's llvm packages leave on a fresh CI image: bindgen cannot load either file.
    let image = ["/usr/lib/llvm-14/lib/libclang-cpp.so.14", "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", HEADERS, FONT];
    assert!(asks_for_libclang(&image));
}

#[test]
fn libclang_dev_layouts_are_found() {
    // libclang-14-dev: /usr/lib/llvm-14/lib/libclang.so and the multiarch libclang-14.so.
    assert!(!asks_for_libclang(&["/usr/lib/llvm-14/lib/libclang.so", HEADERS, FONT]));
    assert!(!asks_for_libclang(&["/usr/lib/x86_64-linux-gnu/libclang-14.so", HEADERS, FONT]));
}

#[test]
fn libclang_without_its_headers_is_not_enough() {
    // The runtime package alone, or a library without clang's builtin headers, fails in bindgen.
    assert!(asks_for_libclang(&["/usr/lib/llvm-14/lib/libclang.so.1", HEADERS, FONT]));
    assert!(asks_for_libclang(&["/usr/lib/llvm-14/lib/libclang.so", FONT]));
}

#[test]
fn libclang_path_is_honoured() {
    let files = ["/opt/llvm/lib/libclang.so", HEADERS, FONT];
    assert!(!missing_with(&files, Some("/opt/llvm/lib")).iter().any(|p| p == "libclang-dev"));
    assert!(asks_for_libclang(&files));
}

#[test]
fn the_font_the_report_reads_is_checked() {
    let with = missing_with(&["/usr/lib/llvm-14/lib/libclang.so", HEADERS, FONT], None);
    assert!(!with.iter().any(|p| p == "fonts-dejavu-core"));
    let other_font = missing_with(&["/usr/lib/llvm-14/lib/libclang.so", HEADERS, "/usr/share/fonts/TTF/DejaVuSans.ttf"], None);
    assert!(other_font.iter().any(|p| p == "fonts-dejavu-core"));
}
