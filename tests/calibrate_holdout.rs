//! Fit quality on the real nccl-tests logs: for every log with enough sizes, fit on the sizes
//! whose index is not a multiple of 3 and predict the held-out every-third sizes. The median
//! relative error over held-out sizes of 1 MB and more must be at most 10%.
//!
//! The figures are printed per log:
//!   cargo nextest run --release --no-capture -E 'binary(calibrate_holdout)'
//! Each line also gives what a single alpha-beta line would do on the same split, the model the
//! envelope replaces (docs/calibration.md).

use hsap::calibrate::fit::{self, Holdout, HOLDOUT_MIN_BYTES};
use hsap::calibrate::nccl_tests;
use std::path::Path;

const DATA: &str = "tests/data/nccl-tests";

/// Logs with too few sizes of 1 MB and more to hold out: only the truncated 4-row sendrecv.
const TOO_SHORT: [&str; 1] = ["05_a100_8gpu_sendrecv_truncated.txt"];

fn median_error(h: &Holdout) -> Option<(f64, usize, f64)> {
    match h {
        Holdout::Done {
            median_rel_error,
            judged,
            held_out,
            ..
        } => {
            let worst = held_out.iter().filter(|x| x.bytes >= HOLDOUT_MIN_BYTES).map(|x| x.rel_error).fold(0.0, f64::max);
            Some((*median_rel_error, *judged, worst))
        }
        Holdout::Skipped { .. } => None,
    }
}

#[test]
fn held_out_sizes_are_predicted_within_10_percent_median_on_every_real_log() {
    let mut files: Vec<String> = std::fs::read_dir(DATA)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "the real logs are missing: {files:?}");

    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut judged_logs = 0;
    println!("hold-out check: fit on sizes with index % 3 != 0, predict index % 3 == 0; median over held-out sizes >= 1 MB");
    for file in &files {
        let log = nccl_tests::read(&Path::new(DATA).join(file)).unwrap_or_else(|e| panic!("{e}"));
        for run in &log.runs {
            let points = fit::run_points(run);
            let envelope = fit::holdout(&points);
            if let Holdout::Skipped { reason } = &envelope {
                println!("  SKIPPED {file} run {}: {reason}", run.index);
                skipped.push(file.clone());
            }
            match median_error(&envelope) {
                None => {}
                Some((median, judged, worst)) => {
                    judged_logs += 1;
                    let alpha_beta = median_error(&fit::holdout_max(&points, 1)).map_or("-".into(), |m| format!("{:.1}%", m.0 * 100.0));
                    println!(
                        "  {file} run {}: median {:.1}% over {judged} held-out sizes >= 1 MB (worst {:.1}%); one alpha-beta line: {alpha_beta}",
                        run.index,
                        median * 100.0,
                        worst * 100.0
                    );
                    if median > 0.10 {
                        failures.push(format!("{file}: {:.1}%", median * 100.0));
                    }
                }
            }
        }
    }
    assert_eq!(skipped, TOO_SHORT, "only the logs known to be too short are skipped");
    assert_eq!(judged_logs, files.len() - TOO_SHORT.len());
    assert!(failures.is_empty(), "median hold-out error above 10%: {failures:?}");
}
