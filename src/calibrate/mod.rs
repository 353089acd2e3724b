//! Calibration: fitting the cost model's hardware figures to measurements of the user's cluster
//! (docs/calibration.md). `nccl_tests` reads nccl-tests logs, `measurements` the measurements
//! CSV, `fit` fits curves, `profile` turns inputs into a [`crate::cluster::Calibration`], and
//! `report` writes what was fitted and how well.

pub mod fit;
pub mod measurements;
pub mod nccl_tests;
pub mod profile;
pub mod report;
