//! The cost model against the development set of published end-to-end training runs
//! (reference/e2e/). Run with `--no-capture` to see the per-row and per-source tables:
//! `cargo nextest run --release --no-capture --test cost_devset`.
//!
//! Three predictions per row: the priced terms alone (`priced`), the stack's fitted time factor
//! fitted on every other source (`cross-validated`: what the targets are asserted on), and the
//! presets' factor fitted on all rows (`fitted`, shown, not asserted on).

use hsap::cost::devset::{cross_validate, devset, fitted_with_bars, summaries, DevCheck, Summary};
use hsap::stack::Stack;
use std::collections::BTreeSet;

fn print(title: &str, rows: Vec<Summary>) {
    println!("\n{title:<32} rows  median|err|  signed median");
    for s in rows {
        println!("{:<32} {:>4} {:>10.1}% {:>+12.1}%", s.group, s.rows, 100.0 * s.median_abs_error, 100.0 * s.signed_median_error);
    }
}

/// The checks with `error` replaced by another prediction's error, to reuse the summaries.
fn with_errors(checks: &[DevCheck], errors: &[f64]) -> Vec<DevCheck> {
    checks.iter().zip(errors).map(|(c, &e)| DevCheck { error: e, ..c.clone() }).collect()
}

#[test]
fn development_set_per_source() {
    let set = devset().unwrap();
    let cv = cross_validate(&set.checks);
    assert_eq!(cv.len(), set.checks.len());
    println!("line source                          model              gpus layout                  dtype   seq stack              measured   priced   cv-err");
    for (c, v) in set.checks.iter().zip(&cv) {
        assert_eq!(c.line, v.line);
        println!(
            "{:>4} {:<31} {:<17} {:>5} {:<23} {:<4} {:>6} {:<18} {:>8.0} {:>+7.1}% {:>+7.1}%",
            c.line, c.source_id, c.model, c.gpus, c.layout, c.dtype.name(), c.seq_len, c.stack,
            c.measured_tokens_per_s_per_gpu, 100.0 * c.priced_error, 100.0 * v.error
        );
    }
    for s in &set.skipped {
        println!("skipped line {} {} {}: {}", s.line, s.source_id, s.model, s.reason);
    }
    let priced: Vec<f64> = set.checks.iter().map(|c| c.priced_error).collect();
    let cross: Vec<f64> = cv.iter().map(|c| c.error).collect();
    let fitted: Vec<f64> = set.checks.iter().map(|c| c.error).collect();
    for (name, errors) in [("priced terms only", &priced), ("cross-validated (leave one source out)", &cross)] {
        let checks = with_errors(&set.checks, errors);
        println!("\n=== {name}");
        print("source", summaries(&checks, |c| c.source_id.clone()));
        print("stack", summaries(&checks, |c| c.stack.clone()));
        print("generation", summaries(&checks, |c| format!("{:?}", c.generation)));
        print("all", vec![Summary::of("all", errors.iter().copied())]);
    }
    print("\nall, presets' fitted factors", vec![Summary::of("all", fitted.iter().copied())]);
    println!("\nstack terms fitted on every row (models/stacks/*.toml [fitted] records them):");
    for (stack, f) in fitted_with_bars(&set.checks) {
        println!("{stack:<20} time_factor = {:.3}  residual_low = {:+.3}  residual_high = {:+.3}  rows = {}", f.time_factor, f.residual_low, f.residual_high, f.rows);
    }

    // Every row of the set is either priced or skipped with a reason.
    assert_eq!(set.checks.len() + set.skipped.len(), 150);
    assert!(set.skipped.iter().all(|s| !s.reason.is_empty()));
    // Coverage: at least 60 rows, 4 stacks and 3 GPU generations.
    assert!(set.checks.len() >= 60, "{} rows priced", set.checks.len());
    let stacks: BTreeSet<&str> = set.checks.iter().map(|c| c.stack.as_str()).collect();
    let generations: BTreeSet<String> = set.checks.iter().map(|c| format!("{:?}", c.generation)).collect();
    assert!(stacks.len() >= 4, "{stacks:?}");
    assert!(generations.len() >= 3, "{generations:?}");
    // The targets, on the cross-validated predictions: median |error| at most 15%, no
    // systematic optimism or pessimism (signed median within +-5%).
    let all = Summary::of("all", cross.iter().copied());
    assert!(all.median_abs_error <= 0.15, "cross-validated median |error| {:.1}%", 100.0 * all.median_abs_error);
    assert!(all.signed_median_error.abs() <= 0.05, "cross-validated signed median {:+.1}%", 100.0 * all.signed_median_error);
}

/// The presets record what the development set fits: a preset whose `[fitted]` terms drift from
/// the fit (after a physics change, say) fails here with the values to write.
#[test]
fn stack_presets_record_the_fitted_terms() {
    let set = devset().unwrap();
    let mut stale = Vec::new();
    for (name, want) in fitted_with_bars(&set.checks) {
        let got = Stack::resolve(&name).unwrap().fitted;
        let close = |a: f64, b: f64| (a - b).abs() <= 0.005;
        if !(close(got.time_factor, want.time_factor)
            && close(got.residual_low, want.residual_low)
            && close(got.residual_high, want.residual_high)
            && got.rows == want.rows)
        {
            stale.push(format!(
                "{name}: [fitted] time_factor = {:.3}, residual_low = {:.3}, residual_high = {:.3}, rows = {} (preset has {got:?})",
                want.time_factor, want.residual_low, want.residual_high, want.rows
            ));
        }
    }
    assert!(stale.is_empty(), "update models/stacks/:\n{}", stale.join("\n"));
}
