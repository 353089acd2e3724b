//! The tune command on the real binary: the default command, --json, --out, golden plan, bad input.

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;

/// The binary, run in a scratch directory of its own: without --out a run writes ./hsap-run.
/// Relative paths in the tests are taken from the crate's root.
fn bin() -> Command {
    let scratch = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::cargo_bin("hsap-tune").unwrap();
    cmd.current_dir(scratch);
    cmd
}

/// The binary run from the crate's root, for tests that name files relative to it (and pass --out).
fn bin_at_root() -> Command {
    let mut cmd = Command::cargo_bin("hsap-tune").unwrap();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// Small and quick: one batch of the embedded default trace, FlexSP with a short limit.
const QUICK: [&str; 4] = ["--limit-batches", "1", "--flexsp-time-limit", "0.2"];

#[test]
fn the_default_command_prints_the_comparison_table() {
    let out = bin().args(QUICK).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    for needle in ["strategy", "hsap", "static-ulysses", "static-ring", "static-usp", "flexsp", "megatron-dcp", "speedup: the best static plan's", "hsap solve time per batch: median"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // hsap's row shows a speedup of at least 1 over the best static plan.
    let hsap_row = text.lines().find(|l| l.starts_with("hsap ")).unwrap();
    let cols: Vec<&str> = hsap_row.split_whitespace().collect();
    // columns: name, total, mean step, speedup, hsap's per batch, simulated
    let speedup: f64 = cols[cols.len() - 3].trim_end_matches('x').parse().unwrap();
    assert!(speedup >= 1.0, "{hsap_row}");
    assert_eq!(cols[cols.len() - 2], "1.000x", "hsap against itself");
    let (total, simulated): (f64, f64) = (cols[1].parse().unwrap(), cols[cols.len() - 1].parse().unwrap());
    assert!(simulated >= total - 0.005, "the simulator never beats the cost model: {hsap_row}");
}

#[test]
fn the_tune_subcommand_is_the_default_command() {
    let a = bin().args(QUICK).args(["--baselines", "static-usp", "--json"]).assert().success().get_output().stdout.clone();
    let b = bin().arg("tune").args(QUICK).args(["--baselines", "static-usp", "--json"]).assert().success().get_output().stdout.clone();
    let strip = |bytes: &[u8]| {
        let mut v: Value = serde_json::from_slice(bytes).unwrap();
        // Timings and the command line differ between runs; everything else must not.
        for key in ["solve_ms", "plan_wall_s", "simulate_wall_s", "command"] {
            v.as_object_mut().unwrap().remove(key);
        }
        for s in v["strategies"].as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("solve_ms");
        }
        v
    };
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn json_output_has_every_strategy_and_solve_times() {
    let out = bin().args(QUICK).arg("--json").assert().success().get_output().stdout.clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let strategies = v["strategies"].as_array().unwrap();
    let names: Vec<&str> = strategies.iter().map(|s| s["name"].as_str().unwrap()).collect();
    // The report's presentation order: hsap, the dynamic baselines, the static ones.
    assert_eq!(names, ["hsap", "flexsp", "megatron-dcp", "static-ulysses", "static-ring", "static-usp"]);
    let hsap_total = strategies[0]["total_time_s"].as_f64().unwrap();
    let best_static = v["best_static"].as_str().unwrap();
    for s in strategies {
        let total = s["total_time_s"].as_f64().unwrap();
        assert!(total >= hsap_total * (1.0 - 1e-12), "{} beats hsap", s["name"]);
        let mean = s["mean_step_s"].as_f64().unwrap();
        assert!((mean - total / v["batches"].as_f64().unwrap()).abs() < 1e-9);
        assert!(s["hsap_speedup_per_batch"].as_f64().unwrap() >= 1.0 - 1e-12, "{}", s["name"]);
        let speedup = s["speedup_vs_best_static"].as_f64().unwrap();
        if s["name"] == best_static {
            assert!((speedup - 1.0).abs() < 1e-12);
        }
    }
    for key in ["median", "p99", "max"] {
        assert!(v["solve_ms"][key].as_f64().unwrap() > 0.0, "solve_ms.{key}");
    }
}

#[test]
fn out_writes_plans_and_csvs() {
    let dir = tempfile::tempdir().unwrap();
    bin().args(QUICK).args(["--baselines", "static-usp,megatron-dcp", "--baseline-plans", "--out"]).arg(dir.path()).assert().success();
    let plan: Value = serde_json::from_slice(&std::fs::read(dir.path().join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["strategy"], "hsap");
    let batch = &plan["batches"][0];
    assert_eq!(batch["index"], 0);
    let group = &batch["microbatches"][0]["groups"][0];
    for key in ["ranks", "ulysses", "ring", "scheme", "sequences", "rank_layouts", "predicted_time_s", "predicted_memory_bytes"] {
        assert!(!group[key].is_null(), "group.{key}");
    }
    let layout = &group["rank_layouts"][0];
    for key in ["rank", "token_ranges", "cu_seqlens", "cu_seqlens_padded"] {
        assert!(!layout[key].is_null(), "rank_layouts[0].{key}");
    }
    for name in ["static-usp", "megatron-dcp"] {
        let p: Value = serde_json::from_slice(&std::fs::read(dir.path().join(format!("plans/{name}.json"))).unwrap()).unwrap();
        assert_eq!(p["strategy"], name);
    }
    let batches = std::fs::read_to_string(dir.path().join("batches.csv")).unwrap();
    assert_eq!(
        batches.lines().next().unwrap(),
        "batch,strategy,documents,tokens,predicted_step_s,simulated_step_s,compute_s,exposed_comm_s,idle_s,grad_sync_s,peak_memory_bytes,memory_limit_bytes,microbatches,groups,source,milp_status"
    );
    assert_eq!(batches.lines().count(), 1 + 3, "one row per batch and strategy");
    let groups = std::fs::read_to_string(dir.path().join("groups.csv")).unwrap();
    assert_eq!(
        groups.lines().next().unwrap(),
        "batch,strategy,microbatch,size,ulysses,ring,scheme,nodes,documents,tokens,predicted_s"
    );
    // Every micro-batch's groups cover the 64 GPUs.
    let mut rows = csv::Reader::from_reader(groups.as_bytes());
    let mut gpus: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for r in rows.records() {
        let r = r.unwrap();
        *gpus.entry((r[1].to_string(), r[2].to_string())).or_default() += r[3].parse::<u64>().unwrap();
    }
    assert!(gpus.values().all(|&g| g == 64), "{gpus:?}");
    assert!(dir.path().join("summary.json").exists());
}

#[test]
fn a_small_plan_matches_its_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    bin_at_root()
        .args(["--trace", "tests/data/small_trace.csv", "--nodes", "1", "--global-batch", "40", "--baselines", "none", "--out"])
        .arg(dir.path())
        .assert()
        .success();
    let got = std::fs::read_to_string(dir.path().join("plan.json")).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/plan_small.json");
    let golden = golden.as_path();
    if std::env::var_os("HSAP_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(golden).unwrap();
    let (got, want): (Value, Value) = (serde_json::from_str(&got).unwrap(), serde_json::from_str(&want).unwrap());
    assert_eq!(got, want, "plan.json changed; if intended, rerun with HSAP_UPDATE_GOLDEN=1");
}

#[test]
fn bad_inputs_are_errors_with_hints() {
    let cases: [(&[&str], &str); 7] = [
        (&["--trace", "no/such/lengths.csv"], "no/such/lengths.csv"),
        (&["--baselines", "deepspeed"], "unknown baseline 'deepspeed'"),
        (&["--time-limit=-1"], "--time-limit -1 must be"),
        (&["--nodes", "0"], "--nodes must be at least 1"),
        (&["--global-batch", "0"], "--global-batch must be at least 1"),
        (&["--model", "gpt-99b"], "unknown model 'gpt-99b'"),
        (&["--cluster", "dgx-b300"], "unknown cluster 'dgx-b300'; known: a100-40g-ib400, a800, dgx-a100-40g, dgx-a100-80g, dgx-b200, dgx-h100, dgx-h200, h800, pcie-a100"),
    ];
    for (args, needle) in cases {
        bin()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle).and(predicate::str::contains("hint")));
    }
}

#[test]
fn a_document_no_group_can_hold_is_an_error_not_a_plan() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("huge.csv");
    std::fs::write(&trace, "tokens\n3000000\n100\n").unwrap();
    bin()
        .arg("--trace")
        .arg(&trace)
        .args(["--nodes", "1", "--max-seq", "4000000", "--baselines", "none"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("3,000,000-token document does not fit").and(predicate::str::contains("--over-long split")));
}

#[test]
fn the_default_run_writes_the_run_directory_and_its_report() {
    let scratch = tempfile::tempdir().unwrap();
    Command::cargo_bin("hsap-tune")
        .unwrap()
        .current_dir(scratch.path())
        .args(QUICK)
        .args(["--baselines", "static-ulysses"])
        .assert()
        .success()
        .stderr(predicate::str::contains("report: hsap-run/report/index.html"));
    let run = scratch.path().join("hsap-run");
    for file in ["plan.json", "batches.csv", "groups.csv", "trace.json", "summary.json", "report/index.html"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    // Every batch of every strategy was replayed in the simulator, which never beats the cost
    // model (sharing links can only slow a plan down).
    let mut rows = csv::Reader::from_path(run.join("batches.csv")).unwrap();
    let headers = rows.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (predicted, simulated) = (col("predicted_step_s"), col("simulated_step_s"));
    let mut n = 0;
    for row in rows.records() {
        let row = row.unwrap();
        let (p, s): (f64, f64) = (row[predicted].parse().unwrap(), row[simulated].parse().unwrap());
        assert!(s >= p * (1.0 - 1e-9), "simulated {s} < predicted {p}");
        n += 1;
    }
    assert_eq!(n, 2, "one batch, two strategies");
}

#[test]
fn a_config_json_missing_a_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 32000}"#).unwrap();
    bin()
        .arg("--model")
        .arg(&config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("config.json").and(predicate::str::contains("missing field 'intermediate_size'")));
}

#[test]
fn a_hugging_face_config_plans() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    // Llama-3-8B's shape as its config.json states it.
    std::fs::write(
        &config,
        r#"{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256, "hidden_act": "silu"}"#,
    )
    .unwrap();
    let out = bin().arg("--model").arg(&config).args(QUICK).args(["--baselines", "none", "--json"]).assert().success().get_output().stdout.clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "config");
}

#[test]
fn a_mixture_of_experts_config_is_refused_not_planned_as_dense() {
    let dir = tempfile::tempdir().unwrap();
    // Mixtral-8x7B's config.json fields, and Llama 4 Scout's experts inside its text_config.
    let mixtral = r#"{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
        "vocab_size": 32000, "hidden_act": "silu",
        "num_local_experts": 8, "num_experts_per_tok": 2}"#;
    let llama4 = r#"{"model_type": "llama4", "vision_config": {"hidden_size": 1408},
        "text_config": {"model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
        "num_attention_heads": 40, "num_key_value_heads": 8, "num_hidden_layers": 48, "vocab_size": 202048,
        "num_local_experts": 16, "num_experts_per_tok": 1}}"#;
    for (name, text, needle) in [
        ("mixtral.json", mixtral, "mixtral.json:4: a mixture-of-experts model (8 experts, 2 per token), declared by 'num_local_experts'"),
        ("llama4.json", llama4, "llama4.json:4: a mixture-of-experts model (16 experts, 1 per token), declared by 'text_config.num_local_experts'"),
    ] {
        let config = dir.path().join(name);
        std::fs::write(&config, text).unwrap();
        bin()
            .arg("--model")
            .arg(&config)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(needle))
            .stderr(predicate::str::contains("hsap models dense transformers only"))
            .stderr(predicate::str::contains("hint: plan a dense model"));
    }
}

#[test]
fn a_multimodal_config_is_read_through_its_text_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("llava.json");
    // A LLaVA-style config: the language model (Llama-3-8B's shape) under text_config.
    std::fs::write(
        &config,
        r#"{"model_type": "llava", "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24},
            "text_config": {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256, "hidden_act": "silu"}}"#,
    )
    .unwrap();
    let out = bin().arg("--model").arg(&config).args(QUICK).args(["--baselines", "none", "--json"]).assert().success().get_output().stdout.clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "llava");
    // Without text_config, a multimodal config says where the shape should have been.
    std::fs::write(&config, r#"{"model_type": "llava", "vision_config": {"hidden_size": 1024}}"#).unwrap();
    bin()
        .arg("--model")
        .arg(&config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing field 'hidden_size'").and(predicate::str::contains("keeps its language model's shape in text_config")));
}

#[test]
fn a_gpu_that_cannot_hold_the_model_states_says_so() {
    // One A100-40GB: gpt-7b's model states (16 bytes for each of its 6.85B parameters, and ZeRO's buffers) fill it before any token.
    let dir = tempfile::tempdir().unwrap();
    let preset = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/clusters/a100-40g-ib400.toml")).unwrap();
    let one = dir.path().join("one-gpu.toml");
    std::fs::write(&one, preset.replace("gpus_per_node = 8", "gpus_per_node = 1")).unwrap();
    bin()
        .args(["--trace", &format!("{}/tests/data/small_trace.csv", env!("CARGO_MANIFEST_DIR")), "--nodes", "1", "--baselines", "none", "--cluster"])
        .arg(&one)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("gpt-7b's model states alone need 102.9 GiB per GPU"))
        .stderr(predicate::str::contains("ZeRO-3 over 1 GPU), more than the 36.0 GiB usable on a A100-SXM4-40GB: no tokens fit"))
        .stderr(predicate::str::contains("hint: raise --nodes"));
}

#[test]
fn dropped_documents_and_a_run_without_baselines_are_said_in_the_report() {
    // small_trace.csv: 4 of its 40 documents (57,687 of 122,965 tokens, 46.9%) are over 8192.
    let dir = tempfile::tempdir().unwrap();
    bin_at_root()
        .args(["--trace", "tests/data/small_trace.csv", "--nodes", "1", "--global-batch", "40", "--max-seq", "8192", "--baselines", "none", "--out"])
        .arg(dir.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("note: dropped 4 documents (57,687 tokens) longer than --max-seq 8,192"));
    let report = dir.path().join("report");
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    let dropped = "Dropped: 4 documents longer than --max-seq 8192 (46.9% of the trace's tokens) are in no plan";
    assert!(summary.contains(dropped), "{summary}");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<p class=\"warn\" id=\"dropped\"><strong>Dropped: 4 documents"), "the headline says it");
    // The trace figure draws them apart and says so in its title; its data has the counts.
    let svg = std::fs::read_to_string(report.join("trace.svg")).unwrap();
    assert!(svg.contains("4 dropped (over --max-seq 8K, 46.9% of tokens)"), "trace.svg title");
    assert!(svg.contains("longer than --max-seq: dropped, not planned"), "trace.svg legend");
    let csv = std::fs::read_to_string(report.join("trace.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",over_max_seq_documents,over_max_seq_tokens"), "{csv}");
    let over: u64 = csv.lines().skip(1).map(|l| l.rsplit(',').nth(1).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(over, 4);
    // No baseline: no speedup figure with made-up axis labels, and the page says why.
    assert!(!report.join("speedup.svg").exists() && !report.join("speedup.csv").exists());
    assert!(summary.contains("No baseline ran (`--baselines none`)"), "{summary}");
    assert!(!html.contains("id=\"fig-speedup\""));
    assert_eq!(html.matches("<svg").count(), 5, "trace, step time, breakdown, plans, memory");
    assert!(summary.contains("3. **Step-time breakdown**"), "figures are numbered in order: {summary}");
}

/// A small quick run of the small trace on one node.
const SMALL: [&str; 7] = ["--trace", "tests/data/small_trace.csv", "--nodes", "1", "--global-batch", "40", "--no-simulate"];

#[test]
fn a_rerun_into_the_same_out_keeps_nothing_of_the_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // First a calibrated run with the baselines' plans: fit_points.csv, plans/*.json, a calibration figure.
    let profile = dir.path().join("a100.toml");
    bin_at_root()
        .args(["calibrate", "--nccl-tests", "tests/data/nccl-tests/18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt", "--cluster", "dgx-a100-80g", "--out"])
        .arg(&profile)
        .assert()
        .success();
    bin_at_root().args(SMALL).args(["--baselines", "static-usp", "--baseline-plans", "--cluster"]).arg(&profile).arg("--out").arg(&run).assert().success();
    for file in ["fit_points.csv", "plans/static-usp.json", "report/calibration_fit.svg"] {
        assert!(run.join(file).is_file(), "{file}");
    }
    // Then a plain run into the same directory: only its own files.
    bin_at_root().args(SMALL).args(["--baselines", "none", "--cluster", "dgx-a100-80g", "--out"]).arg(&run).assert().success();
    for file in ["fit_points.csv", "plans", "report/calibration_fit.svg", "report/speedup.svg"] {
        assert!(!run.join(file).exists(), "{file} is left from the earlier run");
    }
    let html = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(!html.contains("Calibration"), "the report shows no calibration");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "no staging directory is left: a100.toml, a100-fit, run");
}

#[test]
fn outputs_and_inputs_that_cannot_work_are_found_before_planning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), "keep me").unwrap();
    let missing = dir.path().join("no-such-measurements.csv");
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec!["--out".into(), file.display().to_string()], format!("--out {} is a file, not a directory", file.display())),
        (vec!["--out".into(), file.join("run").display().to_string()], "cannot be written".into()),
        (vec!["--out".into(), theirs.display().to_string()], "holds files that are not a run's (notes.txt)".into()),
        (vec!["--measurements".into(), missing.display().to_string(), "--out".into(), dir.path().join("r1").display().to_string()], "no-such-measurements.csv".into()),
        (vec!["--limit-batches".into(), "0".into(), "--out".into(), dir.path().join("r2").display().to_string()], "--limit-batches 0 leaves no batch to plan".into()),
    ];
    for (args, needle) in cases {
        // With FlexSP among the baselines a note precedes planning: none may appear.
        bin_at_root()
            .args(SMALL)
            .args(["--baselines", "flexsp"])
            .args(&args)
            .assert()
            .code(2)
            .stdout(predicate::str::is_empty())
            .stderr(predicate::str::contains(needle.as_str()).and(predicate::str::contains("hint:")))
            .stderr(predicate::str::contains("note:").not());
    }
    assert_eq!(std::fs::read_to_string(theirs.join("notes.txt")).unwrap(), "keep me");
    assert!(!dir.path().join("r1").exists() && !dir.path().join("r2").exists());
}

#[test]
fn a_calibrated_run_says_which_figures_priced_it() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("a100.toml");
    bin_at_root()
        .args(["calibrate", "--nccl-tests", "tests/data/nccl-tests/18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt", "--cluster", "dgx-a100-80g", "--out"])
        .arg(&profile)
        .assert()
        .success();
    let run = dir.path().join("run");
    bin_at_root()
        .args(["--trace", "tests/data/small_trace.csv", "--nodes", "2", "--global-batch", "40", "--no-simulate", "--baselines", "none", "--cluster"])
        .arg(&profile)
        .arg("--out")
        .arg(&run)
        .assert()
        .success()
        .stdout(predicate::str::contains("priced by    all_to_all intra: preset (nothing measured at this level)"))
        .stdout(predicate::str::contains("all_reduce inter: fitted on 16 ranks"))
        .stdout(predicate::str::contains("all_gather inter: preset scaled to the all_reduce inter fit"))
        .stdout(predicate::str::contains("kernels: published tables and the preset's peaks (no kernel measured)"));
    let summary = std::fs::read_to_string(run.join("report/summary.md")).unwrap();
    assert!(summary.contains("Priced on the calibrated cluster by:\n\n- all_to_all intra: preset (nothing measured at this level)"), "{summary}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(v["priced_by"].as_array().unwrap().len(), 11, "5 collectives x 2 levels and the kernels' line: {v}");
}

#[test]
fn a_plan_the_lp_proved_is_called_proved_not_infeasible() {
    // The small trace's one batch: the LP relaxation at 2% below hsap's plan is infeasible, which
    // proves the plan within 2%; HiGHS's word for that is not the run's.
    let dir = tempfile::tempdir().unwrap();
    let out = bin_at_root()
        .args(SMALL)
        .args(["--baselines", "none", "--no-report", "--out"])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("hsap LP/MILP outcome per batch: proved_within_gap 1"))
        .stdout(predicate::str::contains("proved_within_gap: the LP relaxation proved that no plan is 2% faster"))
        .get_output()
        .stdout
        .clone();
    assert!(!String::from_utf8(out).unwrap().contains("infeasible"));
    let batches = std::fs::read_to_string(dir.path().join("batches.csv")).unwrap();
    assert!(batches.lines().nth(1).unwrap().ends_with(",greedy,proved_within_gap"), "{batches}");
}

#[test]
fn tune_ends_with_the_verdict_and_the_launch_in_each_framework() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin_at_root()
        .args(SMALL)
        .args(["--baselines", "static-ulysses,static-ring", "--no-report", "--out"])
        .arg(dir.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("recommendation.json")).unwrap()).unwrap();
    let paragraph = rec["verdict"]["paragraph"].as_str().unwrap();
    assert!(text.contains(&format!("verdict: {paragraph}\n")), "{text}");
    let launch = text.lines().skip_while(|l| !l.starts_with("launch ")).skip(1).take(4).collect::<Vec<_>>();
    let names: Vec<&str> = launch.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names, ["megatron-core", "deepspeed", "torchtitan", "yunchang"], "{text}");
    assert!(dir.path().join("recommendation.md").is_file());
    // Without a static baseline the verdict says there is nothing to weigh.
    let out = bin_at_root().args(SMALL).args(["--baselines", "none", "--no-report", "--out"]).arg(dir.path()).assert().success().get_output().stdout.clone();
    assert!(String::from_utf8(out).unwrap().contains("verdict: No static baseline ran"));
}
