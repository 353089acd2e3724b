//! `hsap-tune calibrate` on the real binary: real logs give a profile that `Cluster::resolve`
//! reads back; bad inputs exit non-zero with a message naming the file.

use assert_cmd::cargo::cargo_bin_cmd;
use hsap::cluster::{Cluster, Collective, LinkLevel};
use predicates::prelude::*;
use std::path::Path;

const LOGS: &str = "tests/data/nccl-tests";

fn log(file: &str) -> String {
    Path::new(LOGS).join(file).display().to_string()
}

#[test]
fn calibrating_on_real_logs_writes_a_profile_every_command_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a3mega.toml");
    let report = dir.path().join("report");
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--nccl-tests"])
        .arg(log("01_h100_a3mega_2node_allreduce.txt"))
        .arg(log("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt"))
        .args(["--op", "all_gather", "--cluster", "dgx-h100", "--out"])
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .assert()
        .success()
        .stdout(predicate::str::contains("Collective fits"))
        .stdout(predicate::str::contains("all_reduce  inter     16      2     31"))
        .stdout(predicate::str::contains("Per-point error"))
        .stderr(predicate::str::contains("2 nodes assumed"));

    let profile = Cluster::resolve(out.to_str().unwrap()).unwrap();
    let cal = profile.calibration.unwrap();
    assert_eq!(cal.collectives.len(), 2);
    let ar = cal.collective_fit(Collective::AllReduce, LinkLevel::Inter, 16).unwrap();
    // 8 GiB took 47535 us in the log.
    let t = ar.time_s(8_589_934_592.0, 16);
    assert!((t / 47535e-6 - 1.0).abs() < 0.05, "{t}");

    let csv = std::fs::read_to_string(report.join("fit_points.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert_eq!(header, "op,level,ranks,bytes,measured_s,fitted_s,rel_error,held_out,holdout_predicted_s,holdout_rel_error,nodes,source");
    assert_eq!(csv.lines().count(), 1 + 31 + 11);
    let summary = std::fs::read_to_string(report.join("fit_summary.md")).unwrap();
    assert!(summary.starts_with("# Calibration fit report"), "{summary}");
}

#[test]
fn every_real_log_goes_through_the_binary() {
    // All logs at once, from five different clusters: the command works and says that the
    // pooled all-reduce runs disagree.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.toml");
    let mut files: Vec<String> = std::fs::read_dir(LOGS)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 9);
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--nccl-tests"])
        .args(&files)
        .args(["--ranks", "128", "--op", "all_gather", "--cluster", "dgx-a100-80g", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("disagree"))
        .stdout(predicate::str::contains("skipped: 4 sizes"));
    let profile = Cluster::resolve(out.to_str().unwrap()).unwrap();
    // all_gather inter 16, all_reduce intra 8, inter 16 and inter 128, send_recv intra 8 and inter 8.
    assert_eq!(profile.calibration.unwrap().collectives.len(), 6);
    assert!(dir.path().join("all-fit").join("fit_summary.md").exists());
}

fn fails_naming(args: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.toml");
    let assert = cargo_bin_cmd!("hsap-tune").args(args).arg("--out").arg(&out).assert().failure().code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    for n in needles {
        assert!(stderr.contains(n), "missing '{n}' in: {stderr}");
    }
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(!out.exists(), "no profile is written on error");
}

#[test]
fn a_missing_log_is_named() {
    fails_naming(
        &["calibrate", "--nccl-tests", "tests/data/nccl-tests/no_such.txt", "--cluster", "dgx-h100"],
        &["error: tests/data/nccl-tests/no_such.txt"],
    );
}

#[test]
fn a_file_that_is_not_a_log_is_named() {
    fails_naming(&["calibrate", "--nccl-tests", "Cargo.toml", "--cluster", "dgx-h100"], &["error: Cargo.toml: not an nccl-tests log"]);
}

#[test]
fn an_empty_table_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.log");
    std::fs::write(
        &path,
        "# nThread 1 nGpus 8 minBytes 8 maxBytes 1024 step: 2(factor) warmup iters: 5 iters: 20\n#\n\
         #       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong\n",
    )
    .unwrap();
    let p = path.display().to_string();
    fails_naming(
        &["calibrate", "--nccl-tests", &p, "--cluster", "dgx-h100"],
        &[&format!("{p}:3: the result table has a column header but no rows")],
    );
}

#[test]
fn an_ambiguous_log_asks_for_the_op() {
    let l = log("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt");
    fails_naming(&["calibrate", "--nccl-tests", &l, "--cluster", "dgx-h100"], &[&format!("{l}:4: cannot tell which collective"), "--op"]);
    fails_naming(&["calibrate", "--nccl-tests", &l, "--op", "allreduce", "--cluster", "dgx-h100"], &["--op allreduce: not an nccl-tests test"]);
}

#[test]
fn a_log_without_its_rank_count_asks_for_it() {
    let l = log("02_a100_coreweave_16node_allreduce_oldfmt.txt");
    fails_naming(&["calibrate", "--nccl-tests", &l, "--cluster", "dgx-a100-80g"], &[&format!("{l}:1:"), "between 126 and 128", "--ranks"]);
}

#[test]
fn bad_usage_is_refused() {
    fails_naming(&["calibrate", "--cluster", "dgx-h100"], &["nothing to calibrate from"]);
    let l = log("01_h100_a3mega_2node_allreduce.txt");
    fails_naming(&["calibrate", "--nccl-tests", &l, "--cluster", "dgx-b300"], &["unknown cluster 'dgx-b300'"]);
    fails_naming(&["calibrate", "--nccl-tests", &l, "--cluster", "dgx-h100", "--nodes", "0"], &["--nodes must be at least 1"]);
    let bad_csv = "tests/data/nccl-tests/README.md";
    fails_naming(&["calibrate", "--measurements", bad_csv, "--cluster", "dgx-h100"], &["README.md:1: no `kind` column"]);
}

#[test]
fn run_without_a_gpu_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.toml");
    let assert = cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--run", "--cluster", "dgx-a100-80g", "--out"])
        .arg(&out)
        .assert()
        .code(4);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("libcuda.so") && stderr.contains("calibrate --run"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "no profile is written");
}

/// A calibrated profile is a cluster every command takes: `tune` writes its measured points next
/// to the plans and the report draws predicted against measured; `predict` prices with it.
#[test]
fn tune_predict_and_report_accept_the_calibrated_profile() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("a100.toml");
    // Two DGX A100 with 8 HDR NICs each: the dgx-a100-80g preset's links.
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nccl-tests/18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt");
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--cluster", "dgx-a100-80g", "--out"])
        .arg(&profile)
        .arg("--nccl-tests")
        .arg(&log)
        .assert()
        .success();
    let run = dir.path().join("run");
    cargo_bin_cmd!("hsap-tune")
        .args(["--limit-batches", "1", "--baselines", "none", "--cluster"])
        .arg(&profile)
        .arg("--out")
        .arg(&run)
        .assert()
        .success();
    let points = std::fs::read_to_string(run.join("fit_points.csv")).unwrap();
    assert!(points.lines().count() > 20, "the profile's measured all-reduce points:\n{points}");
    for figure in ["predicted_vs_measured.svg", "calibration_fit.svg"] {
        assert!(run.join("report").join(figure).is_file(), "{figure}");
    }
    let html = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(html.contains("Predicted against measured"), "the report shows predicted against measured");

    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        format!(
            "scope = \"step\"\n[model]\npreset = \"gpt-7b\"\n[cluster]\npreset = {:?}\nnodes = 2\n[strategy]\nscheme = \"ulysses\"\nulysses = 16\n[batch]\nsequences = [65536]\n",
            profile.display().to_string()
        ),
    )
    .unwrap();
    cargo_bin_cmd!("hsap-tune").args(["predict", "--json", "--scenario"]).arg(&scenario).assert().success();
}

const SLINGSHOT: &str = "tests/data/calibrate/slingshot_2x2_allreduce_srun_label_synthetic.txt";

#[test]
fn a_fit_whose_sizes_never_reach_the_bandwidth_regime_is_refused() {
    // 512 KiB .. 1.5 MiB on 4 ranks takes about 220 us at every size: the latency is all that was
    // measured, and the fit's bus bandwidth would be whatever makes the bandwidth term vanish.
    fails_naming(
        &["calibrate", "--nccl-tests", SLINGSHOT, "--cluster", "a100-40g-ib400"],
        &[
            "all_reduce inter on 4 ranks",
            "slingshot_2x2_allreduce_srun_label_synthetic.txt run 1",
            "the sizes measured (512 KiB .. 1.5 MiB) do not reach the bandwidth regime",
            "all_reduce_perf -b 8 -e 8G",
        ],
    );
}

#[test]
fn a_fit_above_the_line_rate_is_refused() {
    // 483 GB/s of NVLS all-reduce on 8 H100s is more than 8 PCIe GPUs can move: 2 x 7/8 x 31 GB/s.
    fails_naming(
        &["calibrate", "--nccl-tests", &log("16_h100_p5_1node_8gpu_allreduce_awsbatch_tagged_excerpt.txt"), "--cluster", "pcie-a100"],
        &["all_reduce intra on 8 ranks", "exceeds the 54.2 GB/s", "'pcie-a100' (intra.line_rate_gb_per_s 31 GB/s per GPU)", "--cluster"],
    );
}

#[test]
fn a_log_from_other_gpus_or_nodes_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--nccl-tests"])
        .arg(log("07_h100_2node_4gpu_roce_sendrecv_ncclinfo_linearstep.txt"))
        .arg(log("15_h200_2node_allreduce_slurm_g8.txt"))
        .args(["--cluster", "dgx-h100", "--out"])
        .arg(dir.path().join("p.toml"))
        .assert()
        .success()
        .stderr(predicate::str::contains("the log has 4 GPUs per node (device lines), the base cluster 'dgx-h100' 8"))
        .stderr(predicate::str::contains("the log ran on NVIDIA H200, the base cluster has H100-SXM5-80GB"));
}

#[test]
fn a_log_behind_srun_label_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read_to_string(log("15_h200_2node_allreduce_slurm_g8.txt")).unwrap();
    let labelled = dir.path().join("srun.log");
    std::fs::write(&labelled, plain.lines().map(|l| format!("0: {l}\n")).collect::<String>()).unwrap();
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--nccl-tests"])
        .arg(&labelled)
        .args(["--cluster", "dgx-h100", "--out"])
        .arg(dir.path().join("p.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains("all_reduce  inter     16      2"));
}

#[test]
fn a_hand_written_profile_that_breaks_physics_is_refused_where_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let preset = std::fs::read_to_string("models/clusters/a100-40g-ib400.toml").unwrap();
    let fit = |latency: &str, busbw: &str| {
        format!(
            "{preset}\n[[calibration.collectives]]\nop = \"all_reduce\"\nlevel = \"inter\"\nranks = 4\nnodes = 2\nlatency_us = {latency}\nbusbw_gb_per_s = {busbw}\nsaturation_bytes = 0.0\nprovenance = \"by hand\"\n"
        )
    };
    for (latency, busbw, needle) in [
        ("220.0", "1500000000.0", "bus bandwidth 1500000000 GB/s exceeds the 75.0 GB/s that the links of 'a100-40g-ib400' (2 NICs per node x 25 GB/s, inter.nic_line_rate_gb_per_s) allow"),
        ("-5.0", "40.0", "latency -5 us must be a non-negative number"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, fit(latency, busbw)).unwrap();
        cargo_bin_cmd!("hsap-tune")
            .args(["--trace", "tests/data/small_trace.csv", "--baselines", "none", "--cluster"])
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("run"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains("calibration.collectives[0] (all_reduce inter on 4 ranks)"))
            .stderr(predicate::str::contains(needle))
            .stderr(predicate::str::contains("hint: recalibrate"));
    }
}

/// An all-reduce log measures the network: every collective that crosses it is priced by that
/// measurement, ZeRO-3's all-gathers and reduce-scatters included, and `predict` says so.
#[test]
fn an_all_reduce_fit_prices_every_collective_over_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("a3mega.toml");
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--nccl-tests"])
        .arg(log("01_h100_a3mega_2node_allreduce.txt"))
        .args(["--cluster", "dgx-h100", "--out"])
        .arg(&profile)
        .assert()
        .success();
    let scenario = |cluster: &str| {
        let path = dir.path().join(format!("s{}.toml", cluster.len()));
        std::fs::write(
            &path,
            format!(
                "scope = \"step\"\n[model]\npreset = \"llama3-8b\"\n[cluster]\npreset = {cluster:?}\nnodes = 2\n[strategy]\nscheme = \"usp\"\nulysses = 8\nring = 2\nzero = 3\n[batch]\nsequences = [65536]\n"
            ),
        )
        .unwrap();
        path
    };
    let predict = |path: &Path| -> serde_json::Value {
        let out = cargo_bin_cmd!("hsap-tune").args(["predict", "--json", "--scenario"]).arg(path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let preset = predict(&scenario("dgx-h100"));
    let calibrated = predict(&scenario(profile.to_str().unwrap()));
    let gathers = |v: &serde_json::Value| {
        v["breakdown"]["collectives"].as_array().unwrap().iter().find(|c| c["collective"] == "all_gather").unwrap()["total_s"].as_f64().unwrap()
    };
    // TCPXO's measured 343 GB/s against the preset's 8 x 48.5 GB/s of InfiniBand, and its
    // latency far above the preset's: the ZeRO-3 all-gathers cost more on the measured cluster.
    assert!(gathers(&calibrated) > 1.03 * gathers(&preset), "{} vs {}", gathers(&calibrated), gathers(&preset));
    assert!(preset.get("priced_by").is_none(), "a preset prices with its own figures: {preset}");
    let lines: Vec<&str> = calibrated["priced_by"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.starts_with("all_gather inter: preset scaled to the all_reduce inter fit")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("all_to_all intra: preset (nothing measured at this level)")), "{lines:?}");
    cargo_bin_cmd!("hsap-tune")
        .args(["predict", "--scenario"])
        .arg(scenario(profile.to_str().unwrap()))
        .assert()
        .success()
        .stdout(predicate::str::contains("priced by    all_"));
}

#[test]
fn a_fit_with_nothing_held_out_has_no_held_out_legend() {
    // Four sizes are too few to hold any out: the figure has measured points only.
    let dir = tempfile::tempdir().unwrap();
    cargo_bin_cmd!("hsap-tune")
        .args(["calibrate", "--nccl-tests"])
        .arg(log("05_a100_8gpu_sendrecv_truncated.txt"))
        .args(["--cluster", "dgx-a100-80g", "--out"])
        .arg(dir.path().join("p.toml"))
        .assert()
        .success()
        .stdout(predicate::str::contains("skipped: 4 sizes"));
    let svg = std::fs::read_to_string(dir.path().join("p-fit/calibration_fit.svg")).unwrap();
    assert!(svg.contains("\nmeasured\n"), "the legend names the measured points");
    assert!(!svg.contains("held out"), "nothing was held out, and the legend does not say otherwise");
}
