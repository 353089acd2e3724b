//! The measured-against-predicted comparison `validate` prints, on rows like the ones it writes.

use hsap::formats::measurements::{MeasuredKind, Measurement};
use hsap::gpu::report::{compare, plot, source, write_table, MICRO_BATCH};

fn row(kind: MeasuredKind, op: &str, time_s: f64, predicted_s: Option<f64>, tags: &[(&str, String)]) -> Measurement {
    Measurement { time_s, predicted_s, repeats: 5, source: source("validate plan.json", tags), ..Measurement::new(kind, op) }
}

fn tags(rank: u32, mb: u32, group: u32) -> Vec<(&'static str, String)> {
    vec![("batch", "4".into()), ("rank", rank.to_string()), ("mb", mb.to_string()), ("group", group.to_string())]
}

/// Two ranks in two groups of one micro-batch: rank 1 is slower.
fn rows() -> Vec<Measurement> {
    let mut rows = Vec::new();
    for (rank, group, t, pred) in [(0, 0, 0.050, 0.040), (1, 1, 0.060, 0.048)] {
        rows.push(row(MeasuredKind::Step, "step", t + 0.01, Some(0.055), &tags(rank, 0, group)[..2]));
        rows.push(row(MeasuredKind::Phase, MICRO_BATCH, t, Some(pred), &tags(rank, 0, group)));
        rows.push(row(MeasuredKind::Phase, "layer forward", t / 3.0, None, &tags(rank, 0, group)));
        let mut op = tags(rank, 0, group);
        op.push(("calls", "32".into()));
        rows.push(row(MeasuredKind::Collective, "all_to_all", 1e-4, Some(8e-5), &op));
    }
    rows
}

#[test]
fn the_slowest_rank_decides_and_errors_are_relative_to_the_prediction() {
    let c = compare(&rows());
    let get = |level: &str, name: &str| c.iter().find(|c| c.level == level && c.name == name).unwrap_or_else(|| panic!("{level} {name}: {c:?}"));
    let step = get("step", "batch 4");
    assert!((step.measured_s - 0.070).abs() < 1e-12 && step.predicted_s == Some(0.055));
    assert!((step.relative_error().unwrap() - (0.070 - 0.055) / 0.055).abs() < 1e-12);
    // The micro-batch is its slowest rank; its prediction its slowest group's.
    let mb = get("micro-batch", "batch 4 mb 0");
    assert_eq!((mb.measured_s, mb.predicted_s), (0.060, Some(0.048)));
    let g0 = get("group", "batch 4 mb 0 group 0");
    assert_eq!((g0.measured_s, g0.predicted_s), (0.050, Some(0.040)));
    let phase = get("phase", "batch 4 mb 0 layer forward");
    assert_eq!((phase.measured_s, phase.predicted_s), (0.020, None));
    // Ops: every call on every rank summed.
    let a2a = get("op", "all_to_all");
    assert!((a2a.measured_s - 2.0 * 32.0 * 1e-4).abs() < 1e-12 && (a2a.predicted_s.unwrap() - 2.0 * 32.0 * 8e-5).abs() < 1e-12);
    let mut text = Vec::new();
    write_table(&c, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("batch 4 mb 0") && text.contains("+25.0%"), "{text}");
}

#[test]
fn the_plot_is_an_svg_with_every_kind_measured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("measurements.svg");
    plot(&rows(), &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    // The report's figure: measured time on x, predicted on y, one series per kind of operation.
    assert!(svg.starts_with("<svg") && svg.contains("Predicted against measured time"), "{}", &svg[..200]);
    assert!(svg.contains("measured time (log scale)") && svg.contains("predicted time (log scale)"));
    assert!(svg.contains("all_to_all") && svg.contains("step") && !svg.contains("GEMM"));
}
