//! The shape plans hsap-tune hands the kernel harness (harness/hsap_kernels.py), kept as golden
//! files in tests/data/harness/ so that the harness's own tests (python/tests/
//! test_kernel_harness.py) read exactly what the binary writes: calibration's plan for llama3-8b
//! on a DGX H100 and validate's for tests/data/validate/plan.json. After an intended change,
//! `HSAP_UPDATE_GOLDEN=1 cargo nextest run --release --test harness_plans` and review the diff.

use hsap::cluster::Cluster;
use hsap::cost::AttentionKernel;
use hsap::gpu::cuda::MicrobenchPlan;
use hsap::gpu::harness::HarnessPlan;
use hsap::gpu::pricing::CostModelPricer;
use hsap::gpu::schedule::Schedule;
use hsap::model::ModelShape;
use hsap::plan::Plan;
use std::path::Path;

fn golden(name: &str, plan: &HarnessPlan) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/harness").join(name);
    let got = format!("{}\n", serde_json::to_string_pretty(plan).unwrap());
    if std::env::var_os("HSAP_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run with HSAP_UPDATE_GOLDEN=1 to create it", path.display()));
    assert!(got == want, "{} changed; if intended, rerun with HSAP_UPDATE_GOLDEN=1", path.display());
}

#[test]
fn calibration_plan() {
    let cluster = Cluster::resolve("dgx-h100").unwrap();
    let model = ModelShape::resolve("llama3-8b").unwrap();
    let plan = HarnessPlan::for_calibration(&MicrobenchPlan::for_cluster(&cluster, &model), &cluster, 10, 2, "calibrate --run --kernels torch (dgx-h100)");
    golden("calibration-plan.json", &plan);
}

#[test]
fn validate_plan() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/plan.json");
    let plan = Plan::read(&path).unwrap();
    let mut schedules = Schedule::for_plan(&plan, None, Default::default()).unwrap();
    let pricer = CostModelPricer::new(&plan).unwrap();
    for s in &mut schedules {
        s.price(&pricer);
    }
    let kernel = pricer.cost_model().attention.kernel;
    assert_eq!(kernel, AttentionKernel::Fa2, "the A100 plan prices FlashAttention-2");
    let (calls, notes) = HarnessPlan::for_schedules(&schedules, kernel, hsap::gpu::harness::KernelSet::Torch, 5, 1, "validate plan.json --kernels torch");
    assert!(notes.is_empty(), "{notes:?}");
    golden("validate-plan.json", &calls);
}
