//! The 2026 machines on the real binary: `predict` and `tune` on every H200, B200, GB200 NVL72, H20
//! and Ada (L20, L40S) preset; presets with derived figures say so; on two GB200 NVL72 racks a real
//! trace's long documents get groups larger than a node of eight, inside one NVLink domain.

use assert_cmd::Command;
use serde_json::Value;
use std::path::Path;

/// The presets issue 16 asked for, and whether each says that some of its figures are derived.
const PRESETS: [(&str, bool); 6] =
    [("dgx-h200", false), ("dgx-b200", true), ("gb200-nvl72", true), ("h20", true), ("l20", true), ("l40s", true)];

fn bin() -> Command {
    let mut cmd = Command::cargo_bin("hsap-tune").unwrap();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A whole step of Llama 3 8B on 8 GPUs of `preset`: Ulysses 4 x ring 2 on one 32K document.
fn scenario(dir: &Path, preset: &str) -> String {
    let path = dir.join(format!("{preset}.toml"));
    let text = format!(
        "scope = \"step\"\npasses = \"fwd_bwd\"\n[model]\npreset = \"llama3-8b\"\n[cluster]\npreset = \"{preset}\"\ngpus = 8\n\
         [strategy]\nscheme = \"usp\"\nulysses = 4\nring = 2\nzero = 3\ncheckpointing = \"full\"\n[batch]\npacked = [[32768]]\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn predict_runs_on_every_new_preset_and_says_which_are_uncalibrated() {
    let dir = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    for (preset, derived) in PRESETS {
        let file = scenario(dir.path(), preset);
        let text = stdout(bin().args(["predict", "--scenario", &file]));
        assert!(text.contains(&format!("llama3-8b on {preset}")), "{text}");
        assert_eq!(text.contains("UNCALIBRATED"), derived, "{preset}: {text}");
        let json: Value = serde_json::from_slice(&bin().args(["predict", "--scenario", &file, "--json"]).output().unwrap().stdout).unwrap();
        assert_eq!(json.get("uncalibrated").is_some(), derived, "{preset}: {json}");
        let time = json["time_s"].as_f64().unwrap();
        assert!(time.is_finite() && time > 0.0 && json["fits_in_memory"] == true, "{preset}: {json}");
        times.push((preset, time));
    }
    // Same memory, PCIe and NICs, a third of the peak: the L20 is slower than the L40S; H200 is
    // slower than B200.
    let t = |p: &str| times.iter().find(|(n, _)| *n == p).unwrap().1;
    assert!(t("l20") > t("l40s") && t("dgx-h200") > t("dgx-b200"), "{times:?}");
}

#[test]
fn tune_runs_on_every_new_preset() {
    for (preset, derived) in PRESETS {
        let out = tempfile::tempdir().unwrap();
        let text = stdout(
            bin()
                .args(["--limit-batches", "1", "--baselines", "static-usp", "--cluster", preset, "--out"])
                .arg(out.path()),
        );
        assert!(text.contains(&format!("on {preset} x")), "{text}");
        assert_eq!(text.contains("UNCALIBRATED"), derived, "{preset}: {text}");
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["cluster"], preset);
        let report = std::fs::read_to_string(out.path().join("report/summary.md")).unwrap();
        assert_eq!(report.contains("Uncalibrated cluster preset"), derived, "{preset}: {report}");
    }
}

/// Two GB200 NVL72 racks (`--nodes 36` trays of four GPUs) on ShareGPT's first 15 batches: batch
/// 14 holds a 161,309-token document. The planner gives it a group of a whole rack (72 GPUs, u8 x
/// r9), every rank of it in one NVLink domain, and no group of more than a rack.
#[test]
fn two_nvl72_racks_give_long_documents_groups_larger_than_eight_inside_a_rack() {
    let out = tempfile::tempdir().unwrap();
    let text = stdout(
        bin()
            .args(["--trace", "traces/sharegpt_v3_prefix17k_cl100k.csv", "--cluster", "gb200-nvl72", "--nodes", "36"])
            .args(["--limit-batches", "15", "--baselines", "none", "--out"])
            .arg(out.path()),
    );
    assert!(text.contains("144 GPUs, 2 NVLink domains of 72 GPUs"), "{text}");
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("plan.json")).unwrap()).unwrap();
    let mut large = Vec::new();
    for batch in plan["batches"].as_array().unwrap() {
        let longest = batch["docs"].as_array().unwrap().iter().map(|d| d["len"].as_u64().unwrap()).max().unwrap();
        for micro in batch["microbatches"].as_array().unwrap() {
            for g in micro["groups"].as_array().unwrap() {
                let ranks: Vec<u64> = g["ranks"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
                if ranks.len() <= 8 {
                    continue;
                }
                let lens: Vec<u64> = g["docs"].as_array().unwrap().iter().map(|d| d["len"].as_u64().unwrap()).collect();
                large.push((ranks.len(), longest, lens.iter().copied().max().unwrap_or(0)));
                assert!(ranks.len() <= 72, "a group of {} GPUs: more than a rack", ranks.len());
                assert!(ranks.iter().all(|r| r / 72 == ranks[0] / 72), "a group straddles two racks: {ranks:?}");
            }
        }
    }
    // The 161,309-token document is the only one that needs more than a node of eight.
    assert!(large.iter().any(|&(size, longest, held)| size > 8 && held == longest && held == 161_309), "{large:?}");
}
