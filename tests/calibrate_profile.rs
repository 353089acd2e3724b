//! From logs and measurements to a calibrated profile: the fits against hand-computed values,
//! the profile's round trip through `Cluster::resolve`, the report's points, and the errors
//! that name the input to fix.

use hsap::calibrate::fit::Holdout;
use hsap::formats::measurements;
use hsap::calibrate::nccl_tests::{self, NcclLog, NcclOp};
use hsap::calibrate::profile::{self, Hints, MeasurementFile, Outcome};
use hsap::calibrate::report;
use hsap::cli::{calibrate, CalibrateArgs};
use hsap::cluster::{Cluster, Collective, KernelKind, LinkLevel};
use std::path::{Path, PathBuf};

const LOGS: &str = "tests/data/nccl-tests";
const CSV: &str = "tests/data/calibrate/measurements.csv";

fn log(file: &str) -> NcclLog {
    nccl_tests::read(&Path::new(LOGS).join(file)).unwrap()
}

fn csv() -> MeasurementFile {
    MeasurementFile {
        path: PathBuf::from(CSV),
        rows: measurements::read_located(Path::new(CSV)).unwrap(),
    }
}

fn h100() -> Cluster {
    Cluster::resolve("dgx-h100").unwrap()
}

fn a3mega() -> Outcome {
    let logs = [log("01_h100_a3mega_2node_allreduce.txt"), log("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt")];
    let hints = Hints {
        op: Some(NcclOp::AllGather),
        ..Hints::default()
    };
    profile::calibrate(&h100(), &logs, &[csv()], &hints).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    ((a - b) / b).abs() <= rel
}

#[test]
fn collective_fits_follow_the_logs() {
    let outcome = a3mega();
    let cal = &outcome.calibration;
    let keys: Vec<(Collective, LinkLevel, u32)> = cal.collectives.iter().map(|f| (f.op, f.level, f.ranks)).collect();
    assert_eq!(
        keys,
        vec![
            (Collective::AllToAll, LinkLevel::Intra, 8),
            (Collective::AllGather, LinkLevel::Inter, 16),
            (Collective::AllReduce, LinkLevel::Inter, 16),
        ]
    );

    // The all-to-all rows lie exactly on 20 us + bytes x 7/8 / 200 GB/s.
    let a2a = &cal.collectives[0];
    assert_eq!(a2a.regimes.len(), 1);
    assert!(close(a2a.latency_us, 20.0, 1e-4) && close(a2a.busbw_gb_per_s, 200.0, 1e-4), "{a2a:?}");
    assert!(a2a.rms_log_residual < 1e-6);
    // Half speed where 20 us = bytes x 7/8 / 200 GB/s: 4,571,429 bytes.
    assert!(close(a2a.saturation_bytes, 20e-6 * 200e9 / 0.875, 1e-4), "{}", a2a.saturation_bytes);

    // The all-reduce over 2 A3 Mega nodes: latency is the small-message plateau (122-124 us),
    // the last regime's bus bandwidth is near the log's peak (338.82 GB/s at 8 GiB).
    let ar = &cal.collectives[2];
    assert!(ar.regimes.len() >= 2, "{ar:?}");
    assert!((115.0..130.0).contains(&ar.latency_us), "{ar:?}");
    assert!(close(ar.busbw_gb_per_s, 338.82, 0.05), "{ar:?}");
    assert_eq!(ar.nodes, Some(2));
    assert_eq!(ar.points, 31);
    assert!(ar.provenance.contains("01_h100_a3mega_2node_allreduce.txt run 1 (lines 1-56)"), "{}", ar.provenance);
    assert!(ar.provenance.contains("31 sizes"), "{}", ar.provenance);

    // The profile's own time_s reproduces the log within its reported worst error.
    let series = outcome.series.iter().find(|s| s.op == Collective::AllReduce).unwrap();
    for p in &series.points {
        let rel = (ar.time_s(p.bytes, 16) - p.time_s).abs() / p.time_s;
        assert!(rel <= ar.max_rel_error + 1e-3, "{} bytes: {rel}", p.bytes);
    }
    assert!(ar.max_rel_error < 0.1, "{ar:?}");

    // 09 did not list its hosts: 16 ranks fill 2 nodes of 8 GPUs, and the user is told.
    assert!(outcome.warnings.iter().any(|w| w.contains("09_h100") && w.contains("2 nodes assumed")), "{:?}", outcome.warnings);
    // One send/recv size cannot be fitted, and the user is told.
    assert!(outcome.warnings.iter().any(|w| w.starts_with("send_recv intra on 8 ranks: fewer than two")), "{:?}", outcome.warnings);
}

#[test]
fn kernel_curves_and_overlap_follow_the_measurements() {
    let cal = a3mega().calibration;
    let find = |kind: KernelKind, hd: u32| cal.kernels.iter().find(|k| k.kind == kind && k.head_dim == Some(hd)).unwrap();
    let fwd = find(KernelKind::AttentionFwd, 128);
    assert_eq!(fwd.causal, Some(true));
    assert_eq!(fwd.points.len(), 2);
    assert_eq!(fwd.points[0].0, 8192.0);
    assert!(close(fwd.points[0].1, 225.0, 1e-12) && close(fwd.points[1].1, 250.0, 1e-12), "{:?}", fwd.points);
    assert!(fwd.provenance.contains("3 rows"), "{}", fwd.provenance);
    let fwd64 = find(KernelKind::AttentionFwd, 64);
    assert_eq!((fwd64.causal, fwd64.points.clone()), (Some(false), vec![(4096.0, 100.0)]));
    let bwd = find(KernelKind::AttentionBwd, 128);
    assert_eq!(bwd.points, vec![(8192.0, 160.0)]);
    let gemm = cal.kernels.iter().find(|k| k.kind == KernelKind::Gemm).unwrap();
    assert_eq!(gemm.points.len(), 1);
    assert_eq!(gemm.points[0].0, 4096.0f64.powi(3));
    assert!(close(gemm.points[0].1, 274.877906944, 1e-12), "{:?}", gemm.points);
    assert_eq!(cal.kernels.len(), 4);

    let overlap: Vec<(&str, f64, u32)> = cal.overlap.iter().map(|o| (o.op.as_str(), o.efficiency, o.pairs)).collect();
    assert_eq!(overlap.len(), 2, "{overlap:?}");
    assert_eq!((overlap[0].0, overlap[0].2), ("attn_fwd_varlen", 1));
    assert!(close(overlap[0].1, 0.9, 1e-12), "{overlap:?}");
    assert_eq!((overlap[1].0, overlap[1].2), ("send_recv", 1));
    assert!(close(overlap[1].1, 0.8, 1e-12), "{overlap:?}");
}

#[test]
fn fit_points_carry_the_fit_and_the_hold_out() {
    let outcome = a3mega();
    let points = report::fit_points(&outcome);
    // Every point of every fitted series; the lone send/recv size has no fit and no row.
    let fitted: usize = outcome.groups.iter().flat_map(|g| &g.series).map(|&i| outcome.series[i].points.len()).sum();
    assert_eq!(points.len(), fitted);
    assert_eq!(fitted, 31 + 11 + 4);
    assert!(!points.iter().any(|p| p.op == Collective::SendRecv));
    let ar: Vec<_> = points.iter().filter(|p| p.op == Collective::AllReduce).collect();
    assert_eq!(ar.len(), 31);
    // Every third size (8 B, 64 B, ...) was held out and predicted by the fit on the others.
    let held: Vec<f64> = ar.iter().filter(|p| p.held_out).map(|p| p.bytes).collect();
    assert_eq!(held.len(), 11);
    assert_eq!(held[..3], [8.0, 64.0, 512.0]);
    for p in &ar {
        assert_eq!(p.held_out, p.holdout_predicted_s.is_some());
        assert!(close(p.rel_error, (p.fitted_s - p.measured_s) / p.measured_s, 1e-9));
        assert_eq!((p.level, p.ranks, p.nodes), (LinkLevel::Inter, 16, Some(2)));
    }
    let fit = outcome.calibration.collectives.iter().find(|f| f.op == Collective::AllReduce).unwrap();
    assert_eq!(ar[30].fitted_s, fit.time_s(8_589_934_592.0, 16));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fit_points.csv");
    hsap::formats::fit_points::write(&path, &points).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("op,level,ranks,bytes,measured_s,fitted_s,rel_error,held_out,holdout_predicted_s,holdout_rel_error,nodes,source\n"),
        "{}",
        &text[..200]
    );
    assert_eq!(text.lines().count(), points.len() + 1);
}

#[test]
fn runs_from_different_clusters_are_flagged_when_pooled() {
    // 01 (H100, TCPXO) and 18 (A100, HDR InfiniBand): both 16-rank inter-node all-reduces.
    let logs = [log("01_h100_a3mega_2node_allreduce.txt"), log("18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt")];
    let outcome = profile::calibrate(&h100(), &logs, &[], &Hints::default()).unwrap();
    assert_eq!(outcome.calibration.collectives.len(), 1);
    assert!(outcome.warnings.iter().any(|w| w.contains("disagree")), "{:?}", outcome.warnings);
    // The same log twice agrees with itself.
    let logs = [log("01_h100_a3mega_2node_allreduce.txt"), log("01_h100_a3mega_2node_allreduce.txt")];
    let outcome = profile::calibrate(&h100(), &logs, &[], &Hints::default()).unwrap();
    assert!(!outcome.warnings.iter().any(|w| w.contains("disagree")), "{:?}", outcome.warnings);
    assert_eq!(outcome.calibration.collectives[0].points, 62);
}

#[test]
fn what_a_log_does_not_say_must_be_given() {
    let base = h100();
    let ambiguous = [log("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt")];
    let err = profile::calibrate(&base, &ambiguous, &[], &Hints::default()).unwrap_err().to_string();
    assert!(err.contains("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt:4: cannot tell which collective"), "{err}");
    assert!(err.contains("all_gather and all_to_all") && err.contains("--op"), "{err}");
    let wrong = Hints {
        op: Some(NcclOp::AllReduce),
        ..Hints::default()
    };
    let err = profile::calibrate(&base, &ambiguous, &[], &wrong).unwrap_err().to_string();
    assert!(err.contains("--op all_reduce does not fit this table"), "{err}");

    let cut = [log("02_a100_coreweave_16node_allreduce_oldfmt.txt")];
    let err = profile::calibrate(&base, &cut, &[], &Hints::default()).unwrap_err().to_string();
    assert!(err.contains("02_a100") && err.contains("between 126 and 128") && err.contains("--ranks"), "{err}");
    let wrong = Hints {
        ranks: Some(64),
        ..Hints::default()
    };
    let err = profile::calibrate(&base, &cut, &[], &wrong).unwrap_err().to_string();
    assert!(err.contains("--ranks 64 does not fit this table"), "{err}");
    let right = Hints {
        ranks: Some(128),
        nodes: Some(16),
        ..Hints::default()
    };
    let outcome = profile::calibrate(&base, &cut, &[], &right).unwrap();
    let f = &outcome.calibration.collectives[0];
    assert_eq!((f.ranks, f.nodes, f.level), (128, Some(16), LinkLevel::Inter));
    assert!(outcome.series[0].facts.iter().any(|f| f == "128 ranks: --ranks"), "{:?}", outcome.series[0].facts);
    assert!(outcome.series[0].facts.iter().any(|f| f == "16 nodes: --nodes"), "{:?}", outcome.series[0].facts);
    // A100 logs on an H100 base are flagged.
    assert!(outcome.warnings.iter().any(|w| w.contains("A100-SXM4-80GB") && w.contains("H100-SXM5-80GB")), "{:?}", outcome.warnings);

    // Hints that no log needed are reported, not silently ignored.
    let logs = [log("01_h100_a3mega_2node_allreduce.txt")];
    let outcome = profile::calibrate(&base, &logs, &[], &right).unwrap();
    assert!(outcome.warnings.iter().any(|w| w.starts_with("--ranks was not needed")), "{:?}", outcome.warnings);
}

fn bad_csv(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    // As many columns as the first row has: the old twelve, or with the kernel's.
    let columns = body.lines().next().unwrap().split(',').count();
    std::fs::write(&path, format!("{}\n{body}\n", measurements::HEADER[..columns].join(","))).unwrap();
    let file = MeasurementFile {
        rows: measurements::read_located(&path).unwrap(),
        path,
    };
    profile::calibrate(&h100(), &[], &[file], &Hints::default()).unwrap_err().to_string()
}

#[test]
fn bad_measurement_rows_name_their_line() {
    let ok = "gemm,linear,1,1,,1e12,m=8;n=8;k=8,false,0.001,,5,x";
    let err = bad_csv(&format!("{ok}\ngemm,linear,1,1,,,m=8;n=8;k=8,false,0.001,,5,x"));
    assert!(err.contains("bad.csv:3: the linear row has no positive `flops`"), "{err}");
    let err = bad_csv("gemm,linear,1,1,,1e12,m=8;n=8,false,0.001,,5,x");
    assert!(err.contains("bad.csv:2: GEMM shape 'm=8;n=8' lacks m, n or k"), "{err}");
    let err = bad_csv("attention_fwd,attn,1,1,,1e12,heads=8,false,0.001,,5,x,flash_attn_2");
    assert!(err.contains("bad.csv:2: attention shape 'heads=8' lacks seqlen"), "{err}");
    let err = bad_csv("collective,allreduce,8,1,1024,,,false,0.001,,5,x");
    assert!(err.contains("bad.csv:2: unknown collective 'allreduce'"), "{err}");
    let err = bad_csv("collective,all_reduce,8,1,,,,false,0.001,,5,x");
    assert!(err.contains("bad.csv:2: a collective row needs `bytes`"), "{err}");
    let err = bad_csv("phase,attention,8,1,,,,false,0.001,,5,x");
    assert!(err.contains("nothing to calibrate"), "{err}");
}

#[test]
fn reference_kernel_rows_are_refused_as_attention_efficiency() {
    // What validate --kernels reference writes for an attention call.
    let reference = "attention_fwd,attn_fwd_varlen,1,1,,1e12,seqlen=8192;heads=32;head_dim=128;causal=1,false,0.05,,10,validate plan.json,hsap_reference,hsap,0.1.0,bf16,NVIDIA H100 80GB HBM3";
    let err = bad_csv(reference);
    assert!(err.contains("bad.csv:2: the attn_fwd_varlen row was timed with hsap's reference attention kernels"), "{err}");
    assert!(err.contains("never fitted as attention efficiency") && err.contains("calibrate --run --kernels torch"), "{err}");
    // Beside production rows it is refused all the same; the backward too.
    let production = "attention_fwd,flash_attn_2,1,1,,1e12,seqlen=8192;heads=32;head_dim=128;causal=1,false,0.005,,10,harness,flash_attn_2,flash_attn,2.7.4,bf16,NVIDIA H100 80GB HBM3";
    let err = bad_csv(&format!("{production}
{}", reference.replace("attention_fwd,attn_fwd", "attention_bwd,attn_bwd")));
    assert!(err.contains("bad.csv:3: the attn_bwd_varlen row was timed with hsap's reference"), "{err}");
    // Rows that do not name their kernel (hsap's files before the column) cannot be told apart.
    let err = bad_csv("attention_fwd,attn_fwd_varlen,1,1,,1e12,seqlen=8192;heads=32;head_dim=128;causal=1,false,0.05,,10,validate");
    assert!(err.contains("bad.csv:2: the attn_fwd_varlen row names no kernel") && err.contains("add a `kernel` column"), "{err}");
}

#[test]
fn rows_measured_on_a_cpu_are_refused_for_a_gpu_profile() {
    for row in [
        "gemm,matmul,1,1,,1e12,m=8;n=8;k=8,false,0.001,,5,harness,matmul,torch,2.5.1,bf16,cpu",
        "attention_fwd,sdpa_flash,1,1,,1e12,seqlen=8192;heads=32;head_dim=128;causal=1,false,0.05,,10,harness,sdpa_flash,torch,2.5.1,bf16,cpu",
        "collective,all_reduce,2,1,1024,,,false,0.001,,5,harness,gloo,torch,2.5.1,bf16,cpu",
    ] {
        let err = bad_csv(row);
        assert!(err.contains("bad.csv:2: the ") && err.contains("was measured on a CPU (device = cpu)"), "{err}");
        assert!(err.contains("prices the GPUs of 'dgx-h100'"), "{err}");
    }
    // The same row from a GPU is fitted, with its kernel, library and version.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.csv");
    std::fs::write(
        &path,
        format!("{}\ngemm,matmul,1,1,,1e12,m=8;n=8;k=8,false,0.001,,5,harness,matmul,torch,2.5.1,bf16,NVIDIA H100 80GB HBM3\n", measurements::HEADER.join(",")),
    )
    .unwrap();
    let file = MeasurementFile { rows: measurements::read_located(&path).unwrap(), path };
    let outcome = profile::calibrate(&h100(), &[], &[file], &Hints::default()).unwrap();
    let k = &outcome.calibration.kernels[0];
    assert_eq!((k.kernel.as_deref(), k.library.as_deref(), k.dtype.as_deref()), (Some("matmul"), Some("torch 2.5.1"), Some("bf16")));
    assert!(k.provenance.contains("matmul (torch 2.5.1), 1 rows"), "{}", k.provenance);
}

#[test]
fn the_profile_round_trips_through_cluster_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a3mega.toml");
    let args = CalibrateArgs {
        nccl_tests: vec![
            Path::new(LOGS).join("01_h100_a3mega_2node_allreduce.txt"),
            Path::new(LOGS).join("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt"),
        ],
        measurements: vec![PathBuf::from(CSV)],
        cluster: "dgx-h100".into(),
        nodes: None,
        ranks: None,
        op: Some("all_gather".into()),
        out: out.clone(),
        report: None,
        run: false,
        model: "gpt-7b".into(),
        repeats: 10,
        warmup: 2,
        kernels: hsap::gpu::harness::KernelSet::Torch,
        timeout: 300,
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    calibrate(&args, &mut stdout, &mut stderr).unwrap();
    let stdout = String::from_utf8(stdout).unwrap();
    let stderr = String::from_utf8(stderr).unwrap();

    let profile = Cluster::resolve(out.to_str().unwrap()).unwrap();
    let base = h100();
    assert_eq!(profile.name, "a3mega");
    assert_eq!((&profile.gpu, &profile.intra, &profile.inter, profile.gpus_per_node, profile.nodes), (&base.gpu, &base.intra, &base.inter, 8, base.nodes));
    let cal = profile.calibration.as_ref().unwrap();
    assert_eq!(cal, &a3mega().calibration);
    assert_eq!((cal.collectives.len(), cal.kernels.len(), cal.overlap.len()), (3, 4, 2));
    let fit = cal.collective_fit(Collective::AllReduce, LinkLevel::Inter, 16).unwrap();
    assert!(close(fit.time_s(8_589_934_592.0, 16), 47535e-6, 0.05));

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("# Calibrated cluster profile written by `hsap-tune calibrate`"), "{text}");
    assert!(text.contains("[[calibration.collectives.regimes]]"), "{text}");

    // The report sits next to the profile.
    let report = dir.path().join("a3mega-fit");
    let summary = std::fs::read_to_string(report.join("fit_summary.md")).unwrap();
    assert!(summary.contains("## Hold-out check") && summary.contains("01_h100_a3mega_2node_allreduce.txt run 1"), "{summary}");
    assert!(summary.contains("hsap-tune calibrate --nccl-tests"), "{summary}");
    assert!(report.join("fit_points.csv").exists());

    // The printed tables: fits, hold-out, per-point errors; warnings go to stderr.
    for heading in ["Collective fits", "Hold-out check", "Per-point error", "Kernel throughput curves", "Overlap efficiency"] {
        assert!(stdout.contains(heading), "{heading}: {stdout}");
    }
    assert!(stdout.contains("8 GiB") && stdout.contains("47535"), "{stdout}");
    assert!(stderr.contains("warning: ") && stderr.contains("2 nodes assumed"), "{stderr}");

    // Calibrating a calibrated profile replaces its calibration, and says so.
    let again = CalibrateArgs {
        cluster: out.to_str().unwrap().into(),
        out: dir.path().join("again.toml"),
        measurements: Vec::new(),
        ..args
    };
    let mut stderr = Vec::new();
    calibrate(&again, &mut Vec::new(), &mut stderr).unwrap();
    assert!(String::from_utf8(stderr).unwrap().contains("already calibrated"));
    let again = Cluster::resolve(dir.path().join("again.toml").to_str().unwrap()).unwrap();
    assert!(again.calibration.unwrap().kernels.is_empty());
}

#[test]
fn holdout_outcomes_are_kept_per_run() {
    let outcome = a3mega();
    let from_log = outcome.series.iter().find(|s| s.op == Collective::AllReduce).unwrap();
    match &from_log.holdout {
        Holdout::Done { median_rel_error, judged, .. } => assert!(*median_rel_error <= 0.10 && *judged == 5),
        other => panic!("{other:?}"),
    }
    let from_csv = outcome.series.iter().find(|s| s.op == Collective::AllToAll).unwrap();
    assert!(matches!(from_csv.holdout, Holdout::Skipped { .. }));
}

/// Every real log calibrates against the preset of its hardware: the physical bounds refuse
/// nothing that real clusters measured, and each fit stays under its ceiling.
#[test]
fn every_real_log_fits_within_its_links() {
    let cases: [(&str, &str, Hints); 9] = [
        ("01_h100_a3mega_2node_allreduce.txt", "dgx-h100", Hints::default()),
        ("02_a100_coreweave_16node_allreduce_oldfmt.txt", "dgx-a100-80g", Hints { ranks: Some(128), nodes: Some(16), ..Hints::default() }),
        ("05_a100_8gpu_sendrecv_truncated.txt", "dgx-a100-80g", Hints::default()),
        ("06_a100_40gb_p4d_2node_efa_allreduce_tagged_oldfmt.txt", "a100-40g-ib400", Hints::default()),
        ("07_h100_2node_4gpu_roce_sendrecv_ncclinfo_linearstep.txt", "dgx-h100", Hints::default()),
        ("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt", "dgx-h100", Hints { op: Some(NcclOp::AllGather), ..Hints::default() }),
        ("15_h200_2node_allreduce_slurm_g8.txt", "dgx-h100", Hints::default()),
        ("16_h100_p5_1node_8gpu_allreduce_awsbatch_tagged_excerpt.txt", "dgx-h100", Hints::default()),
        ("18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt", "dgx-a100-80g", Hints::default()),
    ];
    for (file, cluster, hints) in cases {
        let base = Cluster::resolve(cluster).unwrap();
        let outcome = profile::calibrate(&base, &[log(file)], &[], &hints).unwrap_or_else(|e| panic!("{file}: {e}"));
        for f in &outcome.calibration.collectives {
            let ceiling = base.busbw_ceiling_gb_per_s(f.op, f.ranks, f.nodes_or_assumed(&base));
            assert!(f.busbw_gb_per_s <= ceiling, "{file}: {} > {ceiling}", f.busbw_gb_per_s);
        }
    }
}
