//! Helpers shared by the report tests: the fixture run directory and PNG inspection.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The hand-made run directory (tests/data/report_run/README.md).
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/report_run")
}

/// A copy of the fixture's run files in a fresh directory, without the files named in `skip`.
pub fn fixture_copy(skip: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in [
        "summary.json",
        "trace.json",
        "batches.csv",
        "groups.csv",
        "measurements.csv",
        "fit_points.csv",
    ] {
        if !skip.contains(&name) {
            std::fs::copy(fixture().join(name), dir.path().join(name)).expect("copy fixture file");
        }
    }
    dir
}

/// Replaces `from` by `to` in a file of `dir`, checking that `from` was there.
pub fn edit(dir: &Path, name: &str, from: &str, to: &str) {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{name} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
}

/// Decoded RGB pixels and how often each colour occurs.
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub counts: HashMap<[u8; 3], usize>,
}

pub fn decode_png(bytes: &[u8]) -> Pixels {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .expect("the PNG decodes")
        .to_rgb8();
    let mut counts = HashMap::new();
    for p in img.pixels() {
        *counts.entry(p.0).or_insert(0usize) += 1;
    }
    Pixels {
        width: img.width(),
        height: img.height(),
        counts,
    }
}

impl Pixels {
    pub fn total(&self) -> usize {
        (self.width * self.height) as usize
    }

    /// Pixels of exactly this colour.
    pub fn exactly(&self, c: [u8; 3]) -> usize {
        self.counts.get(&c).copied().unwrap_or(0)
    }

    /// Pixels within `tol` of this colour in every channel (for screenshots, which a browser may
    /// colour-manage).
    pub fn near(&self, c: [u8; 3], tol: u8) -> usize {
        self.counts
            .iter()
            .filter(|(k, _)| k.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= tol))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn not_white(&self) -> usize {
        self.total() - self.exactly([255, 255, 255])
    }
}

pub fn rgb(c: plotters::style::RGBColor) -> [u8; 3] {
    [c.0, c.1, c.2]
}
