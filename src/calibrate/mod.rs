//! Calibration: fitting the cost model's hardware figures to measurements of the user's cluster
//! (docs/calibration.md). `nccl_tests` reads nccl-tests logs, `measurements` the measurements
//! CSV, and `fit` fits curves to them.

pub mod fit;
pub mod measurements;
pub mod nccl_tests;
