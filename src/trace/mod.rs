//! Document-length traces: reading them from every supported format, and describing them.
//!
//! A trace is the list of document lengths (in tokens) in training order. Zero-length documents
//! are skipped and counted, so that a caller can warn about them; everything else that is not a
//! positive integer is an error naming the file and line.

mod batch;
mod formats;
mod stats;

pub use batch::{make_batches, Batch, BatchBy, BatchSpec, Batches, Doc, OverLong};
pub use formats::TraceFormat;
pub use stats::{Histogram, HistogramBucket, TokenShare, TraceStats};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The column or field names a length may be stored under, in order of preference.
pub const LENGTH_FIELDS: [&str; 4] = ["tokens", "length", "seq_len", "num_tokens"];

/// Document lengths in training order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Where the trace came from (a path, or the name of an embedded trace).
    pub source: PathBuf,
    pub format: TraceFormat,
    /// Lengths in tokens, all positive.
    pub lengths: Vec<u32>,
    /// How many zero-length documents were skipped while reading.
    pub skipped_empty: usize,
}

impl Trace {
    /// Reads a trace, choosing the format from the file's extension (or, failing that, its content).
    pub fn read(path: &Path) -> Result<Trace> {
        let format = TraceFormat::detect(path)?;
        Trace::read_as(path, format)
    }

    pub fn read_as(path: &Path, format: TraceFormat) -> Result<Trace> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Trace::parse(path, format, &bytes)
    }

    /// Parses a trace already in memory; `path` is used in messages only.
    pub fn parse(path: &Path, format: TraceFormat, bytes: &[u8]) -> Result<Trace> {
        let mut reader = formats::LengthSink::new(path);
        formats::parse(format, path, bytes, &mut reader)?;
        let (lengths, skipped_empty) = reader.finish()?;
        Ok(Trace {
            source: path.to_path_buf(),
            format,
            lengths,
            skipped_empty,
        })
    }

    pub fn total_tokens(&self) -> u64 {
        self.lengths.iter().map(|&l| u64::from(l)).sum()
    }

    pub fn stats(&self, max_seq: Option<u32>) -> TraceStats {
        TraceStats::of(&self.lengths, max_seq)
    }
}

/// The real traces shipped in `traces/`, embedded in the binary so that `hsap-tune` runs
/// without arguments anywhere.
pub mod embedded {
    /// (file name, CSV content)
    pub const TRACES: [(&str, &str); 5] = [
        ("flexsp_wikipedia_1m.csv", include_str!("../../traces/flexsp_wikipedia_1m.csv")),
        (
            "distca_textbookchapters_llama3.csv",
            include_str!("../../traces/distca_textbookchapters_llama3.csv"),
        ),
        (
            "sarathi_sharegpt8k_llama2_total.csv",
            include_str!("../../traces/sarathi_sharegpt8k_llama2_total.csv"),
        ),
        (
            "azure_llm2023_conv_ctx_plus_gen.csv",
            include_str!("../../traces/azure_llm2023_conv_ctx_plus_gen.csv"),
        ),
        (
            "sharegpt_v3_prefix17k_cl100k.csv",
            include_str!("../../traces/sharegpt_v3_prefix17k_cl100k.csv"),
        ),
    ];

    /// The trace the default run uses.
    pub const DEFAULT: &str = "distca_textbookchapters_llama3.csv";
}

impl Trace {
    /// Loads one of the embedded traces by file name (e.g. `flexsp_wikipedia_1m.csv`).
    pub fn embedded(name: &str) -> Result<Trace> {
        let Some((file, text)) = embedded::TRACES.iter().find(|(f, _)| *f == name) else {
            return Err(Error::Unknown {
                kind: "embedded trace",
                name: name.to_string(),
                known: embedded::TRACES.iter().map(|(f, _)| f.to_string()).collect(),
                hint: "pass --trace FILE to read your own".into(),
            });
        };
        let path = PathBuf::from(format!("traces/{file}"));
        Trace::parse(&path, TraceFormat::Csv, text.as_bytes())
    }
}
