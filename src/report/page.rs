//! The report's text: `summary.md` (the headline numbers) and `index.html` (the same numbers and
//! every figure's SVG inline, so that the one file shows everything without network access).

use crate::formats::run::{RunData, Summary};
use super::palette::{hex, strategy_colour};
use super::tables::{AccuracyRow, SpeedupStats};
use super::Figure;
use std::fmt::Write;

/// Relative errors are judged on messages from this size up (issue 6's fit target).
const LARGE_MESSAGE_BYTES: f64 = 1024.0 * 1024.0;

/// The markdown summary: run, headline table, speedup distributions, model accuracy, figures.
/// Whether a strategy's total lies apart from hsap's or within its error bar ("-" without a bar).
fn interval_text(s: &crate::formats::run::Summary, st: &crate::formats::run::StrategySummary) -> &'static str {
    let hsap = s.strategies.iter().find(|x| x.name == "hsap").map(|x| x.total_time_s);
    match (s.error_bar, hsap) {
        (Some(_), _) if st.name == "hsap" => "-",
        (Some(bar), Some(h)) if bar.overlap(h, st.total_time_s) => "overlaps",
        (Some(_), Some(_)) => "apart",
        _ => "-",
    }
}

pub fn summary_md(data: &RunData, speedups: &[SpeedupStats], accuracy: &[AccuracyRow], figures: &[Figure]) -> String {
    let s = &data.summary;
    let mut md = String::new();
    let _ = writeln!(md, "# hsap report: {}\n", s.trace);
    let _ = writeln!(md, "{}\n", run_line(s));
    if !s.command.is_empty() {
        let _ = writeln!(md, "Produced by `{}`.\n", s.command);
    }
    let _ = writeln!(md, "## Verdict\n\n{}\n", crate::recommend::verdict(data).paragraph);
    let _ = writeln!(md, "## Headline\n");
    if let Some(line) = dropped_line(data) {
        let _ = writeln!(md, "**{line}**\n");
    }
    let _ = writeln!(
        md,
        "| strategy | total time (s) | mean step (s) | speedup vs best static ({}) | interval vs hsap's |",
        s.best_static
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for st in &s.strategies {
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.4} | {} | {} |",
            st.name,
            st.total_time_s,
            st.mean_step_s,
            speedup_text(st.speedup_vs_best_static),
            interval_text(s, st)
        );
    }
    if let Some(bar) = s.error_bar {
        let _ = writeln!(
            md,
            "\nTimes carry the {} stack's development-set error bar, {:+.0}% to {:+.0}% (docs/cost-model.md section 12): where two strategies' intervals overlap, the model cannot tell them apart.",
            s.stack,
            100.0 * bar.low,
            100.0 * bar.high
        );
    }
    let _ = writeln!(md, "\n{}\n", solve_line(s));
    if let Some(why) = &s.uncalibrated {
        let _ = writeln!(md, "**Uncalibrated cluster preset**: {why}\n");
    }
    if let Some(table) = lasp_schemes_table(data) {
        let _ = writeln!(md, "{table}");
    }
    if !s.priced_by.is_empty() {
        let _ = writeln!(md, "Priced on the calibrated cluster by:\n");
        for line in &s.priced_by {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## Speedup of hsap per batch\n");
    if speedups.is_empty() {
        let _ = writeln!(md, "{}", no_baseline(s));
    } else {
        let _ = writeln!(md, "Baseline step time over hsap's, per batch (whole run: total over total).\n");
        let _ = writeln!(md, "| baseline | batches | min | p25 | median | p75 | max | mean | whole run | batches hsap is slower |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for st in speedups {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            st.baseline, st.batches, st.min, st.p25, st.median, st.p75, st.max, st.mean, st.total, st.batches_slower
        );
    }
    let errors = accuracy_lines(accuracy);
    if !errors.is_empty() {
        let _ = writeln!(md, "\n## Model against measurements\n");
        let _ = writeln!(md, "| source | series | points | median abs. error | max abs. error |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        for e in &errors {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1}% | {:.1}% |",
                e.source,
                e.series,
                e.points,
                100.0 * e.median,
                100.0 * e.max
            );
        }
    }
    let _ = writeln!(md, "\n## Figures\n");
    for f in figures {
        let _ = writeln!(
            md,
            "{}. **{}** ({id}.svg, {id}.png; data {id}.csv): {}",
            f.number,
            f.title,
            f.caption,
            id = f.id
        );
    }
    if !data.warnings.is_empty() {
        let _ = writeln!(md, "\n## Warnings\n");
        for w in &data.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    md
}

/// Which schemes each strategy's groups ran, for runs whose groups run linear-attention schemes
/// (a hybrid's groups split its two layer kinds differently): groups and GPU-groups (GPUs summed
/// over groups) per scheme. None for softmax-only runs, whose schemes the plans figure shows.
fn lasp_schemes_table(data: &RunData) -> Option<String> {
    if !data.groups.iter().any(|g| g.scheme.is_lasp()) {
        return None;
    }
    let mut rows: Vec<(&str, crate::scheme::Scheme, u64, u64)> = Vec::new();
    for g in &data.groups {
        match rows.iter_mut().find(|r| r.0 == g.strategy && r.1 == g.scheme) {
            Some(r) => {
                r.2 += 1;
                r.3 += u64::from(g.size);
            }
            None => rows.push((g.strategy.as_str(), g.scheme, 1, u64::from(g.size))),
        }
    }
    let mut md = String::from("## Schemes of the groups\n\n");
    md.push_str("lasp1 and lasp2 split linear-attention layers (LASP, LASP-2); lasp2h runs LASP-2 on the linear layers and an all-gather of K and V on the softmax layers; a one-GPU group (ulysses u1xr1) splits nothing (docs/schemes.md).\n\n");
    md.push_str("| strategy | scheme | groups | GPUs in them (summed over groups) |\n|---|---|---:|---:|\n");
    for (strategy, scheme, groups, gpus) in rows {
        let _ = writeln!(md, "| {strategy} | {} | {groups} | {gpus} |", scheme.name());
    }
    Some(md)
}

/// Why there is no speedup to show: no baseline asked for, or every one asked for skipped (a
/// linear-attention model, a cluster planned in pods), with the reasons the planner gave.
fn no_baseline(s: &Summary) -> String {
    let skipped = &s.planner.skipped;
    if skipped.is_empty() {
        return "No baseline ran (`--baselines none`): there is nothing to compare hsap with.".to_string();
    }
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, why) in skipped {
        match reasons.iter_mut().find(|(w, _)| *w == why.as_str()) {
            Some((_, names)) => names.push(name.as_str()),
            None => reasons.push((why.as_str(), vec![name.as_str()])),
        }
    }
    let reasons: Vec<String> = reasons.iter().map(|(why, names)| format!("{} ({why})", names.join(", "))).collect();
    format!("No baseline could plan this run: there is nothing to compare hsap with. Skipped: {}.", reasons.join("; "))
}

/// The documents the run left out, as the headline says it: how many, and their share of the
/// trace's tokens.
fn dropped_line(data: &RunData) -> Option<String> {
    let dropped = data.summary.planner.dropped;
    if dropped == 0 {
        return None;
    }
    let stats = &data.trace.stats;
    let share = 100.0 * stats.over_max_seq_tokens as f64 / stats.total_tokens.max(1) as f64;
    let max_seq = data.summary.max_seq.or(stats.max_seq).map_or_else(|| "--max-seq".to_string(), |m| format!("--max-seq {m}"));
    Some(format!(
        "Dropped: {dropped} documents longer than {max_seq} ({share:.1}% of the trace's tokens) are in no plan; every strategy's time leaves them out (--over-long split plans them in pieces)."
    ))
}

fn run_line(s: &Summary) -> String {
    let batch = match (s.global_batch, s.batch_tokens) {
        (Some(n), _) => format!("global batch {n} documents"),
        (None, Some(t)) => format!("global batch {t} tokens"),
        (None, None) => "global batch unstated".into(),
    };
    let max_seq = s
        .max_seq
        .map(|m| format!(", max sequence {m} tokens"))
        .unwrap_or_default();
    let pods = match s.planner.pods {
        p if p > 1 => format!(
            " Planned as {p} identical pods of {} nodes: each micro-batch's documents dealt to the pods by work, every pod planned with the same group shapes, no group spanning two pods.",
            s.planner.pod_nodes
        ),
        _ => String::new(),
    };
    format!(
        "Model {} on {}: {} nodes × {} GPUs ({} GPUs{}); {batch}{max_seq}; {} batches.{pods}",
        s.model,
        s.cluster,
        s.nodes,
        s.gpus_per_node,
        s.gpus(),
        s.domains_words(),
        s.batches
    )
}

fn solve_line(s: &Summary) -> String {
    format!(
        "hsap's solve time per batch: median {:.1} ms, p99 {:.1} ms, max {:.1} ms.",
        s.solve_ms.median, s.solve_ms.p99, s.solve_ms.max
    )
}

/// The model's error on one series of measurements.
struct ErrorLine {
    source: String,
    series: String,
    points: usize,
    median: f64,
    max: f64,
}

/// Median and largest absolute relative error per (source, series); for calibration points, the
/// held-out points of 1 MiB and more get a line of their own, the figure the fit is judged by.
fn accuracy_lines(rows: &[AccuracyRow]) -> Vec<ErrorLine> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.source, r.series.as_str())) {
            keys.push((r.source, r.series.as_str()));
        }
    }
    let mut lines: Vec<ErrorLine> = keys
        .iter()
        .filter_map(|&(source, series)| {
            error_line(
                source,
                series,
                rows.iter().filter(|r| r.source == source && r.series == series),
            )
        })
        .collect();
    let held_out = rows
        .iter()
        .filter(|r| r.held_out && r.bytes.is_some_and(|b| b >= LARGE_MESSAGE_BYTES));
    lines.extend(error_line(
        "calibration",
        "held out, ≥ 1 MiB (all collectives)",
        held_out,
    ));
    lines
}

fn error_line<'a>(source: &str, series: &str, rows: impl Iterator<Item = &'a AccuracyRow>) -> Option<ErrorLine> {
    let errors = crate::stats::sorted(rows.map(|r| r.rel_error.abs()));
    Some(ErrorLine {
        source: source.to_string(),
        series: series.to_string(),
        points: errors.len(),
        median: crate::stats::quantile_sorted(&errors, 0.5)?,
        max: *errors.last()?,
    })
}

/// The HTML page: everything inline; a Content-Security-Policy forbids any fetch, so a page that
/// tried one would show an error in the browser's console.
pub fn index_html(data: &RunData, speedups: &[SpeedupStats], accuracy: &[AccuracyRow], figures: &[Figure]) -> String {
    let s = &data.summary;
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hsap report: {title}</title>
<style>
body {{ font-family: sans-serif; color: #222; margin: 0 auto; max-width: 1160px; padding: 16px 24px 48px; line-height: 1.45; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }}
table {{ border-collapse: collapse; margin: 0.6em 0; }}
th, td {{ padding: 4px 12px; border-bottom: 1px solid #e4e4e4; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f5f5f5; }}
.swatch {{ display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin-right: 0.45em; vertical-align: -0.1em; }}
figure {{ margin: 1.2em 0 2em; }}
figure svg {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ color: #444; margin-top: 0.4em; }}
code {{ background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }}
.warn {{ color: #8a4b00; }}
.verdict {{ background: #f6f8fa; border-left: 4px solid #d55e00; padding: 8px 12px; }}
nav a {{ margin-right: 1em; }}
</style>
</head>
<body>
<h1>hsap report: {title}</h1>
<p>{run}</p>
"#,
        title = esc(&s.trace),
        run = esc(&run_line(s)),
    );
    if !s.command.is_empty() {
        let _ = writeln!(h, "<p>Produced by <code>{}</code>.</p>", esc(&s.command));
    }
    let _ = writeln!(h, "<p class=\"verdict\"><strong>Verdict.</strong> {}</p>", esc(&crate::recommend::verdict(data).paragraph));
    let _ = writeln!(h, "<nav>");
    for f in figures {
        let _ = writeln!(h, "<a href=\"#fig-{}\">{}. {}</a>", f.id, f.number, esc(f.title));
    }
    let _ = writeln!(h, "</nav>");
    let _ = writeln!(h, "<h2>Headline</h2>");
    if let Some(line) = dropped_line(data) {
        let _ = writeln!(h, "<p class=\"warn\" id=\"dropped\"><strong>{}</strong></p>", esc(&line));
    }
    let _ = writeln!(h, "<table id=\"headline\">");
    let _ = writeln!(
        h,
        "<tr><th>strategy</th><th>total time (s)</th><th>mean step (s)</th><th>speedup vs best static ({})</th><th>interval vs hsap's</th></tr>",
        esc(&s.best_static)
    );
    for st in &s.strategies {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{:.3}</td><td>{:.4}</td><td>{}</td><td>{}</td></tr>",
            swatch(&st.name),
            st.total_time_s,
            st.mean_step_s,
            speedup_text(st.speedup_vs_best_static),
            interval_text(s, st)
        );
    }
    let _ = writeln!(h, "</table>\n<p>{}</p>", esc(&solve_line(s)));
    if let Some(bar) = s.error_bar {
        let _ = writeln!(
            h,
            "<p>Times carry the {} stack's development-set error bar, {:+.0}% to {:+.0}%: where two strategies' intervals overlap, the model cannot tell them apart; the step-time figure shades each strategy's band.</p>",
            esc(&s.stack),
            100.0 * bar.low,
            100.0 * bar.high
        );
    }
    if let Some(why) = &s.uncalibrated {
        let _ = writeln!(h, "<p id=\"uncalibrated\"><strong>Uncalibrated cluster preset</strong>: {}</p>", esc(why));
    }
    if !s.priced_by.is_empty() {
        let _ = writeln!(h, "<p>Priced on the calibrated cluster by:</p>\n<ul id=\"priced-by\">");
        for line in &s.priced_by {
            let _ = writeln!(h, "<li>{}</li>", esc(line));
        }
        let _ = writeln!(h, "</ul>");
    }
    let _ = writeln!(h, "<h2>Speedup of hsap per batch</h2>");
    if speedups.is_empty() {
        let _ = writeln!(h, "<p>{}</p>", esc(&no_baseline(s)));
    } else {
        let _ = writeln!(h, "<table id=\"speedups\">");
        let _ = writeln!(
            h,
            "<tr><th>baseline</th><th>batches</th><th>min</th><th>median</th><th>max</th><th>mean</th><th>whole run</th><th>batches hsap is slower</th></tr>"
        );
    }
    for st in speedups {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.3}×</td><td>{:.3}×</td><td>{:.3}×</td><td>{:.3}×</td><td>{:.3}×</td><td>{}</td></tr>",
            swatch(&st.baseline),
            st.batches,
            st.min,
            st.median,
            st.max,
            st.mean,
            st.total,
            st.batches_slower
        );
    }
    if !speedups.is_empty() {
        let _ = writeln!(h, "</table>");
    }
    let errors = accuracy_lines(accuracy);
    if !errors.is_empty() {
        let _ = writeln!(h, "<h2>Model against measurements</h2>\n<table id=\"accuracy\">");
        let _ = writeln!(
            h,
            "<tr><th>source</th><th>series</th><th>points</th><th>median abs. error</th><th>max abs. error</th></tr>"
        );
        for e in &errors {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td></tr>",
                esc(&e.source),
                esc(&e.series),
                e.points,
                100.0 * e.median,
                100.0 * e.max
            );
        }
        let _ = writeln!(h, "</table>");
    }
    for f in figures {
        let _ = writeln!(
            h,
            "<h2 id=\"fig-{id}\">{n}. {title}</h2>\n<figure id=\"figure-{id}\" class=\"figure\">\n{svg}\n<figcaption>{caption} Files: <a href=\"{id}.svg\">{id}.svg</a>, <a href=\"{id}.png\">{id}.png</a>, data <a href=\"{id}.csv\">{id}.csv</a>.</figcaption>\n</figure>",
            id = f.id,
            n = f.number,
            title = esc(f.title),
            svg = f.svg.trim(),
            caption = esc(&f.caption),
        );
    }
    if !data.warnings.is_empty() {
        let _ = writeln!(h, "<h2>Warnings</h2>\n<ul class=\"warn\">");
        for w in &data.warnings {
            let _ = writeln!(h, "<li>{}</li>", esc(w));
        }
        let _ = writeln!(h, "</ul>");
    }
    let _ = writeln!(h, "</body>\n</html>");
    h
}

fn swatch(strategy: &str) -> String {
    format!(
        "<span class=\"swatch\" style=\"background:{}\"></span>{}",
        hex(strategy_colour(strategy)),
        esc(strategy)
    )
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(super::esc(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}

/// A speedup as `1.234×`, or a dash when the run has no static baseline to compare with.
fn speedup_text(speedup: Option<f64>) -> String {
    speedup.map_or("-".into(), |x| format!("{x:.3}×"))
}
