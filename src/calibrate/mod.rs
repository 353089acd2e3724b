//! Calibration: fitting the cost model's hardware figures to measurements of the user's cluster
//! (docs/calibration.md). `nccl_tests` reads nccl-tests logs and `measurements` the
//! measurements CSV.

pub mod measurements;
pub mod nccl_tests;
