//! Calibration: fitting the cost model's hardware figures to measurements of the user's cluster
//! (docs/calibration.md). `nccl_tests` reads nccl-tests logs, `fit` fits curves, `profile` turns
//! inputs (those logs and measurement files, `formats::measurements`) into a
//! [`crate::cluster::Calibration`], and `report` writes what was fitted and how well.

pub mod fit;
pub mod nccl_tests;
pub mod profile;
pub mod report;

/// "1 node", "2 nodes".
pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
