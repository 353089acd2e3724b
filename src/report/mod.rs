//! The plotted comparison report: from a run directory (docs/report.md) to
//! `DIR/report/index.html`, each figure as SVG and PNG with the CSV it is drawn from, and
//! `summary.md` with the headline numbers.
//!
//! [`build`] is a pure function from loaded data to the report's files in memory; [`render`]
//! reads a run directory and writes them.

mod draw;
mod font;
mod page;
pub mod palette;
pub mod tables;

pub use font::{DEFAULT_FONT, FONT_ENV};

use crate::formats::fit_points::FitPoint;
use crate::formats::measurements::Measurement;
use crate::formats::run::RunData;
use crate::formats::to_csv;
use crate::error::{Error, Result};
use draw::{Plot, Theme};
use image::ImageEncoder;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The PNGs are drawn at this multiple of the SVGs' nominal size, to stay sharp when zoomed.
pub const PNG_SCALE: f64 = 1.5;

pub use crate::formats::run::REPORT_DIR;

/// Figures drawn only when the run holds their data.
const OPTIONAL_FIGURES: [&str; 3] = ["speedup", "predicted_vs_measured", "calibration_fit"];

/// One figure, ready to write.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File stem of its files (`step_time` -> step_time.svg, .png, .csv).
    pub id: &'static str,
    /// Its number in the report.
    pub number: usize,
    pub title: &'static str,
    /// What it shows and how to read it.
    pub caption: String,
    /// The data it is drawn from.
    pub csv: String,
    pub svg: String,
    pub png: Vec<u8>,
}

/// The whole report in memory.
#[derive(Debug, Clone)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub summary_md: String,
    pub index_html: String,
    pub warnings: Vec<String>,
}

/// What [`render`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub dir: PathBuf,
    pub index_html: PathBuf,
    /// Every file written, index.html included.
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Reads the run directory `run_dir` and writes its report into `run_dir/report/`.
pub fn render(run_dir: &Path) -> Result<ReportFiles> {
    render_to(run_dir, &run_dir.join(REPORT_DIR))
}

/// Reads the run directory `run_dir` and writes its report into `out`.
pub fn render_to(run_dir: &Path, out: &Path) -> Result<ReportFiles> {
    let data = RunData::load(run_dir)?;
    let report = build(&data)?;
    write(&report, out)
}

/// Writes a built report into `out` (created if missing).
pub fn write(report: &Report, out: &Path) -> Result<ReportFiles> {
    let mut files = Vec::new();
    let mut put = |name: String, bytes: &[u8]| -> Result<()> {
        let path = out.join(name);
        crate::output::write_atomic(&path, bytes)?;
        files.push(path);
        Ok(())
    };
    for f in &report.figures {
        put(format!("{}.svg", f.id), f.svg.as_bytes())?;
        put(format!("{}.png", f.id), &f.png)?;
        put(format!("{}.csv", f.id), f.csv.as_bytes())?;
    }
    put("summary.md".into(), report.summary_md.as_bytes())?;
    put("index.html".into(), report.index_html.as_bytes())?;
    // A figure an earlier report of this run had (measurements since removed...) would sit
    // beside the new ones, looking current.
    for id in OPTIONAL_FIGURES
        .iter()
        .filter(|id| !report.figures.iter().any(|f| f.id == **id))
    {
        for ext in ["svg", "png", "csv"] {
            let stale = out.join(format!("{id}.{ext}"));
            if stale.is_file() {
                std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
            }
        }
    }
    Ok(ReportFiles {
        dir: out.to_path_buf(),
        index_html: out.join("index.html"),
        files,
        warnings: report.warnings.clone(),
    })
}

/// Builds every figure and page from loaded run data. The speedup figure appears only when a
/// baseline ran, the last two only when the run holds measurements (with predictions) or
/// calibration fit points.
pub fn build(data: &RunData) -> Result<Report> {
    font::ensure_registered()?;
    let strategies = data.strategies();
    let trace_rows = tables::trace_rows(&data.trace);
    let step_rows = tables::step_rows(data);
    let speedup_rows = tables::speedup_rows(data);
    let speedup_stats = tables::speedup_stats(&speedup_rows);
    let breakdown_rows = tables::breakdown_rows(data);
    let plan_rows = tables::plan_rows(data);
    let memory_rows = tables::memory_rows(data);
    let accuracy_rows = tables::accuracy_rows(&data.measurements, &data.fit_points);

    let mut figures = vec![figure(
            1,
            "trace",
            "The trace",
            "Left: documents per power-of-two length bucket (log scale). Right: each bucket's share of all tokens, and the cumulative share: where the work is.",
            to_csv(&trace_rows)?,
            Plot::Trace { rows: &trace_rows, info: &data.trace, dropped: data.summary.planner.dropped },
        )?,
        figure(
            2,
            "step_time",
            "Step time per batch",
            "The cost model's step time of every batch under each strategy (dashed: the simulator's, where simulated; shaded: the stack's development-set error bar, when it has one). Lower is better.",
            to_csv(&step_rows)?,
            Plot::StepTime { rows: &step_rows, strategies: &strategies, error_bar: data.summary.error_bar },
        )?,
    ];
    // Without a baseline there is no speedup to draw.
    if !speedup_stats.is_empty() {
        figures.push(figure(
            3,
            "speedup",
            "Speedup of hsap over each baseline",
            "Per batch, the baseline's step time over hsap's. Box: middle half of the batches; black line: median; diamond: mean; whiskers: fastest and slowest batch. Above the dashed line hsap is faster.",
            to_csv(&speedup_rows)?,
            Plot::Speedup { rows: &speedup_rows, stats: &speedup_stats },
        )?);
    }
    figures.extend([
        figure(
            figures.len() + 1,
            "breakdown",
            "Step-time breakdown",
            "The mean step of each strategy split into compute, communication not hidden behind compute, idle time waiting for the slowest group, and exposed gradient synchronisation (averages over GPUs).",
            to_csv(&breakdown_rows)?,
            Plot::Breakdown { rows: &breakdown_rows },
        )?,
        figure(
            figures.len() + 2,
            "plans",
            "The plans",
            "For each batch, how many GPUs each strategy put in SP groups of each shape (u Ulysses degree × r ring degree), averaged over the batch's micro-batches. One colour family per group size; darker means more Ulysses.",
            to_csv(&plan_rows)?,
            Plot::Plans { rows: &plan_rows, strategies: &strategies, gpus: data.summary.gpus() },
        )?,
        figure(
            figures.len() + 3,
            "memory",
            "Peak memory per GPU",
            "The highest predicted memory of any GPU in each batch's step, against the usable memory per GPU (dashed). hsap's wide line is drawn first, so a baseline with the same peak shows on top of it; memory.csv has every value.",
            to_csv(&memory_rows)?,
            Plot::Memory { rows: &memory_rows, strategies: &strategies },
        )?,
    ]);
    if !accuracy_rows.is_empty() {
        figures.push(figure(
            figures.len() + 1,
            "predicted_vs_measured",
            "Predicted against measured time",
            "Each timed operation with a prediction (measurements.csv) and each calibration point (fit_points.csv). Left: predicted against measured time; on the grey line the model is exact. Right: the relative error, within 10% between the dashed lines. Hollow: calibration points held out of the fit.",
            to_csv(&accuracy_rows)?,
            Plot::Accuracy { rows: &accuracy_rows },
        )?);
    }
    if !data.fit_points.is_empty() {
        figures.push(calibration_figure(&data.fit_points, figures.len() + 1)?);
    }
    let summary_md = page::summary_md(data, &speedup_stats, &accuracy_rows, &figures);
    let index_html = page::index_html(data, &speedup_stats, &accuracy_rows, &figures);
    Ok(Report {
        figures,
        summary_md,
        index_html,
        warnings: data.warnings.clone(),
    })
}

/// The calibration fit figure on its own (numbered `number`), for `calibrate`'s fit report:
/// measured time per collective and size with the fitted model.
pub fn calibration_figure(points: &[FitPoint], number: usize) -> Result<Figure> {
    font::ensure_registered()?;
    let rows = tables::fit_rows(points);
    figure(
        number,
        "calibration_fit",
        "Calibration fit",
        "Measured time of each collective against message size per rank (dots; hollow: held out of the fit), and the fitted latency-bandwidth model (lines).",
        to_csv(&rows)?,
        Plot::Fit { rows: &rows },
    )
}

fn figure(
    number: usize,
    id: &'static str,
    title: &'static str,
    caption: &str,
    csv: String,
    plot: Plot,
) -> Result<Figure> {
    let (svg, png) = draw_both(id, &plot)?;
    Ok(Figure {
        id,
        number,
        title,
        caption: caption.to_string(),
        csv,
        svg,
        png,
    })
}

/// Predicted against measured time for measurement rows alone (what `validate` writes beside
/// its CSV): the report's figure of the same name, as SVG.
pub fn accuracy_svg(measurements: &[Measurement]) -> Result<String> {
    font::ensure_registered()?;
    let rows = tables::accuracy_rows(measurements, &[]);
    draw_svg("predicted_vs_measured", &Plot::Accuracy { rows: &rows })
}

fn draw_failed(id: &str, e: Box<dyn std::error::Error>) -> Error {
    Error::internal(format!("drawing figure '{id}' failed: {e}"))
}

/// Draws a figure as SVG at its nominal size.
fn draw_svg(id: &str, plot: &Plot) -> Result<String> {
    let (w, h) = plot.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        plot.draw(&root, Theme { scale: 1.0 }).map_err(|e| draw_failed(id, e))?;
    }
    Ok(svg)
}

/// Draws a figure as SVG (nominal size) and as PNG (at [`PNG_SCALE`]).
fn draw_both(id: &str, plot: &Plot) -> Result<(String, Vec<u8>)> {
    let failed = |e| draw_failed(id, e);
    let svg = draw_svg(id, plot)?;
    let (w, h) = plot.size();
    let (pw, ph) = ((f64::from(w) * PNG_SCALE) as u32, (f64::from(h) * PNG_SCALE) as u32);
    let mut rgb = vec![0u8; pw as usize * ph as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (pw, ph)).into_drawing_area();
        plot.draw(&root, Theme { scale: PNG_SCALE }).map_err(failed)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, pw, ph, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::internal(format!("encoding figure '{id}' as PNG failed: {e}")))?;
    Ok((svg, png))
}
