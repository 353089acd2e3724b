//! The report of the fixture run: the data behind every figure against golden files, figures
//! that decode with the right content, and a self-contained index.html.
//!
//! After an intended change, regenerate the golden files with
//! `HSAP_UPDATE_GOLDEN=1 cargo nextest run --release --test report_golden` and review the diff.

mod report_common;

use hsap::report::palette::{shape_colour, strategy_colour, PART_COLOURS};
use hsap::formats::run::RunData;
use hsap::report::{self, Report};
use report_common::{decode_png, fixture, rgb};
use std::path::Path;

const FIGURES: [&str; 8] = [
    "trace",
    "step_time",
    "speedup",
    "breakdown",
    "plans",
    "memory",
    "predicted_vs_measured",
    "calibration_fit",
];

fn build() -> (RunData, Report) {
    let data = RunData::load(&fixture()).expect("the fixture loads");
    let report = report::build(&data).expect("the report builds");
    (data, report)
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/report")
        .join(name);
    if std::env::var_os("HSAP_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with HSAP_UPDATE_GOLDEN=1 to create it", path.display()));
    if expected != actual {
        let (line, (want, got)) = expected
            .lines()
            .chain(std::iter::repeat("<end of file>"))
            .zip(actual.lines().chain(std::iter::repeat("<end of file>")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .expect("texts differ");
        panic!(
            "{name} differs from {} at line {}:\n  expected: {want}\n  actual:   {got}\nif the change is intended, rerun with HSAP_UPDATE_GOLDEN=1 and review the diff",
            path.display(),
            line + 1
        );
    }
}

#[test]
fn data_behind_every_figure_matches_the_golden_files() {
    let (data, report) = build();
    assert!(
        data.warnings.is_empty(),
        "the fixture is consistent: {:?}",
        data.warnings
    );
    let ids: Vec<&str> = report.figures.iter().map(|f| f.id).collect();
    assert_eq!(ids, FIGURES);
    for f in &report.figures {
        golden(&format!("{}.csv", f.id), &f.csv);
    }
    golden("summary.md", &report.summary_md);
}

/// A few numbers of the golden files worked out by hand from the fixture's batches.csv, so that
/// the golden files are known right and not merely unchanged.
#[test]
fn figure_data_checked_by_hand() {
    let (_, report) = build();
    let csv = |id: &str| -> Vec<csv::StringRecord> {
        let f = report.figures.iter().find(|f| f.id == id).expect("figure");
        csv::Reader::from_reader(f.csv.as_bytes())
            .records()
            .map(|r| r.expect("row"))
            .collect()
    };
    let num = |r: &csv::StringRecord, i: usize| -> f64 { r[i].parse().expect("number") };

    // batches.csv batch 0: hsap 0.930467 s, flexsp 0.947611 s.
    let speedup = csv("speedup");
    let flexsp0 = speedup.iter().find(|r| &r[0] == "flexsp" && &r[1] == "0").expect("row");
    assert!((num(flexsp0, 4) - 0.947611 / 0.930467).abs() < 1e-12);
    assert_eq!(speedup.len(), 5 * 6, "five baselines, six batches");

    // hsap's compute_s over the six batches, averaged.
    let breakdown = csv("breakdown");
    let hsap = breakdown.iter().find(|r| &r[0] == "hsap").expect("row");
    let compute = [0.891981, 0.653378, 0.673948, 3.24925, 0.625852, 2.53024];
    assert!((num(hsap, 2) - compute.iter().sum::<f64>() / 6.0).abs() < 1e-12);

    // Batch 3: hsap runs the 63,840-token document on one u8 x r2 group in the first of two
    // micro-batches, so that shape holds 16 GPUs half of the time: 8 on average.
    let plans = csv("plans");
    let row = plans
        .iter()
        .find(|r| &r[0] == "hsap" && &r[1] == "3" && &r[2] == "8" && &r[3] == "2")
        .expect("row");
    assert_eq!((&row[5], num(row, 6)), ("1", 8.0));
    // Every strategy places all 16 GPUs in every micro-batch.
    for strategy in [
        "hsap",
        "flexsp",
        "megatron-dcp",
        "static-ulysses",
        "static-ring",
        "static-usp",
    ] {
        for batch in 0..6 {
            let gpus: f64 = plans
                .iter()
                .filter(|r| &r[0] == strategy && r[1] == batch.to_string())
                .map(|r| num(r, 6))
                .sum();
            assert!((gpus - 16.0).abs() < 1e-9, "{strategy} batch {batch}: {gpus} GPUs");
        }
    }

    // 38 GiB limit; trace buckets hold all 96 documents.
    assert!(csv("memory").iter().all(|r| num(r, 3) == 38.0));
    assert_eq!(csv("trace").iter().map(|r| num(r, 2)).sum::<f64>(), 96.0);
    // 18 measurements, one without a prediction, plus 22 fit points.
    assert_eq!(csv("predicted_vs_measured").len(), 17 + 22);
}

#[test]
fn every_png_decodes_with_content() {
    let (data, report) = build();
    let strategies = data.strategies();
    for f in &report.figures {
        let png = decode_png(&f.png);
        let (w, h) = svg_size(&f.svg);
        assert_eq!(
            (png.width, png.height),
            (
                (w as f64 * report::PNG_SCALE) as u32,
                (h as f64 * report::PNG_SCALE) as u32
            ),
            "{}",
            f.id
        );
        assert!(png.counts.len() > 50, "{}: only {} colours", f.id, png.counts.len());
        let inked = png.not_white() as f64 / png.total() as f64;
        assert!(
            inked > 0.03,
            "{}: only {:.1}% of the pixels are not white",
            f.id,
            100.0 * inked
        );
    }
    let png = |id: &str| decode_png(&report.figures.iter().find(|f| f.id == id).expect("figure").png);
    // The same colour for the same strategy in every figure that shows strategies.
    for id in ["step_time", "breakdown", "memory"] {
        let p = png(id);
        for s in &strategies {
            assert!(p.exactly(rgb(strategy_colour(s))) > 100, "{id}: no {s} colour");
        }
    }
    let p = png("speedup");
    for s in strategies.iter().filter(|s| *s != "hsap") {
        assert!(p.exactly(rgb(strategy_colour(s))) > 100, "speedup: no {s} colour");
    }
    let p = png("breakdown");
    for c in PART_COLOURS {
        assert!(p.exactly(rgb(c)) > 1000, "breakdown: a part is missing");
    }
    let p = png("plans");
    for (u, r) in [(8, 2), (8, 1), (4, 1), (1, 16), (16, 1), (1, 4), (1, 2), (2, 1)] {
        assert!(p.exactly(rgb(shape_colour(u, r))) > 500, "plans: no u{u} x r{r}");
    }
}

fn svg_size(svg: &str) -> (u32, u32) {
    let attr = |name: &str| -> u32 {
        let at = svg.find(&format!("{name}=\"")).expect("attribute") + name.len() + 2;
        svg[at..].split('"').next().expect("value").parse().expect("number")
    };
    (attr("width"), attr("height"))
}

#[test]
fn index_html_is_self_contained_and_shows_every_figure() {
    let (_, report) = build();
    let html = &report.index_html;
    assert_eq!(html.matches("<svg").count(), FIGURES.len());
    for id in FIGURES {
        let at = html
            .find(&format!("<figure id=\"figure-{id}\""))
            .unwrap_or_else(|| panic!("no figure {id}"));
        assert!(
            html[at..].trim_start_matches(|c| c != '>').starts_with(">\n<svg"),
            "figure {id} has no inline SVG"
        );
    }
    // Nothing is fetched: no src attributes, scripts, stylesheets or URLs other than the SVG
    // namespace.
    assert!(!html.contains("src="));
    assert!(!html.contains("<script"));
    assert!(!html.contains("<link"));
    let urls = html.matches("http://").count() + html.matches("https://").count();
    assert_eq!(urls, html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count());
    // The headline table shows hsap with its colour.
    assert!(html.contains("background:#d55e00\"></span>hsap</td><td>9.082</td>"));
}

#[test]
fn render_writes_every_file() {
    let dir = report_common::fixture_copy(&[]);
    let files = report::render(dir.path()).expect("render");
    assert_eq!(files.dir, dir.path().join("report"));
    assert_eq!(files.files.len(), 3 * FIGURES.len() + 2);
    for id in FIGURES {
        for ext in ["svg", "png", "csv"] {
            let path = files.dir.join(format!("{id}.{ext}"));
            assert!(
                std::fs::metadata(&path).expect("written").len() > 0,
                "{}",
                path.display()
            );
        }
    }
    let (_, report) = build();
    let written = std::fs::read_to_string(&files.index_html).expect("index.html");
    assert_eq!(written, report.index_html, "render writes what build makes");
}
