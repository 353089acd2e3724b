//! Readers for the trace formats. Each reader feeds raw integers (with their line numbers) into a
//! [`LengthSink`], which applies the one set of rules for what a valid length is.

use super::LENGTH_FIELDS;
use crate::error::{CsvLines, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceFormat {
    /// CSV with a `tokens`/`length`/`seq_len`/`num_tokens` column, or one unnamed integer column.
    #[serde(rename = "csv")]
    Csv,
    /// One JSON object per line with one of the same field names.
    #[serde(rename = "jsonl")]
    JsonLines,
    /// One integer per line; blank lines and lines starting with `#` are ignored.
    #[serde(rename = "txt")]
    Text,
    /// A Megatron-LM indexed dataset's `.idx` file; documents are the unit.
    #[serde(rename = "idx")]
    MegatronIdx,
}

impl TraceFormat {
    pub const NAMES: [&'static str; 4] = ["csv", "jsonl", "txt", "idx"];

    pub fn name(self) -> &'static str {
        match self {
            TraceFormat::Csv => "csv",
            TraceFormat::JsonLines => "jsonl",
            TraceFormat::Text => "txt",
            TraceFormat::MegatronIdx => "idx",
        }
    }

    pub fn from_name(name: &str) -> Option<TraceFormat> {
        match name {
            "csv" => Some(TraceFormat::Csv),
            "jsonl" | "ndjson" | "json-lines" => Some(TraceFormat::JsonLines),
            "txt" | "text" => Some(TraceFormat::Text),
            "idx" | "megatron" => Some(TraceFormat::MegatronIdx),
            _ => None,
        }
    }

    /// Chooses the format from the extension; for other extensions, from the first bytes.
    pub fn detect(path: &Path) -> Result<TraceFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if let Some(format) = ext.as_deref().and_then(TraceFormat::from_name) {
            return Ok(format);
        }
        let head = read_head(path)?;
        if head.starts_with(super::formats::MEGATRON_MAGIC) {
            return Ok(TraceFormat::MegatronIdx);
        }
        let first = head
            .strip_prefix(BOM)
            .unwrap_or(&head)
            .split(|&b| b == b'\n')
            .map(|l| l.trim_ascii())
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        Ok(if first.starts_with(b"{") {
            TraceFormat::JsonLines
        } else if first.contains(&b',') || LENGTH_FIELDS.iter().any(|f| first == f.as_bytes()) {
            TraceFormat::Csv
        } else {
            TraceFormat::Text
        })
    }
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = vec![0u8; 4096];
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    head.truncate(n);
    Ok(head)
}

/// Collects lengths and enforces what a length is: a non-negative integer that fits in 32 bits;
/// zero is skipped and counted.
pub(super) struct LengthSink {
    path: PathBuf,
    lengths: Vec<u32>,
    skipped_empty: usize,
}

impl LengthSink {
    pub(super) fn new(path: &Path) -> Self {
        LengthSink {
            path: path.to_path_buf(),
            lengths: Vec::new(),
            skipped_empty: 0,
        }
    }

    /// Accepts the text of one value found on `line`.
    fn push_text(&mut self, line: usize, field: &str, text: &[u8]) -> Result<()> {
        let text = text.trim_ascii();
        match parse_u64(text) {
            Some(v) => self.push(line, field, v),
            None if is_digits(text) => Err(self.too_large(line, field, &String::from_utf8_lossy(text))),
            None => Err(self.bad_value(line, field, &String::from_utf8_lossy(text))),
        }
    }

    fn push(&mut self, line: usize, field: &str, value: u64) -> Result<()> {
        if value == 0 {
            self.skipped_empty += 1;
            return Ok(());
        }
        let Ok(v) = u32::try_from(value) else {
            return Err(self.too_large(line, field, &value.to_string()));
        };
        self.lengths.push(v);
        Ok(())
    }

    fn too_large(&self, line: usize, field: &str, text: &str) -> Error {
        Error::input(
            &self.path,
            line,
            format!("{field} = {text} is larger than the supported maximum of {} tokens", u32::MAX),
            "lengths are token counts of single documents; check the column",
        )
    }

    fn bad_value(&self, line: usize, field: &str, text: &str) -> Error {
        let what = if text.is_empty() {
            format!("{field} is empty; expected a non-negative integer token count")
        } else if text.starts_with('-') && parse_u64(text[1..].as_bytes()).is_some() {
            format!("{field} = {text} is negative; expected a non-negative integer token count")
        } else {
            format!("{field} = '{text}' is not an integer; expected a non-negative integer token count")
        };
        Error::input(
            &self.path,
            line,
            what,
            "fix or remove the row; lengths must be whole numbers of tokens",
        )
    }

    pub(super) fn finish(self) -> Result<(Vec<u32>, usize)> {
        if self.lengths.is_empty() {
            let what = if self.skipped_empty > 0 {
                format!("the trace holds no documents: all {} lengths are zero", self.skipped_empty)
            } else {
                "the trace holds no documents".to_string()
            };
            return Err(Error::input(
                &self.path,
                0,
                what,
                "a trace needs at least one positive document length",
            ));
        }
        Ok((self.lengths, self.skipped_empty))
    }
}

/// Parses a plain decimal integer; `None` for anything else (signs, decimals, exponents, text)
/// and for integers past `u64::MAX`.
fn parse_u64(text: &[u8]) -> Option<u64> {
    if !is_digits(text) {
        return None;
    }
    text.iter().try_fold(0u64, |acc, &b| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
}

fn is_digits(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(u8::is_ascii_digit)
}

/// The UTF-8 byte-order mark some editors put at the start of text files.
const BOM: &[u8] = b"\xEF\xBB\xBF";

pub(super) fn parse(format: TraceFormat, path: &Path, bytes: &[u8], sink: &mut LengthSink) -> Result<()> {
    // A text file may start with a byte-order mark; the CSV reader skips it itself.
    let text = bytes.strip_prefix(BOM).unwrap_or(bytes);
    match format {
        TraceFormat::Csv => parse_csv(path, bytes, sink),
        TraceFormat::JsonLines => parse_jsonl(path, text, sink),
        TraceFormat::Text => parse_text(path, text, sink),
        TraceFormat::MegatronIdx => parse_megatron_idx(path, bytes, sink),
    }
}

fn not_utf8(path: &Path, line: usize) -> Error {
    Error::input(
        path,
        line,
        "the file is not UTF-8 text",
        "pass a text trace, or a Megatron .idx file with the .idx extension",
    )
}

fn parse_text(path: &Path, bytes: &[u8], sink: &mut LengthSink) -> Result<()> {
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        if std::str::from_utf8(line).is_err() {
            return Err(not_utf8(path, i + 1));
        }
        sink.push_text(i + 1, "length", line)?;
    }
    Ok(())
}

fn parse_csv(path: &Path, bytes: &[u8], sink: &mut LengthSink) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut lines = CsvLines::new(bytes);
    let csv_err = |lines: &mut CsvLines, e: csv::Error| {
        let line = lines.of(e.position());
        match e.kind() {
            csv::ErrorKind::Utf8 { .. } => not_utf8(path, line),
            _ => Error::input(path, line, format!("malformed CSV: {e}"), "check quoting and separators"),
        }
    };
    // The first non-empty record decides whether there is a header.
    let column = loop {
        if !reader.read_byte_record(&mut record).map_err(|e| csv_err(&mut lines, e))? {
            return Ok(()); // empty file: `finish` reports it
        }
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        let line = lines.of(record.position());
        break csv_column(path, line, &record, sink)?;
    };
    let (index, name) = column;
    while reader.read_byte_record(&mut record).map_err(|e| csv_err(&mut lines, e))? {
        let line = lines.of(record.position());
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        let Some(value) = record.get(index) else {
            return Err(Error::input(
                path,
                line,
                format!("row has {} fields but the '{name}' column is field {}", record.len(), index + 1),
                "every row needs a value in the length column",
            ));
        };
        sink.push_text(line, &name, value)?;
    }
    Ok(())
}

/// Finds the length column from the first record: a header naming one of [`LENGTH_FIELDS`], or a
/// single integer column without a header (in which case the record is itself a value).
fn csv_column(path: &Path, line: usize, first: &csv::ByteRecord, sink: &mut LengthSink) -> Result<(usize, String)> {
    let fields: Vec<String> = first.iter().map(|f| String::from_utf8_lossy(f).to_ascii_lowercase()).collect();
    for name in LENGTH_FIELDS {
        if let Some(index) = fields.iter().position(|f| f == name) {
            return Ok((index, name.to_string()));
        }
    }
    if fields.len() == 1 && parse_u64(first[0].trim_ascii()).is_some() {
        sink.push_text(line, "length", &first[0])?;
        return Ok((0, "length".into()));
    }
    Err(Error::input(
        path,
        line,
        format!("no length column in header [{}]", fields.join(", ")),
        format!(
            "name the column one of {}, or give a single column of integers without a header",
            LENGTH_FIELDS.join(", ")
        ),
    ))
}

fn parse_jsonl(path: &Path, bytes: &[u8], sink: &mut LengthSink) -> Result<()> {
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).map_err(|e| {
            Error::input(
                path,
                line_no,
                format!("not a JSON object: {e}"),
                "each line must be one JSON object such as {\"tokens\": 1234}",
            )
        })?;
        let Some((name, value)) = LENGTH_FIELDS.iter().find_map(|f| object.get(*f).map(|v| (*f, v))) else {
            return Err(Error::input(
                path,
                line_no,
                format!("no length field among the keys [{}]", object.keys().cloned().collect::<Vec<_>>().join(", ")),
                format!("give each object one of the fields {}", LENGTH_FIELDS.join(", ")),
            ));
        };
        match value {
            serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
                (Some(v), _) => sink.push(line_no, name, v)?,
                // Integers past u64::MAX arrive as floats: whole, but too large.
                (None, Some(f)) if f >= 2f64.powi(64) => {
                    return Err(sink.too_large(line_no, name, &n.to_string()))
                }
                _ => return Err(sink.bad_value(line_no, name, &n.to_string())),
            },
            other => return Err(sink.bad_value(line_no, name, &other.to_string())),
        }
    }
    Ok(())
}

/// The first bytes of a Megatron-LM `.idx` file (`_INDEX_HEADER` in megatron/core/datasets/indexed_dataset.py).
pub(super) const MEGATRON_MAGIC: &[u8] = b"MMIDIDX\x00\x00";

/// Reads document lengths from a Megatron-LM indexed dataset index.
///
/// Layout (little endian): magic (9 bytes), version u64 (= 1), dtype code u8, sequence count u64,
/// document count u64, sequence lengths i32[sequence count], sequence pointers i64[sequence count],
/// document indices i64[document count]. Document indices are boundaries into the sequences:
/// document k spans sequences `doc_idx[k]..doc_idx[k+1]`, and its length is the sum of theirs.
fn parse_megatron_idx(path: &Path, bytes: &[u8], sink: &mut LengthSink) -> Result<()> {
    let bad = |what: String| {
        Error::input(
            path,
            0,
            what,
            "pass the .idx file written by Megatron-LM's preprocess_data.py (not the .bin)",
        )
    };
    if !bytes.starts_with(MEGATRON_MAGIC) {
        return Err(bad("not a Megatron-LM index: the file does not start with MMIDIDX".into()));
    }
    let mut at = MEGATRON_MAGIC.len();
    let mut take = |n: usize, what: &str| -> Result<&[u8]> {
        let slice = bytes
            .get(at..at + n)
            .ok_or_else(|| bad(format!("the index is truncated: {what} ends past the file's {} bytes", bytes.len())))?;
        at += n;
        Ok(slice)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let version = u64_at(take(8, "the version")?);
    if version != 1 {
        return Err(bad(format!("index version {version} is not supported (only version 1)")));
    }
    let _dtype = take(1, "the dtype code")?;
    let sequences = u64_at(take(8, "the sequence count")?);
    let documents = u64_at(take(8, "the document count")?);
    let too_big = |n: u64| usize::try_from(n).ok().filter(|&n| n <= bytes.len());
    let (Some(n_seq), Some(n_doc)) = (too_big(sequences), too_big(documents)) else {
        return Err(bad(format!(
            "the index claims {sequences} sequences and {documents} document boundaries, more than its size allows"
        )));
    };
    let seq_bytes = take(4 * n_seq, "the sequence lengths")?;
    let lengths: Vec<i32> = seq_bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    take(8 * n_seq, "the sequence pointers")?;
    let doc_bytes = take(8 * n_doc, "the document indices")?;
    let bounds: Vec<i64> = doc_bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if bounds.first() != Some(&0) || bounds.last().copied() != Some(n_seq as i64) {
        return Err(bad(format!(
            "document indices must run from 0 to the sequence count {n_seq}; found {:?}..{:?}",
            bounds.first(),
            bounds.last()
        )));
    }
    for (doc, pair) in bounds.windows(2).enumerate() {
        let (start, end) = (pair[0], pair[1]);
        if end < start {
            return Err(bad(format!("document {doc} ends (sequence {end}) before it starts (sequence {start})")));
        }
        // Only the last boundary was checked against the sequence count: one in the middle may
        // point past it and come back.
        if end > n_seq as i64 {
            return Err(bad(format!("document {doc} ends at sequence {end}, past the index's {n_seq} sequences")));
        }
        let mut total: u64 = 0;
        for s in start as usize..end as usize {
            let len = lengths[s];
            if len < 0 {
                return Err(bad(format!("sequence {s} has negative length {len}")));
            }
            total += len as u64;
        }
        // The "line" of an index entry is its document number, 1-based.
        sink.push(doc + 1, "document length", total)?;
    }
    Ok(())
}
