//! Drawing the figures with plotters. Each figure is drawn by one function generic over the
//! backend, so the SVG and the PNG come from the same code; sizes are in logical pixels times
//! the theme's scale, so the PNG can be drawn sharper than the SVG's nominal size.

use crate::formats::fit_points::FitPoint;
use crate::formats::run::{ErrorBar, TraceInfo, HSAP};
use super::font::FAMILY;
use super::palette::{series_colour, shape_colour, strategy_colour, PART_COLOURS};
use super::tables::{
    fit_curve, AccuracyRow, BreakdownRow, MemoryRow, PlanRow, SpeedupRow, SpeedupStats, StepRow, TraceRow, PART_NAMES,
};
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use crate::units::{bytes_decimal, count, seconds, significant, token_length};
use std::collections::BTreeMap;

pub type DrawResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const AXIS: RGBColor = RGBColor(0x55, 0x55, 0x55);
const GRID_LIGHT: RGBColor = RGBColor(0xEE, 0xEE, 0xEE);
const GRID_BOLD: RGBColor = RGBColor(0xD6, 0xD6, 0xD6);
const REFERENCE: RGBColor = RGBColor(0x88, 0x88, 0x88);
const DOCS_COLOUR: RGBColor = RGBColor(0x6C, 0x7A, 0x89);
const TOKENS_COLOUR: RGBColor = RGBColor(0xB0, 0x8D, 0x57);
/// Documents the run left out: a pale grey that reads as "not there".
const DROPPED_COLOUR: RGBColor = RGBColor(0xD9, 0xD9, 0xD9);

/// Batches up to which lines get a marker per point and bars get gaps.
const FEW_BATCHES: usize = 60;
/// Most columns the plans figure draws per strategy; more batches are binned.
const MAX_PLAN_COLUMNS: usize = 120;
/// Most points of a line over the batches; more batches are binned.
const MAX_LINE_POINTS: usize = 300;

/// Logical pixels to device pixels.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub scale: f64,
}

impl Theme {
    fn px(&self, v: f64) -> i32 {
        (v * self.scale).round() as i32
    }

    fn upx(&self, v: f64) -> u32 {
        (v * self.scale).round().max(1.0) as u32
    }

    fn font(&self, size: f64) -> TextStyle<'static> {
        TextStyle::from((FAMILY, size * self.scale).into_font()).color(&TEXT)
    }
}

fn coloured(style: TextStyle<'static>, c: RGBColor) -> TextStyle<'static> {
    TextStyle {
        color: c.to_backend_color(),
        ..style
    }
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Glyph {
    Line,
    Dashed,
    Box,
    Dot,
    Ring,
    Diamond,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegendItem {
    pub label: String,
    pub colour: RGBColor,
    pub glyph: Glyph,
}

fn item(label: impl Into<String>, colour: RGBColor, glyph: Glyph) -> LegendItem {
    LegendItem {
        label: label.into(),
        colour,
        glyph,
    }
}

/// One figure's content: which drawing and the rows it is drawn from.
pub enum Plot<'a> {
    Trace {
        rows: &'a [TraceRow],
        info: &'a TraceInfo,
        /// Documents the run dropped for being longer than `--max-seq` (0: none, or split).
        dropped: usize,
    },
    StepTime {
        rows: &'a [StepRow],
        strategies: &'a [String],
        /// The stack's error bar: each strategy's band is shaded.
        error_bar: Option<ErrorBar>,
    },
    Speedup {
        rows: &'a [SpeedupRow],
        stats: &'a [SpeedupStats],
    },
    Breakdown {
        rows: &'a [BreakdownRow],
    },
    Plans {
        rows: &'a [PlanRow],
        strategies: &'a [String],
        gpus: u32,
    },
    Memory {
        rows: &'a [MemoryRow],
        strategies: &'a [String],
    },
    Accuracy {
        rows: &'a [AccuracyRow],
    },
    Fit {
        rows: &'a [FitPoint],
    },
}

impl Plot<'_> {
    /// Size in logical pixels.
    pub fn size(&self) -> (u32, u32) {
        match self {
            Plot::Plans { rows, strategies, .. } => {
                let panels = strategies
                    .iter()
                    .filter(|s| rows.iter().any(|r| &r.strategy == *s))
                    .count()
                    .max(1);
                (1100, 130 + 190 * panels as u32)
            }
            Plot::Accuracy { .. } => (1300, 660),
            Plot::Fit { .. } => (1000, 760),
            _ => (1100, 640),
        }
    }

    pub fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, t: Theme) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        match *self {
            Plot::Trace { rows, info, dropped } => trace(root, t, rows, info, dropped),
            Plot::StepTime { rows, strategies, error_bar } => step_time(root, t, rows, strategies, error_bar),
            Plot::Speedup { rows, stats } => speedup(root, t, rows, stats),
            Plot::Breakdown { rows } => breakdown(root, t, rows),
            Plot::Plans { rows, strategies, gpus } => plans(root, t, rows, strategies, gpus),
            Plot::Memory { rows, strategies } => memory(root, t, rows, strategies),
            Plot::Accuracy { rows } => accuracy(root, t, rows),
            Plot::Fit { rows } => fit(root, t, rows),
        }?;
        root.present()?;
        Ok(())
    }
}

/// Clears the canvas, draws the title and a legend (centred rows that wrap), and returns the
/// area left for the chart.
fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: Theme,
    title: &str,
    legend: &[LegendItem],
) -> DrawResult<DrawingArea<DB, Shift>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (width, _) = root.dim_in_pixel();
    let width = width as i32;
    root.draw(&Text::new(
        title.to_string(),
        (width / 2, t.px(14.0)),
        t.font(25.0).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    let font = t.font(16.0);
    let (glyph_w, gap, spacing, row_h) = (t.px(28.0), t.px(7.0), t.px(24.0), t.px(24.0));
    let max_row = width - 2 * t.px(30.0);
    let mut rows: Vec<Vec<(&LegendItem, i32)>> = vec![Vec::new()];
    let mut used = 0;
    for it in legend {
        let (text_w, _) = root.estimate_text_size(&it.label, &font)?;
        let w = glyph_w + gap + text_w as i32;
        let row = rows.last_mut().expect("rows starts non-empty");
        if !row.is_empty() && used + spacing + w > max_row {
            rows.push(vec![(it, w)]);
            used = w;
        } else {
            used += if row.is_empty() { w } else { spacing + w };
            row.push((it, w));
        }
    }
    let mut y = t.px(52.0);
    for row in rows.iter().filter(|r| !r.is_empty()) {
        let total: i32 = row.iter().map(|(_, w)| w).sum::<i32>() + spacing * (row.len() as i32 - 1);
        let mut x = (width - total) / 2;
        let cy = y + row_h / 2;
        for (it, w) in row {
            legend_glyph(root, t, it, x, cy, glyph_w)?;
            root.draw(&Text::new(
                it.label.clone(),
                (x + glyph_w + gap, cy),
                font.pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
            x += w + spacing;
        }
        y += row_h;
    }
    let (_, rest) = root.split_vertically(y + t.px(8.0));
    Ok(rest)
}

fn legend_glyph<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: Theme,
    it: &LegendItem,
    x: i32,
    cy: i32,
    w: i32,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let c = it.colour;
    let mid = x + w / 2;
    match it.glyph {
        Glyph::Line => root.draw(&PathElement::new(
            vec![(x, cy), (x + w, cy)],
            c.stroke_width(t.upx(3.0)),
        ))?,
        Glyph::Dashed => {
            for k in 0..3 {
                let x0 = x + k * w / 3;
                root.draw(&PathElement::new(
                    vec![(x0, cy), (x0 + w / 5, cy)],
                    c.stroke_width(t.upx(2.5)),
                ))?;
            }
        }
        Glyph::Box => root.draw(&Rectangle::new(
            [(x + t.px(3.0), cy - t.px(7.0)), (x + w - t.px(3.0), cy + t.px(7.0))],
            c.filled(),
        ))?,
        Glyph::Dot => root.draw(&Circle::new((mid, cy), t.upx(5.0), c.filled()))?,
        Glyph::Ring => root.draw(&Circle::new((mid, cy), t.upx(5.0), c.stroke_width(t.upx(2.0))))?,
        Glyph::Diamond => {
            let r = t.px(6.0);
            root.draw(&Polygon::new(
                vec![(mid, cy - r), (mid + r, cy), (mid, cy + r), (mid - r, cy)],
                c.filled(),
            ))?
        }
    }
    Ok(())
}

/// The chart builder every figure starts from: margins and label areas sized for the fonts.
fn builder<'a, 'b, DB: DrawingBackend>(area: &'a DrawingArea<DB, Shift>, t: Theme) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.margin_left(t.px(12.0))
        .margin_right(t.px(34.0))
        .margin_top(t.px(10.0))
        .margin_bottom(t.px(8.0))
        .x_label_area_size(t.px(58.0))
        .y_label_area_size(t.px(84.0));
    b
}

/// The grid and axes every figure uses.
macro_rules! mesh {
    ($chart:expr, $t:expr) => {{
        let mut m = $chart.configure_mesh();
        m.label_style($t.font(15.0))
            .axis_desc_style($t.font(17.0))
            .light_line_style(GRID_LIGHT.stroke_width(1))
            .bold_line_style(GRID_BOLD.stroke_width(1))
            .axis_style(AXIS.stroke_width($t.upx(1.0)))
            .max_light_lines(1);
        m
    }};
}

// --- figure 1: the trace -------------------------------------------------------------------

fn trace<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: Theme, rows: &[TraceRow], info: &TraceInfo, dropped: usize) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let name = std::path::Path::new(&info.source)
        .file_name()
        .map_or_else(|| info.source.clone(), |n| n.to_string_lossy().into_owned());
    let mut title = format!(
        "Trace {name}: {} documents, {} tokens",
        count(info.stats.count as f64),
        count(info.stats.total_tokens as f64)
    );
    let mut legend = vec![
        item("documents per length bucket", DOCS_COLOUR, Glyph::Box),
        item("share of tokens per bucket", TOKENS_COLOUR, Glyph::Box),
        item("cumulative share of tokens", TEXT, Glyph::Line),
    ];
    // Documents longer than --max-seq that the run dropped are drawn apart: they were not planned.
    let max_seq = info.stats.max_seq.filter(|_| dropped > 0);
    if let Some(m) = max_seq {
        title.push_str(&format!(
            "; {} dropped (over --max-seq {}, {:.1}% of tokens)",
            count(dropped as f64),
            token_length(f64::from(m)),
            100.0 * info.stats.over_max_seq_tokens as f64 / info.stats.total_tokens.max(1) as f64
        ));
        legend.push(item("longer than --max-seq: dropped, not planned", DROPPED_COLOUR, Glyph::Box));
    }
    let area = frame(root, t, &title, &legend)?;
    let (width, _) = area.dim_in_pixel();
    let (left, right) = area.split_horizontally(width / 2);
    let exponent = |v: u64| f64::from(63 - v.max(1).leading_zeros());
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let x_range = exponent(first.lo)..exponent(last.lo) + 1.0;
    let x_labels = (rows.len() + 1).min(12);
    let x_fmt = |v: &f64| {
        if (v - v.round()).abs() < 1e-9 {
            token_length(2f64.powf(*v))
        } else {
            String::new()
        }
    };

    // Bars on a log axis start below 1 so that a bucket of one document still shows.
    const BAR_FLOOR: f64 = 0.7;
    let max_docs = rows.iter().map(|r| r.documents).max().unwrap_or(1).max(1) as f64;
    let mut chart = builder(&left, t).build_cartesian_2d(x_range.clone(), log_axis(BAR_FLOOR, max_docs * 2.0, 12))?;
    mesh!(chart, t)
        .x_desc("document length (tokens, power-of-two buckets)")
        .y_desc("documents (log scale)")
        .x_labels(x_labels)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| count(*v))
        .disable_x_mesh()
        .draw()?;
    // Whole bars in the dropped colour first; the planned part over them.
    let dropped_of = |r: &TraceRow| if max_seq.is_some() { (r.over_max_seq_documents, r.over_max_seq_tokens) } else { (0, 0) };
    chart.draw_series(rows.iter().filter(|r| dropped_of(r).0 > 0).map(|r| {
        let k = exponent(r.lo);
        Rectangle::new([(k + 0.08, BAR_FLOOR), (k + 0.92, r.documents as f64)], DROPPED_COLOUR.filled())
    }))?;
    chart.draw_series(rows.iter().filter(|r| r.documents > dropped_of(r).0).map(|r| {
        let k = exponent(r.lo);
        Rectangle::new(
            [(k + 0.08, BAR_FLOOR), (k + 0.92, (r.documents - dropped_of(r).0) as f64)],
            DOCS_COLOUR.filled(),
        )
    }))?;

    let mut chart = builder(&right, t).build_cartesian_2d(x_range.clone(), 0.0..100.0)?;
    mesh!(chart, t)
        .x_desc("document length (tokens, power-of-two buckets)")
        .y_desc("share of all tokens (%)")
        .x_labels(x_labels)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .disable_x_mesh()
        .draw()?;
    let total = info.stats.total_tokens.max(1) as f64;
    chart.draw_series(rows.iter().filter(|r| dropped_of(r).1 > 0).map(|r| {
        let k = exponent(r.lo);
        Rectangle::new([(k + 0.08, 0.0), (k + 0.92, 100.0 * r.token_share)], DROPPED_COLOUR.filled())
    }))?;
    chart.draw_series(rows.iter().filter(|r| r.tokens > dropped_of(r).1).map(|r| {
        let k = exponent(r.lo);
        Rectangle::new(
            [(k + 0.08, 0.0), (k + 0.92, 100.0 * (r.tokens - dropped_of(r).1) as f64 / total)],
            TOKENS_COLOUR.filled(),
        )
    }))?;
    let cumulative = std::iter::once((x_range.start, 0.0)).chain(
        rows.iter()
            .map(|r| (exponent(r.lo) + 1.0, 100.0 * r.cumulative_token_share)),
    );
    chart.draw_series(LineSeries::new(cumulative, TEXT.stroke_width(t.upx(2.0))))?;
    Ok(())
}

// --- figure 2: step time per batch ------------------------------------------------------------

fn step_time<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: Theme,
    rows: &[StepRow],
    strategies: &[String],
    error_bar: Option<ErrorBar>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let bins = BatchBins::of(rows.iter().map(|r| r.batch));
    let dashed = bins.per_bin == 1 && bins.bins.len() <= FEW_BATCHES;
    let simulated = rows.iter().any(|r| r.simulated_step_s.is_some());
    let mut legend: Vec<LegendItem> = strategies
        .iter()
        .map(|s| item(s.clone(), strategy_colour(s), Glyph::Line))
        .collect();
    if simulated && dashed {
        legend.push(item("simulated (dashed)", REFERENCE, Glyph::Dashed));
    } else if simulated {
        legend.push(item("simulated (thin, pale)", RGBColor(0xC4, 0xC4, 0xC4), Glyph::Line));
    }
    let area = frame(
        root,
        t,
        &bins.title("Step time per batch (cost model)", "mean"),
        &legend,
    )?;
    // Per strategy, in drawing order: predicted and simulated lines.
    let lines: Vec<(&String, Vec<(f64, f64)>, Vec<(f64, f64)>)> = line_order(strategies)
        .map(|s| {
            let mine = rows.iter().filter(|r| &r.strategy == s);
            let predicted: BTreeMap<usize, f64> = mine.clone().map(|r| (r.batch, r.predicted_step_s)).collect();
            let sim: BTreeMap<usize, f64> = mine.filter_map(|r| Some((r.batch, r.simulated_step_s?))).collect();
            (s, bins.reduce(&predicted, mean), bins.reduce(&sim, mean))
        })
        .collect();
    let band_top = 1.0 + error_bar.map_or(0.0, |b| b.high.max(0.0));
    let top = lines
        .iter()
        .flat_map(|(_, p, s)| p.iter().chain(s))
        .map(|p| p.1)
        .fold(0.0, f64::max)
        * band_top;
    let mut chart = builder(&area, t).build_cartesian_2d(bins.x_range(), 0.0..nice_top(top))?;
    mesh!(chart, t)
        .x_desc("batch")
        .y_desc("step time (s)")
        .x_label_formatter(&fmt_batch)
        .y_label_formatter(&|v| significant(*v))
        .draw()?;
    // The stack's error bar around each strategy's prediction, under the lines.
    if let Some(bar) = error_bar {
        for (s, predicted, _) in &lines {
            let mut band: Vec<(f64, f64)> = predicted.iter().map(|&(x, y)| (x, y * (1.0 + bar.high))).collect();
            band.extend(predicted.iter().rev().map(|&(x, y)| (x, y * (1.0 + bar.low))));
            chart.draw_series(std::iter::once(Polygon::new(band, strategy_colour(s).mix(0.12).filled())))?;
        }
    }
    for (s, predicted, sim) in lines {
        let c = strategy_colour(s);
        // Dashes along a long zig-zag line would fill the SVG with thousands of paths.
        match (sim.is_empty(), dashed) {
            (true, _) => {}
            (false, true) => {
                chart.draw_series(DashedLineSeries::new(
                    sim,
                    t.upx(7.0),
                    t.upx(5.0),
                    c.stroke_width(t.upx(1.5)),
                ))?;
            }
            (false, false) => {
                chart.draw_series(LineSeries::new(sim, c.mix(0.5).stroke_width(t.upx(1.0))))?;
            }
        }
        chart.draw_series(LineSeries::new(predicted.clone(), c.stroke_width(t.upx(line_width(s)))))?;
        if dashed {
            chart.draw_series(
                predicted
                    .iter()
                    .map(|&p| Circle::new(p, t.upx(marker_radius(s)), c.filled())),
            )?;
        }
    }
    Ok(())
}

// --- figure 3: speedup distribution -----------------------------------------------------------

fn speedup<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: Theme,
    rows: &[SpeedupRow],
    stats: &[SpeedupStats],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let legend = [
        item("middle half of the batches", REFERENCE, Glyph::Box),
        item("median", TEXT, Glyph::Line),
        item("mean", TEXT, Glyph::Diamond),
        item("one batch", REFERENCE, Glyph::Dot),
        item("no speedup", REFERENCE, Glyph::Dashed),
    ];
    let area = frame(root, t, "Speedup of hsap over each baseline, per batch", &legend)?;
    let n = stats.len().max(1);
    let lo = stats.iter().map(|s| s.min).fold(1.0, f64::min);
    let hi = stats.iter().map(|s| s.max).fold(1.0, f64::max);
    let pad = 0.08 * (hi - lo).max(0.05);
    let names: Vec<String> = stats.iter().map(|s| s.baseline.clone()).collect();
    let mut chart = builder(&area, t).build_cartesian_2d(-0.5..n as f64 - 0.5, (lo - pad).max(0.0)..hi + 2.0 * pad)?;
    mesh!(chart, t)
        .x_desc("baseline")
        .y_desc("speedup (baseline step time / hsap step time)")
        .x_labels(n)
        .x_label_formatter(&|v| category(&names, *v))
        .y_label_formatter(&|v| format!("{}×", significant(*v)))
        .disable_x_mesh()
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
        t.upx(8.0),
        t.upx(5.0),
        REFERENCE.stroke_width(t.upx(1.5)),
    ))?;
    let (half, cap) = (0.26, 0.1);
    for (i, s) in stats.iter().enumerate() {
        let x = i as f64;
        let c = strategy_colour(&s.baseline);
        let line = |pts: Vec<(f64, f64)>, width: f64, colour: RGBColor| {
            PathElement::new(pts, colour.stroke_width(t.upx(width)))
        };
        chart.draw_series([
            line(vec![(x, s.min), (x, s.p25)], 1.5, c),
            line(vec![(x, s.p75), (x, s.max)], 1.5, c),
            line(vec![(x - cap, s.min), (x + cap, s.min)], 1.5, c),
            line(vec![(x - cap, s.max), (x + cap, s.max)], 1.5, c),
        ])?;
        chart.draw_series([Rectangle::new(
            [(x - half, s.p25), (x + half, s.p75)],
            c.mix(0.25).filled(),
        )])?;
        chart.draw_series([Rectangle::new(
            [(x - half, s.p25), (x + half, s.p75)],
            c.stroke_width(t.upx(2.0)),
        )])?;
        let mine: Vec<&SpeedupRow> = rows.iter().filter(|r| r.baseline == s.baseline).collect();
        if mine.len() <= 400 {
            // Spread the dots sideways by the golden ratio so that equal speedups stay visible.
            chart.draw_series(mine.iter().enumerate().map(|(j, r)| {
                let jitter = ((j as f64 * 0.618_034) % 1.0 - 0.5) * 2.0 * 0.7 * half;
                Circle::new((x + jitter, r.speedup), t.upx(3.0), c.mix(0.75).filled())
            }))?;
        }
        chart.draw_series([line(vec![(x - half, s.median), (x + half, s.median)], 3.0, TEXT)])?;
        let r = t.px(6.0);
        chart.draw_series([
            EmptyElement::at((x, s.mean)) + Polygon::new(vec![(0, -r), (r, 0), (0, r), (-r, 0)], TEXT.filled())
        ])?;
        chart.draw_series([EmptyElement::at((x, s.max))
            + Text::new(
                format!("median {:.2}×", s.median),
                (0, -t.px(8.0)),
                coloured(t.font(15.0), c).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )])?;
    }
    Ok(())
}

// --- figure 4: step-time breakdown ------------------------------------------------------------

fn breakdown<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: Theme, rows: &[BreakdownRow]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let legend: Vec<LegendItem> = PART_NAMES
        .iter()
        .zip(PART_COLOURS)
        .map(|(n, c)| item(*n, c, Glyph::Box))
        .collect();
    let area = frame(
        root,
        t,
        "Where the step time goes (mean per batch; outline: strategy colour)",
        &legend,
    )?;
    let n = rows.len().max(1);
    let top = rows
        .iter()
        .map(|r| r.parts().iter().sum::<f64>().max(r.predicted_step_s))
        .fold(0.0, f64::max);
    let names: Vec<String> = rows.iter().map(|r| r.strategy.clone()).collect();
    let mut chart = builder(&area, t).build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..nice_top(top * 1.05))?;
    mesh!(chart, t)
        .x_desc("strategy")
        .y_desc("mean step time (s)")
        .x_labels(n)
        .x_label_formatter(&|v| category(&names, *v))
        .y_label_formatter(&|v| significant(*v))
        .disable_x_mesh()
        .draw()?;
    let half = 0.3;
    for (i, r) in rows.iter().enumerate() {
        let x = i as f64;
        let mut y = 0.0;
        for (v, c) in r.parts().into_iter().zip(PART_COLOURS) {
            chart.draw_series([Rectangle::new([(x - half, y), (x + half, y + v)], c.filled())])?;
            y += v;
        }
        let c = strategy_colour(&r.strategy);
        chart.draw_series([Rectangle::new(
            [(x - half, 0.0), (x + half, y)],
            c.stroke_width(t.upx(3.0)),
        )])?;
        chart.draw_series([EmptyElement::at((x, y))
            + Text::new(
                seconds(r.predicted_step_s),
                (0, -t.px(7.0)),
                coloured(t.font(15.0), c).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )])?;
    }
    Ok(())
}

// --- figure 5: the plans ----------------------------------------------------------------------

fn plans<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: Theme,
    rows: &[PlanRow],
    strategies: &[String],
    gpus: u32,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    // Legend in stacking order: largest groups first, pure Ulysses before more ring.
    let mut shapes: Vec<(u32, u32)> = rows.iter().map(|r| (r.ulysses, r.ring)).collect();
    shapes.sort_by_key(|&(u, r)| (std::cmp::Reverse(u * r), std::cmp::Reverse(u)));
    shapes.dedup();
    let legend: Vec<LegendItem> = shapes
        .iter()
        .map(|&(u, r)| item(format!("u{u}×r{r}"), shape_colour(u, r), Glyph::Box))
        .collect();
    let mut batches: Vec<usize> = rows.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    // Beyond a column per few pixels the SVG only grows: bin consecutive batches.
    let per_column = batches.len().div_ceil(MAX_PLAN_COLUMNS).max(1);
    let mut title = "GPUs per group shape (u Ulysses × r ring), mean over micro-batches".to_string();
    if per_column > 1 {
        title.push_str(&format!(" and bins of {per_column} batches"));
    }
    let area = frame(root, t, &title, &legend)?;
    let shown: Vec<&String> = strategies
        .iter()
        .filter(|s| rows.iter().any(|r| &r.strategy == *s))
        .collect();
    let x_range = batch_range(&batches);
    let half = if per_column == 1 && batches.len() <= FEW_BATCHES {
        0.38
    } else {
        0.5
    };
    let top = rows
        .iter()
        .fold(BTreeMap::<(&str, usize), f64>::new(), |mut m, r| {
            *m.entry((r.strategy.as_str(), r.batch)).or_default() += r.gpus;
            m
        })
        .into_values()
        .fold(f64::from(gpus.max(1)), f64::max);
    let panels = area.split_evenly((shown.len().max(1), 1));
    for (k, (panel, s)) in panels.iter().zip(&shown).enumerate() {
        let last = k + 1 == shown.len();
        let mut b = builder(panel, t);
        b.caption(s.as_str(), coloured(t.font(18.0), strategy_colour(s)))
            .x_label_area_size(t.px(if last { 58.0 } else { 30.0 }));
        let mut chart = b.build_cartesian_2d(x_range.clone(), 0.0..top)?;
        let mut m = mesh!(chart, t);
        m.y_desc("GPUs")
            .x_label_formatter(&fmt_batch)
            .y_label_formatter(&|v| significant(*v))
            .y_labels(5)
            .disable_x_mesh();
        if last {
            m.x_desc("batch");
        }
        m.draw()?;
        let mut gpus_of: BTreeMap<(usize, (u32, u32)), f64> = BTreeMap::new();
        for r in rows.iter().filter(|r| &r.strategy == *s) {
            *gpus_of.entry((r.batch, (r.ulysses, r.ring))).or_default() += r.gpus;
        }
        for column in batches.chunks(per_column) {
            let (x0, x1) = (column[0] as f64 - half, column[column.len() - 1] as f64 + half);
            let mut y = 0.0;
            for &shape in &shapes {
                let g = column.iter().filter_map(|b| gpus_of.get(&(*b, shape))).sum::<f64>() / column.len() as f64;
                if g <= 0.0 {
                    continue;
                }
                chart.draw_series([Rectangle::new(
                    [(x0, y), (x1, y + g)],
                    shape_colour(shape.0, shape.1).filled(),
                )])?;
                if half < 0.5 {
                    chart.draw_series([Rectangle::new([(x0, y), (x1, y + g)], WHITE.stroke_width(1))])?;
                }
                y += g;
            }
        }
    }
    Ok(())
}

// --- figure 6: memory -------------------------------------------------------------------------

fn memory<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: Theme,
    rows: &[MemoryRow],
    strategies: &[String],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let bins = BatchBins::of(rows.iter().map(|r| r.batch));
    let mut legend: Vec<LegendItem> = strategies
        .iter()
        .map(|s| item(s.clone(), strategy_colour(s), Glyph::Line))
        .collect();
    legend.push(item("memory limit", TEXT, Glyph::Dashed));
    let area = frame(
        root,
        t,
        &bins.title("Peak memory per GPU against the limit", "highest"),
        &legend,
    )?;
    let top = rows
        .iter()
        .map(|r| r.peak_memory_gib.max(r.memory_limit_gib))
        .fold(0.0, f64::max);
    let mut chart = builder(&area, t).build_cartesian_2d(bins.x_range(), 0.0..nice_top(top * 1.08))?;
    mesh!(chart, t)
        .x_desc("batch")
        .y_desc("peak memory per GPU (GiB)")
        .x_label_formatter(&fmt_batch)
        .y_label_formatter(&|v| significant(*v))
        .draw()?;
    let markers = bins.per_bin == 1 && bins.bins.len() <= FEW_BATCHES;
    for s in line_order(strategies) {
        let c = strategy_colour(s);
        let peaks: BTreeMap<usize, f64> = rows
            .iter()
            .filter(|r| &r.strategy == s)
            .map(|r| (r.batch, r.peak_memory_gib))
            .collect();
        let points = bins.reduce(&peaks, highest);
        chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(t.upx(line_width(s)))))?;
        if markers {
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, t.upx(marker_radius(s)), c.filled())),
            )?;
        }
    }
    // The tightest limit of any strategy on each batch (they normally share one).
    let mut limit: BTreeMap<usize, f64> = BTreeMap::new();
    for r in rows {
        let l = limit.entry(r.batch).or_insert(f64::INFINITY);
        *l = l.min(r.memory_limit_gib);
    }
    let mut line = bins.reduce(&limit, lowest);
    if let [only] = line[..] {
        // A single batch: draw the limit across the plot rather than as a point.
        line = vec![(only.0 - 0.5, only.1), (only.0 + 0.5, only.1)];
    }
    chart.draw_series(DashedLineSeries::new(
        line.clone(),
        t.upx(9.0),
        t.upx(6.0),
        TEXT.stroke_width(t.upx(2.0)),
    ))?;
    if let Some(&(x, y)) = line.last() {
        chart.draw_series([EmptyElement::at((x, y))
            + Text::new(
                format!("limit {y:.1} GiB"),
                (0, -t.px(6.0)),
                t.font(15.0).pos(Pos::new(HPos::Right, VPos::Bottom)),
            )])?;
    }
    Ok(())
}

// --- figure 7: predicted against measured -----------------------------------------------------

fn accuracy<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: Theme, rows: &[AccuracyRow]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let series = first_seen(rows.iter().map(|r| r.series.as_str()));
    let mut legend: Vec<LegendItem> = series
        .iter()
        .enumerate()
        .map(|(i, s)| item(*s, series_colour(i), Glyph::Dot))
        .collect();
    if rows.iter().any(|r| r.held_out) {
        legend.push(item("held out of the fit", TEXT, Glyph::Ring));
    }
    legend.push(item("exact", REFERENCE, Glyph::Line));
    legend.push(item("±10%", REFERENCE, Glyph::Dashed));
    let area = frame(root, t, "Predicted against measured time", &legend)?;
    let (width, _) = area.dim_in_pixel();
    let (left, right) = area.split_horizontally(width / 2);
    let marker = |i: usize, r: &AccuracyRow, at: (f64, f64)| {
        let c = series_colour(i);
        let style = if r.held_out {
            c.stroke_width(t.upx(2.0))
        } else {
            c.mix(0.85).filled()
        };
        Circle::new(at, t.upx(5.0), style)
    };

    // Left: both times on log axes, over the whole range of operations.
    let (lo, hi) = log_bounds(rows.iter().flat_map(|r| [r.measured_s, r.predicted_s]));
    let mut chart = builder(&left, t).build_cartesian_2d(log_axis(lo, hi, 6), log_axis(lo, hi, 10))?;
    mesh!(chart, t)
        .x_desc("measured time (log scale)")
        .y_desc("predicted time (log scale)")
        .x_label_formatter(&|v| seconds(*v))
        .y_label_formatter(&|v| seconds(*v))
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(lo, lo), (hi, hi)],
        REFERENCE.stroke_width(t.upx(1.5)),
    ))?;
    for (i, s) in series.iter().enumerate() {
        chart.draw_series(
            rows.iter()
                .filter(|r| r.series == *s)
                .map(|r| marker(i, r, (r.measured_s, r.predicted_s))),
        )?;
    }

    // Right: the relative error, which the left panel's decades hide.
    let (x_lo, x_hi) = log_bounds(rows.iter().map(|r| r.measured_s));
    let worst = rows.iter().map(|r| r.rel_error.abs() * 100.0).fold(15.0, f64::max) * 1.1;
    let mut chart = builder(&right, t).build_cartesian_2d(log_axis(x_lo, x_hi, 6), -worst..worst)?;
    mesh!(chart, t)
        .x_desc("measured time (log scale)")
        .y_desc("error: (predicted - measured) / measured (%)")
        .x_label_formatter(&|v| seconds(*v))
        .y_label_formatter(&|v| format!("{}%", significant(*v)))
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(x_lo, 0.0), (x_hi, 0.0)],
        REFERENCE.stroke_width(t.upx(1.5)),
    ))?;
    for band in [-10.0, 10.0] {
        chart.draw_series(DashedLineSeries::new(
            [(x_lo, band), (x_hi, band)],
            t.upx(7.0),
            t.upx(5.0),
            REFERENCE.stroke_width(t.upx(1.5)),
        ))?;
    }
    for (i, s) in series.iter().enumerate() {
        chart.draw_series(
            rows.iter()
                .filter(|r| r.series == *s)
                .map(|r| marker(i, r, (r.measured_s, 100.0 * r.rel_error))),
        )?;
    }
    Ok(())
}

// --- figure 8: the calibration fit ------------------------------------------------------------

fn fit<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, t: Theme, rows: &[FitPoint]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let labels: Vec<String> = rows.iter().map(fit_curve).collect();
    let curves = first_seen(labels.iter().map(String::as_str));
    let mut legend: Vec<LegendItem> = curves
        .iter()
        .enumerate()
        .map(|(i, s)| item(*s, series_colour(i), Glyph::Line))
        .collect();
    if rows.iter().any(|p| p.held_out) {
        legend.push(item("measured, used in the fit", TEXT, Glyph::Dot));
        legend.push(item("measured, held out", TEXT, Glyph::Ring));
    } else {
        legend.push(item("measured", TEXT, Glyph::Dot));
    }
    let area = frame(
        root,
        t,
        "Calibration: measured and fitted time per collective and size",
        &legend,
    )?;
    let (x_lo, x_hi) = log_bounds(rows.iter().map(|p| p.bytes));
    let (y_lo, y_hi) = log_bounds(rows.iter().flat_map(|p| [p.measured_s, p.fitted_s]));
    let mut chart = builder(&area, t).build_cartesian_2d(log_axis(x_lo, x_hi, 8), log_axis(y_lo, y_hi, 12))?;
    mesh!(chart, t)
        .x_desc("message size per rank (log scale)")
        .y_desc("time (log scale)")
        .x_label_formatter(&|v| bytes_decimal(*v))
        .y_label_formatter(&|v| seconds(*v))
        .draw()?;
    for (i, curve) in curves.iter().enumerate() {
        let c = series_colour(i);
        let mut mine: Vec<&FitPoint> = rows
            .iter()
            .zip(&labels)
            .filter(|(_, l)| l == curve)
            .map(|(p, _)| p)
            .collect();
        mine.sort_by(|a, b| a.bytes.total_cmp(&b.bytes));
        chart.draw_series(LineSeries::new(
            mine.iter().map(|p| (p.bytes, p.fitted_s)),
            c.stroke_width(t.upx(2.0)),
        ))?;
        chart.draw_series(mine.iter().map(|p| {
            let style = if p.held_out {
                c.stroke_width(t.upx(2.0))
            } else {
                c.filled()
            };
            Circle::new((p.bytes, p.measured_s), t.upx(4.5), style)
        }))?;
    }
    Ok(())
}

// --- scales and labels ------------------------------------------------------------------------

/// The order lines are drawn in: hsap first and wide, so that a baseline with the same values
/// draws over it thinly and both stay visible.
fn line_order(strategies: &[String]) -> impl Iterator<Item = &String> {
    strategies
        .iter()
        .filter(|s| *s == HSAP)
        .chain(strategies.iter().filter(|s| *s != HSAP))
}

fn line_width(strategy: &str) -> f64 {
    if strategy == HSAP {
        5.0
    } else {
        2.0
    }
}

fn marker_radius(strategy: &str) -> f64 {
    if strategy == HSAP {
        6.0
    } else {
        3.5
    }
}

/// Consecutive batches grouped so that a line over the batches has at most [`MAX_LINE_POINTS`]
/// points: beyond a point per few pixels a line only grows the SVG.
struct BatchBins {
    bins: Vec<Vec<usize>>,
    per_bin: usize,
}

impl BatchBins {
    fn of(batches: impl Iterator<Item = usize>) -> BatchBins {
        let mut distinct: Vec<usize> = batches.collect();
        distinct.sort_unstable();
        distinct.dedup();
        let per_bin = distinct.len().div_ceil(MAX_LINE_POINTS).max(1);
        BatchBins {
            bins: distinct.chunks(per_bin).map(<[usize]>::to_vec).collect(),
            per_bin,
        }
    }

    /// The title, saying how batches were binned when they were.
    fn title(&self, base: &str, how: &str) -> String {
        if self.per_bin == 1 {
            base.to_string()
        } else {
            format!("{base}, {how} over bins of {} batches", self.per_bin)
        }
    }

    fn x_range(&self) -> std::ops::Range<f64> {
        let all: Vec<usize> = self.bins.iter().flatten().copied().collect();
        batch_range(&all)
    }

    /// One point per bin holding values: at the bin's middle batch, the values reduced by `f`.
    fn reduce(&self, values: &BTreeMap<usize, f64>, f: fn(&[f64]) -> f64) -> Vec<(f64, f64)> {
        self.bins
            .iter()
            .filter_map(|bin| {
                let v: Vec<f64> = bin.iter().filter_map(|b| values.get(b).copied()).collect();
                let (first, last) = (bin.first()?, bin.last()?);
                (!v.is_empty()).then(|| ((first + last) as f64 / 2.0, f(&v)))
            })
            .collect()
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn highest(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn lowest(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Distinct values in order of first appearance.
fn first_seen<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

/// The x range of a per-batch plot: every batch with half a batch of room on either side.
fn batch_range(batches: &[usize]) -> std::ops::Range<f64> {
    let lo = batches.iter().copied().min().unwrap_or(0) as f64;
    let hi = batches.iter().copied().max().unwrap_or(0) as f64;
    lo - 0.5..hi + 0.5
}

/// Bounds of a log axis holding every positive value, widened to whole decades' thirds so
/// that points do not sit on the frame.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (1e-6, 1.0);
    }
    (lo / 1.6, (hi * 1.6).max(lo * 10.0))
}

/// An axis top a little above `max`, so that the highest point is not on the frame.
fn nice_top(max: f64) -> f64 {
    if max > 0.0 && max.is_finite() {
        max * 1.1
    } else {
        1.0
    }
}

/// A log axis with ticks we choose: plotters' own skip the decade below the first power of ten.
/// Labels at 1, 2 and 5 times each power of ten when `max_labels` allows, else at powers of
/// ten; grid lines at every integer multiple unless the axis spans many decades.
fn log_axis(lo: f64, hi: f64, max_labels: usize) -> WithKeyPoints<LogCoord<f64>> {
    let decades = (hi / lo).log10();
    let labelled: &[f64] = if decades * 3.0 <= max_labels as f64 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let light: &[f64] = if decades <= 4.0 {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    } else {
        &[1.0]
    };
    (lo..hi)
        .log_scale()
        .with_key_points(log_ticks(lo, hi, labelled))
        .with_light_points(log_ticks(lo, hi, light))
}

/// Every `m x 10^k` (m from `mantissas`) within [lo, hi].
fn log_ticks(lo: f64, hi: f64, mantissas: &[f64]) -> Vec<f64> {
    let mut ticks = Vec::new();
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return ticks;
    }
    for e in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
        for m in mantissas {
            let v = m * 10f64.powi(e);
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                ticks.push(v);
            }
        }
    }
    ticks
}

/// A category axis has its categories at 0, 1, 2...; other ticks get no label.
fn category(names: &[String], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    names.get(i as usize).cloned().unwrap_or_default()
}

fn fmt_batch(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 && *v >= 0.0 {
        format!("{}", v.round() as u64)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_cover_the_range() {
        assert_eq!(
            log_ticks(0.5, 60.0, &[1.0, 2.0, 5.0]),
            vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        );
        let decades = log_ticks(1.4e-5, 0.2, &[1.0]);
        assert_eq!(decades.len(), 4);
        assert!((decades[0] - 1e-4).abs() < 1e-18 && (decades[3] - 0.1).abs() < 1e-15);
        assert!(log_ticks(0.0, 1.0, &[1.0]).is_empty());
    }

    #[test]
    fn bins_keep_every_batch_once() {
        let bins = BatchBins::of((0..1000).rev().chain(0..10));
        assert_eq!(bins.per_bin, 4);
        assert_eq!(bins.bins.len(), 250);
        assert_eq!(
            bins.bins.iter().flatten().copied().collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>()
        );
        let values: BTreeMap<usize, f64> = (0..1000).map(|b| (b, b as f64)).collect();
        let points = bins.reduce(&values, mean);
        assert_eq!(points[0], (1.5, 1.5));
        assert_eq!(bins.reduce(&values, highest)[1], (5.5, 7.0));
        assert!(BatchBins::of(0..300).title("t", "mean") == "t");
        assert_eq!(
            BatchBins::of(0..301).title("t", "mean"),
            "t, mean over bins of 2 batches"
        );
    }

    #[test]
    fn category_labels_only_at_whole_positions() {
        let names = vec!["a".to_string(), "b".to_string()];
        assert_eq!(category(&names, 1.0), "b");
        assert_eq!(category(&names, 0.5), "");
        assert_eq!(category(&names, 2.0), "");
        assert_eq!(category(&names, -1.0), "");
    }

    #[test]
    fn log_bounds_hold_every_point() {
        let (lo, hi) = log_bounds([1e-3, 5e-2, 0.0, f64::NAN].into_iter());
        assert!(lo < 1e-3 && hi > 5e-2);
        assert_eq!(log_bounds(std::iter::empty()), (1e-6, 1.0));
    }
}
