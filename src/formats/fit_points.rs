//! `fit_points.csv` (columns in docs/calibration.md): one row per measured size of a fitted
//! collective, with the fitted time. `calibrate` writes every column; a run directory on a
//! calibrated profile has the first eight (the points the profile stores); the report plots them.

use crate::cluster::{Cluster, Collective, LinkLevel};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A point of a calibration fit. The first eight columns are the stable core every reader may
/// rely on; later columns are optional and only ever added at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitPoint {
    pub op: Collective,
    pub level: LinkLevel,
    pub ranks: u32,
    /// Message size per rank (nccl-tests' `size`).
    pub bytes: f64,
    pub measured_s: f64,
    /// The calibrated profile's prediction (`CollectiveFit::time_s`).
    pub fitted_s: f64,
    /// (fitted - measured) / measured.
    pub rel_error: f64,
    /// Whether the hold-out check held this size out (index a multiple of 3 in its run).
    pub held_out: bool,
    /// For held-out sizes: the prediction of the fit on the run's other sizes.
    #[serde(default)]
    pub holdout_predicted_s: Option<f64>,
    #[serde(default)]
    pub holdout_rel_error: Option<f64>,
    /// Nodes of the run, when known.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// The log run or measurement file the point came from.
    #[serde(default)]
    pub source: String,
}

impl FitPoint {
    /// A measured point and the fit's time for it (not held out; no provenance yet).
    pub fn new(op: Collective, level: LinkLevel, ranks: u32, bytes: f64, measured_s: f64, fitted_s: f64) -> FitPoint {
        FitPoint {
            op,
            level,
            ranks,
            bytes,
            measured_s,
            fitted_s,
            rel_error: (fitted_s - measured_s) / measured_s,
            held_out: false,
            holdout_predicted_s: None,
            holdout_rel_error: None,
            nodes: None,
            source: String::new(),
        }
    }
}

/// The points a calibrated cluster profile stores with each collective fit, so that a run on it
/// shows predicted against measured. None for a preset.
pub fn of_profile(cluster: &Cluster) -> Vec<FitPoint> {
    let Some(cal) = &cluster.calibration else { return Vec::new() };
    cal.collectives
        .iter()
        .flat_map(|f| {
            f.measured.iter().map(move |&[bytes, measured_s]| FitPoint {
                nodes: f.nodes,
                ..FitPoint::new(f.op, f.level, f.ranks, bytes, measured_s, f.time_s(bytes, f.ranks))
            })
        })
        .collect()
}

/// Reads `fit_points.csv`; every time must be a positive number.
pub fn read(path: &Path) -> Result<Vec<(usize, FitPoint)>> {
    let rows = super::read_csv::<FitPoint>(path, &[], super::CALIBRATION_DOC)?;
    for (line, p) in &rows {
        let positive = [("bytes", p.bytes), ("measured_s", p.measured_s), ("fitted_s", p.fitted_s)];
        if let Some((column, v)) = positive.into_iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(crate::Error::input(path, *line, format!("{column} = {v} must be a positive number"), "fix or drop the row"));
        }
    }
    Ok(rows)
}

/// Writes `fit_points.csv`.
pub fn write(path: &Path, rows: &[FitPoint]) -> Result<()> {
    super::write_csv(path, rows)
}
