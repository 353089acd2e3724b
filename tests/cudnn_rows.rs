//! `--kernels cudnn`'s measuring loop (`gpu::cudnn::measure`) with a stand-in timer in place of
//! the GPU: which calls it times for calibration and for a plan's program, the rows it writes
//! (kinds, kernel names, libraries, shapes, FLOPs, predictions), the calls it skips and why, and
//! its rows through `calibrate` on the real binary into a profile that prices cuDNN attention.

use assert_cmd::cargo::cargo_bin_cmd;
use hsap::cluster::Cluster;
use hsap::cost::AttentionKernel;
use hsap::formats::measurements::{self, MeasuredKind, Measurement};
use hsap::gpu::cudnn::{self, Timer};
use hsap::gpu::harness::{AttentionCall, GemmCall, HarnessPlan, KernelSet};

const DEVICE: &str = "NVIDIA H100 80GB HBM3 (stand-in)";

/// Times every call as its FLOPs at 400 TFLOP/s (attention) or 600 (GEMMs), repeats apart by
/// 1%; takes no FP8 GEMM (as on an Ampere GPU).
#[derive(Default)]
struct StandIn {
    attention_calls: usize,
}

fn samples(seconds: f64, repeats: u32) -> Vec<f64> {
    (0..repeats).map(|i| seconds * (1.0 + 0.01 * f64::from(i))).collect()
}

impl Timer for StandIn {
    fn device(&self) -> String {
        DEVICE.into()
    }
    fn versions(&self) -> [(String, String); 2] {
        [("cudnn".into(), "9.28.0".into()), ("cublaslt".into(), "130000".into())]
    }
    fn gemm_unsupported(&self, call: &GemmCall) -> Option<String> {
        (call.dtype == "fp8").then(|| "the stand-in takes no FP8".to_string())
    }
    fn attention(&mut self, call: &AttentionCall, _warmup: u32, repeats: u32) -> hsap::error::Result<(Option<Vec<f64>>, Option<Vec<f64>>)> {
        self.attention_calls += 1;
        let t = |pass| samples(call.flops(pass) / 400e12, repeats);
        Ok((call.wants("fwd").then(|| t(hsap::cost::Pass::Fwd)), call.wants("bwd").then(|| t(hsap::cost::Pass::Bwd))))
    }
    fn gemm(&mut self, call: &GemmCall, _warmup: u32, repeats: u32) -> hsap::error::Result<Vec<f64>> {
        Ok(samples(call.flops() / 600e12, repeats))
    }
}

fn calibration_plan() -> HarnessPlan {
    let cluster = Cluster::resolve("dgx-h100").unwrap();
    let model = hsap::model::ModelShape::resolve("llama3-8b").unwrap();
    let mb = hsap::gpu::cuda::MicrobenchPlan::for_cluster(&cluster, &model);
    HarnessPlan::for_calibration(&mb, &cluster, 3, 1, "calibrate --run --kernels cudnn (dgx-h100)")
}

#[test]
fn calibration_rows_name_cudnn_and_cublaslt_with_their_work_and_predictions() {
    let mut plan = calibration_plan();
    // One call cuDNN does not take: skipped and named, the run goes on.
    plan.attention.push(AttentionCall { head_dim: 512, ..plan.attention[0].clone() });
    let (mut timer, mut log) = (StandIn::default(), Vec::new());
    let rows = cudnn::measure(&plan, &mut timer, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    let timed = plan.attention.len() - 1;
    assert_eq!(timer.attention_calls, timed);
    assert!(log.contains("skipped: cudnn_sdpa") && log.contains("head dim 512"), "{log}");
    assert!(log.contains(&format!("[1/{}] cudnn_sdpa seqlen=1024", plan.attention.len() + plan.gemms.len())), "{log}");
    let of = |kind: MeasuredKind| rows.iter().filter(move |r| r.kind == kind);
    assert_eq!((of(MeasuredKind::AttentionFwd).count(), of(MeasuredKind::AttentionBwd).count()), (timed, timed));
    for r in of(MeasuredKind::AttentionFwd).chain(of(MeasuredKind::AttentionBwd)) {
        assert_eq!((r.kernel.as_str(), r.library.as_str(), r.version.as_str(), r.dtype.as_str(), r.device.as_str()), ("cudnn_sdpa", "cudnn", "9.28.0", "bf16", DEVICE));
        assert_eq!(AttentionKernel::of_measured(&r.kernel), Some(AttentionKernel::Cudnn));
        // The median of 3 repeats is the middle one: FLOPs / 400 TFLOP/s x 1.01.
        assert!((r.flops.unwrap() / r.time_s / 400e12 - 1.0 / 1.01).abs() < 1e-9);
        assert_eq!(r.repeats, 3);
        assert!(r.source.starts_with("calibrate --run --kernels cudnn"));
    }
    // Each call's prediction is the cost model's cuDNN one on this GPU (H100 has cuDNN tables).
    let call = &plan.attention[0];
    let (fwd, bwd) = call.predicted_by_kernel["cudnn_sdpa"];
    let first = |kind| of(kind).find(|r| r.shape == call.shape()).unwrap().predicted_s;
    assert_eq!((first(MeasuredKind::AttentionFwd), first(MeasuredKind::AttentionBwd)), (Some(fwd), Some(bwd)));
    // GEMMs: bf16 timed by cuBLASLt, FP8 refused by this device and named.
    let gemms: Vec<&Measurement> = of(MeasuredKind::Gemm).collect();
    assert_eq!(gemms.len(), plan.gemms.iter().filter(|g| g.dtype == "bf16").count());
    assert!(gemms.iter().all(|g| g.kernel == "cublaslt_matmul" && g.library == "cublaslt" && g.dtype == "bf16" && g.predicted_s.is_some()));
    assert!(log.contains("skipped: cublaslt_matmul") && log.contains("the stand-in takes no FP8"), "{log}");
}

#[test]
fn the_rows_go_through_calibrate_into_a_cudnn_curve() {
    let (mut timer, mut log) = (StandIn::default(), Vec::new());
    let rows = cudnn::measure(&calibration_plan(), &mut timer, &mut log).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("microbenchmarks.csv");
    measurements::write(&csv, &rows).unwrap();
    let profile = dir.path().join("profile.toml");
    let out = cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--measurements", csv.to_str().unwrap(), "--cluster", "dgx-h100", "--out", profile.to_str().unwrap()])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(!stderr.contains("left out of the profile"), "{stderr}");
    let profile = std::fs::read_to_string(&profile).unwrap();
    for needle in ["kernel = \"cudnn_sdpa\"", "library = \"cudnn 9.28.0\"", "kernel = \"cublaslt_matmul\"", "varlen = true", DEVICE] {
        assert!(profile.contains(needle), "{needle} missing from the profile:\n{profile}");
    }
}

#[test]
fn validate_times_attention_with_cudnn_only_where_the_stack_prices_cudnn() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/plan.json");
    let plan = hsap::plan::Plan::read(&path).unwrap();
    let mut schedules = hsap::gpu::schedule::Schedule::for_plan(&plan, None, hsap::gpu::attention::Tiling::default()).unwrap();
    let pricer = hsap::gpu::pricing::CostModelPricer::new(&plan).unwrap();
    for s in &mut schedules {
        s.price(&pricer);
    }
    for (kernel, timed) in [(AttentionKernel::Cudnn, true), (AttentionKernel::Fa2, false)] {
        let (calls, _) = HarnessPlan::for_schedules(&schedules, kernel, KernelSet::Cudnn, 3, 1, "validate plan.json --kernels cudnn");
        assert_eq!(calls.kernels.as_ref().unwrap().last().map(String::as_str), Some("cublaslt_matmul"));
        let (mut timer, mut log) = (StandIn::default(), Vec::new());
        let rows = cudnn::measure(&calls, &mut timer, &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        let attention = rows.iter().filter(|r| r.kind != MeasuredKind::Gemm).count();
        // validate's calls are each one pass, predicted by the schedule.
        assert_eq!(attention, if timed { calls.attention.len() } else { 0 }, "{log}");
        assert_eq!(log.contains("not timed: attention"), !timed, "{log}");
        assert!(rows.iter().all(|r| r.predicted_s.is_some() && r.source.contains("calls=")));
        assert_eq!(rows.iter().filter(|r| r.kind == MeasuredKind::Gemm).count(), calls.gemms.len());
    }
}
