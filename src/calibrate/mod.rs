//! Calibration: fitting the cost model's hardware figures to measurements of the user's cluster.

pub mod measurements;
