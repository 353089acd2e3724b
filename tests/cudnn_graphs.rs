//! `--kernels cudnn`'s attention graphs (src/gpu/cudnn/sdpa.rs) handed to a real cuDNN without a
//! GPU: every tensor, operation and the operation graph of the forward and backward passes must
//! finalize, which is where cuDNN checks each operation's shapes, strides and types. (Engines,
//! plans and execution need a GPU; `scripts/gpu-check` runs them where one is lent.)
//!
//! cuDNN is the nvidia-cudnn-cu12 wheel's (scripts/test fetches it and names its lib folder in
//! HSAP_CUDNN_LIB_DIR; with HSAP_REQUIRE_CUDNN=1 the test fails rather than skips without it).
//! Its engine library links the driver's libcuda.so.1, which a machine without a GPU lacks: the
//! checks run in a child process whose LD_LIBRARY_PATH also holds a stand-in libcuda.so.1,
//! compiled here, that defines the six driver functions cuDNN's libraries link and fails each
//! call (none is called before a handle exists). The stand-in never reaches this process, so
//! nothing else here mistakes it for a driver.

use hsap::gpu::cudnn::{graph, sdpa};
use hsap::gpu::harness::AttentionCall;
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD: &str = "HSAP_CUDNN_GRAPH_CHILD";

/// The driver functions cuDNN 9's graph and runtime-compiled engine libraries link
/// (`nm -D --undefined-only libcudnn*.so.9 | grep ' cu[A-Z]'`).
const DRIVER_FUNCTIONS: [&str; 6] =
    ["cuGetErrorString", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeIm2col", "cuTensorMapEncodeTiled"];

fn lib_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HSAP_CUDNN_LIB_DIR").map(PathBuf::from).filter(|d| d.join("libcudnn.so.9").exists());
    if dir.is_none() {
        assert!(std::env::var("HSAP_REQUIRE_CUDNN").as_deref() != Ok("1"), "HSAP_REQUIRE_CUDNN=1 but HSAP_CUDNN_LIB_DIR names no folder with libcudnn.so.9");
        eprintln!("skipped: HSAP_CUDNN_LIB_DIR names no folder with libcudnn.so.9 (scripts/test sets it)");
    }
    dir
}

/// A libcuda.so.1 in `dir` whose functions return CUDA_ERROR_NO_DEVICE (100).
fn stand_in_driver(dir: &Path) {
    let source: String = DRIVER_FUNCTIONS.iter().map(|f| format!("int {f}(void) {{ return 100; }}\n")).collect();
    std::fs::write(dir.join("driver.c"), source).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(dir.join("driver.c"))
        .status()
        .expect("a C compiler (cc) builds the stand-in driver");
    assert!(status.success());
}

/// Runs `test` of this file in a child process that sees cuDNN (and a stand-in driver where
/// there is no real one); true in the child, which then does the checks.
fn in_child(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let Some(cudnn) = lib_dir() else { return false };
    let scratch = tempfile::tempdir().unwrap();
    let mut path = vec![cudnn];
    if !hsap::gpu::cuda::driver_present() {
        stand_in_driver(scratch.path());
        path.push(scratch.path().to_path_buf());
    }
    path.extend(std::env::var_os("LD_LIBRARY_PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("LD_LIBRARY_PATH", std::env::join_paths(path).unwrap())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "the child process failed:\n{text}");
    eprintln!("{text}");
    false
}

fn call(q: &[u32], k: &[u32], heads: u32, kv_heads: u32, head_dim: u32, causal: bool) -> AttentionCall {
    AttentionCall {
        seqlens_q: q.to_vec(),
        seqlens_k: k.to_vec(),
        heads,
        kv_heads,
        head_dim,
        causal,
        varlen: q.len() > 1,
        pairs: None,
        predicted_fwd_s: None,
        predicted_bwd_s: None,
        predicted_by_kernel: Default::default(),
        tag: String::new(),
        passes: Vec::new(),
    }
}

#[test]
fn attention_graphs_finalize_in_cudnn() {
    if !in_child("attention_graphs_finalize_in_cudnn") {
        return;
    }
    let version = hsap::gpu::cudnn::cudnn_version();
    eprintln!("cuDNN {version}");
    assert!(version >= hsap::gpu::cudnn::MIN_CUDNN_VERSION);
    // Calibration's calls (dense causal and full, equal packed documents, GQA) and validate's
    // (unequal documents, a causal document with more keys than queries: a zigzag ring step).
    let calls = [
        call(&[4096], &[4096], 32, 8, 128, true),
        call(&[4096], &[4096], 32, 32, 128, false),
        call(&[1024; 4], &[1024; 4], 16, 4, 64, true),
        call(&[300, 1000, 77], &[300, 1000, 77], 8, 8, 128, true),
        call(&[512, 256], &[1024, 256], 8, 2, 128, true),
        call(&[512], &[2048], 16, 16, 64, true),
        call(&[512, 256], &[700, 90], 8, 8, 256, false),
    ];
    for c in &calls {
        let shape = sdpa::Shape::of(c).unwrap();
        for (pass, built) in [("forward", sdpa::forward(shape)), ("backward", sdpa::backward(shape))] {
            let built = built.unwrap_or_else(|e| panic!("{pass} {shape:?}: {e}"));
            built.graph.finalize(None).unwrap_or_else(|e| panic!("{pass} {shape:?}: the operation graph: {e}"));
            // Every tensor in memory has its role, and each role once.
            let io: Vec<i64> = built.graph.io_tensors().map(|(_, s)| s.uid).collect();
            let mut named: Vec<i64> = built.tensors.iter().map(|&(_, t)| built.graph.spec(t).uid).collect();
            named.sort();
            assert_eq!(named, io, "{pass} {shape:?}");
            let mut roles: Vec<String> = built.tensors.iter().map(|(r, _)| format!("{r:?}")).collect();
            roles.dedup();
            assert_eq!(roles.len(), built.tensors.len());
        }
    }
    // The check can fail: cuDNN refuses a matmul whose inner dimensions differ.
    let mut g = graph::Graph::default();
    let bf16 = graph::DataType::CUDNN_DATA_BFLOAT16;
    let a = g.io(&[1, 1, 64, 32], &graph::packed(&[1, 1, 64, 32]), bf16).unwrap();
    let b = g.io(&[1, 1, 48, 64], &graph::packed(&[1, 1, 48, 64]), bf16).unwrap();
    let c = g.io(&[1, 1, 64, 64], &graph::packed(&[1, 1, 64, 64]), graph::DataType::CUDNN_DATA_FLOAT).unwrap();
    let refused = g.matmul("mismatched", a, b, c, [None, None, None], None).and_then(|()| g.finalize(None).map(|_| ()));
    let e = refused.expect_err("a 64x32 by 48x64 matmul").to_string();
    eprintln!("refused as it should be: {e}");
    assert!(e.contains("cuDNN") && (e.contains("mismatched") || e.contains("operation graph")), "{e}");
}

#[test]
fn calls_cudnn_does_not_take_say_why() {
    let why = |c: &AttentionCall| sdpa::Shape::of(c).unwrap_err();
    assert!(why(&call(&[128], &[128], 8, 8, 512, true)).contains("head dim 512"));
    assert!(why(&call(&[128], &[128], 8, 3, 128, true)).contains("8 query heads over 3"));
    assert!(why(&call(&[128], &[64], 8, 8, 128, true)).contains("fewer keys than queries"));
    let ring_step = AttentionCall { pairs: Some(10), ..call(&[128], &[128], 8, 8, 128, true) };
    assert!(why(&ring_step).contains("neither causal nor full"));
    // Equal documents need no lengths; unequal ones are padded, bottom-right where causal
    // documents have more keys than queries.
    let s = sdpa::Shape::of(&call(&[1024; 4], &[1024; 4], 16, 4, 64, true)).unwrap();
    assert_eq!((s.b, s.h, s.hk, s.s_q, s.s_kv, s.d, s.padded, s.bottom_right), (4, 16, 4, 1024, 1024, 64, false, false));
    let s = sdpa::Shape::of(&call(&[512, 256], &[1024, 256], 8, 2, 128, true)).unwrap();
    assert_eq!((s.s_q, s.s_kv, s.padded, s.bottom_right), (512, 1024, true, true));
    // One dense document with more keys than queries (a ring step): its diagonal needs the
    // lengths, so they are passed (its graphs are among those cuDNN finalizes above).
    let s = sdpa::Shape::of(&call(&[512], &[2048], 8, 8, 128, true)).unwrap();
    assert_eq!((s.b, s.padded, s.bottom_right), (1, true, true));
}
