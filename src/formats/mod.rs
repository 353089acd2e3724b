//! The files hsap reads and writes, each owned by one module here, with its documentation:
//!
//! | file | module | documented in |
//! |---|---|---|
//! | `plan.json` | [`plan`] (the types are `crate::plan`'s) | docs/plan-format.md |
//! | measurements CSV | [`measurements`] | docs/measurements.md |
//! | `fit_points.csv` | [`fit_points`] | docs/calibration.md |
//! | the run directory (`summary.json`, `trace.json`, `batches.csv`, `groups.csv` and the two above) | [`run`] | docs/report.md |
//!
//! Every CSV goes through [`read_csv`] and [`write_csv`]: a header row, columns in any order,
//! empty cells for absent optional values, and errors that name the file, the line and the
//! column. Every JSON file goes through [`write_json`] (pretty, with a final newline).

pub mod fit_points;
pub mod measurements;
pub mod plan;
pub mod recommendation;
pub mod run;

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

const CALIBRATION_DOC: &str = "docs/calibration.md";

/// Reads a CSV into typed rows, each with its 1-based line number. `required` columns must be in
/// the header (serde names any other missing column on the first row); `doc` is where the
/// columns are described, for the hints.
pub fn read_csv<T: DeserializeOwned>(path: &Path, required: &[&str], doc: &str) -> Result<Vec<(usize, T)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_csv(path, &bytes, required, doc)
}

/// [`read_csv`] on the bytes of a file; `path` only names it in errors.
pub fn parse_csv<T: DeserializeOwned>(path: &Path, bytes: &[u8], required: &[&str], doc: &str) -> Result<Vec<(usize, T)>> {
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let hint = || format!("see {doc} for the columns of {name}");
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(bytes);
    let mut lines = crate::error::CsvLines::new(bytes);
    let headers = reader
        .headers()
        .map_err(|e| Error::input(path, 1, format!("unreadable header: {e}"), hint()))?
        .clone();
    if let Some(missing) = required.iter().find(|c| !headers.iter().any(|h| h == **c)) {
        return Err(Error::input(
            path,
            1,
            format!("no `{missing}` column (the header is: {})", headers.iter().collect::<Vec<_>>().join(",")),
            hint(),
        ));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = lines.of(e.position());
            Error::input(path, line, format!("unreadable row: {e}"), hint())
        })?;
        let line = lines.of(record.position());
        let row = record
            .deserialize::<T>(Some(&headers))
            .map_err(|e| Error::input(path, line, describe_csv_error(&e, &headers, &record), hint()))?;
        rows.push((line, row));
    }
    Ok(rows)
}

/// The csv crate's message without its position (the caller adds file and line), with the column.
fn describe_csv_error(e: &csv::Error, headers: &csv::StringRecord, record: &csv::StringRecord) -> String {
    let csv::ErrorKind::Deserialize { err, .. } = e.kind() else {
        return e.to_string();
    };
    let message = err.kind().to_string();
    // serde's own messages (an unknown variant...) carry no column; they quote the bad value,
    // so the column is the one holding it.
    let column = err.field().map(|i| i as usize).or_else(|| {
        let quoted = message.split('`').nth(1)?;
        let mut holding = record.iter().enumerate().filter(|(_, f)| *f == quoted);
        match (holding.next(), holding.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    });
    match column.and_then(|i| headers.get(i)) {
        Some(name) => format!("column '{name}': {message}"),
        None => message,
    }
}

/// Writes rows as CSV with a header (an empty file for no rows).
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    crate::output::write_atomic(path, to_csv(rows)?.as_bytes())
}

/// Rows as CSV text with a header (empty for no rows).
pub fn to_csv<T: Serialize>(rows: &[T]) -> Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row).map_err(|e| Error::internal(format!("cannot encode a CSV row: {e}")))?;
    }
    let bytes = writer.into_inner().map_err(|e| Error::internal(format!("cannot encode CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::internal(format!("CSV is not UTF-8: {e}")))
}

/// Writes a value as pretty JSON with a final newline.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("cannot encode {}: {e}", path.display())))?;
    text.push('\n');
    crate::output::write_atomic(path, text.as_bytes())
}
