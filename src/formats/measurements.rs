//! The measurements CSV (docs/measurements.md): one row per timed operation, written by
//! `validate` and `calibrate --run`, read by `calibrate` and the report.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasuredKind {
    /// One NCCL collective (`op` names it).
    Collective,
    AttentionFwd,
    AttentionBwd,
    Gemm,
    /// A phase of a plan's step (several kernels and collectives; `op` names the phase).
    Phase,
    /// A whole training step of a plan.
    Step,
}

/// One timed operation. Shape fields that do not apply are empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub kind: MeasuredKind,
    /// Collective name (`all_to_all`, `all_gather`, `reduce_scatter`, `all_reduce`, `send_recv`),
    /// kernel name, or phase name.
    pub op: String,
    /// Ranks taking part (1 for a single-GPU kernel).
    pub ranks: u32,
    /// Nodes the ranks span.
    pub nodes: u32,
    /// Bytes each rank sends or owns (collectives), as nccl-tests' `size` column for the same op.
    #[serde(default)]
    pub bytes: Option<f64>,
    /// Floating-point operations of the timed work on one rank (kernels).
    #[serde(default)]
    pub flops: Option<f64>,
    /// `key=value` pairs separated by `;`: e.g. `seqlen=8192;heads=32;head_dim=128;causal=1` or
    /// `m=4096;n=4096;k=4096`.
    #[serde(default)]
    pub shape: String,
    /// Whether the operation ran overlapped with other work (for overlap-efficiency fits).
    #[serde(default, deserialize_with = "flag")]
    pub overlapped: bool,
    /// Median time of the repetitions, seconds.
    pub time_s: f64,
    /// The cost model's prediction for the same operation, seconds, when known.
    #[serde(default)]
    pub predicted_s: Option<f64>,
    pub repeats: u32,
    /// Where the row came from (host, tool, plan and batch...).
    #[serde(default)]
    pub source: String,
}

/// `true`/`false` (also `1`/`0`); an empty field is `false`, as when the column is left out.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" | "false" | "0" => Ok(false),
        "true" | "1" => Ok(true),
        other => Err(serde::de::Error::custom(format!("overlapped must be true or false, not '{other}'"))),
    }
}

impl Measurement {
    /// The value of `key` in the shape field, if present.
    pub fn shape_value(&self, key: &str) -> Option<&str> {
        self.shape
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
    }
}

/// Reads a measurements CSV; errors name the line and the column.
pub fn read(path: &Path) -> Result<Vec<Measurement>> {
    Ok(read_located(path)?.into_iter().map(|(_, m)| m).collect())
}

/// Reads a measurements CSV keeping each row's line number, so later checks can name it.
pub fn read_located(path: &Path) -> Result<Vec<(usize, Measurement)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_located(path, &bytes)
}

/// [`read_located`] on the bytes of a file; `path` only names it in errors.
pub fn parse_located(path: &Path, bytes: &[u8]) -> Result<Vec<(usize, Measurement)>> {
    let rows = super::parse_csv::<Measurement>(path, bytes, &REQUIRED, "docs/measurements.md")?;
    if let Some((line, row)) = rows.iter().find(|(_, r)| !(r.time_s.is_finite() && r.time_s > 0.0)) {
        return Err(Error::input(
            path,
            *line,
            format!("time_s = {} must be a positive number of seconds", row.time_s),
            "drop the row or fix the timing",
        ));
    }
    Ok(rows)
}

/// Writes measurements as CSV (the header is always written, even for no rows).
pub fn write(path: &Path, rows: &[Measurement]) -> Result<()> {
    if rows.is_empty() {
        return crate::output::write_atomic(path, format!("{}\n", HEADER.join(",")).as_bytes());
    }
    super::write_csv(path, rows)
}

/// Columns a file must have; the others may be left out (docs/measurements.md).
const REQUIRED: [&str; 6] = ["kind", "op", "ranks", "nodes", "time_s", "repeats"];

/// The columns, in order.
pub const HEADER: [&str; 12] = [
    "kind", "op", "ranks", "nodes", "bytes", "flops", "shape", "overlapped", "time_s", "predicted_s", "repeats", "source",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let rows = vec![
            Measurement {
                kind: MeasuredKind::Collective,
                op: "all_to_all".into(),
                ranks: 8,
                nodes: 1,
                bytes: Some(1048576.0),
                flops: None,
                shape: String::new(),
                overlapped: false,
                time_s: 2.5e-5,
                predicted_s: Some(2.4e-5),
                repeats: 20,
                source: "test".into(),
            },
            Measurement {
                kind: MeasuredKind::AttentionFwd,
                op: "attn_fwd_varlen".into(),
                ranks: 1,
                nodes: 1,
                bytes: None,
                flops: Some(1e12),
                shape: "seqlen=8192;heads=32;head_dim=128;causal=1".into(),
                overlapped: false,
                time_s: 5e-3,
                predicted_s: None,
                repeats: 10,
                source: "test".into(),
            },
        ];
        write(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&HEADER.join(",")), "{text}");
        assert_eq!(read(&path).unwrap(), rows);
        assert_eq!(rows[1].shape_value("head_dim"), Some("128"));
    }

    #[test]
    fn optional_columns_may_be_left_out_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let text = "kind,op,ranks,nodes,bytes,overlapped,time_s,repeats\n\
                    collective,all_gather,8,1,1024,,2e-5,5\n\
                    collective,all_gather,8,1,1024,1,3e-5,5\n";
        std::fs::write(&path, text).unwrap();
        let rows = read_located(&path).unwrap();
        assert_eq!(rows.iter().map(|(line, _)| *line).collect::<Vec<_>>(), vec![2, 3]);
        let (_, first) = &rows[0];
        assert_eq!((first.bytes, first.flops, first.shape.as_str(), first.overlapped), (Some(1024.0), None, "", false));
        assert!(rows[1].1.overlapped);
    }

    #[test]
    fn a_missing_required_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, "kind,op,ranks,time_s,repeats\ngemm,x,1,1e-3,5\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv:1: no `nodes` column"), "{err}");
        std::fs::write(&path, format!("{}\ncollective,all_gather,8,1,1024,,,maybe,2e-5,,5,x\n", HEADER.join(","))).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv:2") && err.contains("overlapped must be true or false, not 'maybe'"), "{err}");
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let text = format!("{}\ncollective,all_gather,8,1,1024,,,false,abc,,5,x\n", HEADER.join(","));
        std::fs::write(&path, text).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv:2"), "{err}");
    }
}
