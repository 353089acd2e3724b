//! The cost model against the development set of published end-to-end training runs
//! (reference/e2e/). Run with `--no-capture` to see the per-row and per-source tables:
//! `cargo nextest run --release --no-capture -E 'binary(cost_devset)'`.

use hsap::cost::devset::{devset, summaries, Summary};

#[test]
fn development_set_per_source() {
    let set = devset().unwrap();
    println!("line source                          model                 gpus layout                  dtype  seq    measured predicted  error");
    for c in &set.checks {
        println!(
            "{:>4} {:<31} {:<20} {:>5} {:<23} {:<5} {:>6} {:>9.0} {:>9.0} {:>+6.1}%",
            c.line, c.source_id, c.model, c.gpus, c.layout, c.dtype.name(), c.seq_len,
            c.measured_tokens_per_s_per_gpu, c.predicted_tokens_per_s_per_gpu, 100.0 * c.error
        );
    }
    for s in &set.skipped {
        println!("skipped line {} {} {}: {}", s.line, s.source_id, s.model, s.reason);
    }
    let print = |title: &str, rows: Vec<Summary>| {
        println!("\n{title:<32} rows  median|err|  signed median");
        for s in rows {
            println!("{:<32} {:>4} {:>10.1}% {:>+12.1}%", s.group, s.rows, 100.0 * s.median_abs_error, 100.0 * s.signed_median_error);
        }
    };
    print("source", summaries(&set.checks, |c| c.source_id.clone()));
    print("stack", summaries(&set.checks, |c| c.stack.clone()));
    print("generation", summaries(&set.checks, |c| format!("{:?}", c.generation)));
    print("all", vec![Summary::of("all", set.checks.iter().map(|c| c.error))]);
    // Every row of the set is either priced or skipped with a reason.
    assert_eq!(set.checks.len() + set.skipped.len(), 150);
    assert!(set.skipped.iter().all(|s| !s.reason.is_empty()));
    assert!(set.checks.len() >= 60, "{} rows priced", set.checks.len());
    assert!(set.checks.iter().all(|c| c.predicted_tokens_per_s_per_gpu.is_finite() && c.predicted_tokens_per_s_per_gpu > 0.0));
}
