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
    /// Kernel rows: the kernel that ran, in the vocabulary of docs/measurements.md
    /// (`flash_attn_2`, `sdpa_cudnn`, `matmul`, [`REFERENCE_KERNEL`]...); collectives: `nccl`.
    #[serde(default)]
    pub kernel: String,
    /// The library that provided it (`torch`, `flash_attn`, `transformer_engine`, `hsap`...).
    #[serde(default)]
    pub library: String,
    /// The library's version as it reports it.
    #[serde(default)]
    pub version: String,
    /// Element type of the kernel's inputs (`bf16`, `fp16`, `fp8`).
    #[serde(default)]
    pub dtype: String,
    /// The device that ran it: the GPU's name as CUDA reports it, or `cpu`.
    #[serde(default)]
    pub device: String,
}

/// The `kernel` of attention rows timed with hsap's own CUDA-core kernels (kernels/attention.cu):
/// they prove plans correct, and their times are not those of any training framework's kernels.
pub const REFERENCE_KERNEL: &str = "hsap_reference";

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

    /// A row of `kind` and `op` with every optional field empty and no time yet.
    pub fn new(kind: MeasuredKind, op: impl Into<String>) -> Measurement {
        Measurement {
            kind,
            op: op.into(),
            ranks: 1,
            nodes: 1,
            bytes: None,
            flops: None,
            shape: String::new(),
            overlapped: false,
            time_s: 0.0,
            predicted_s: None,
            repeats: 0,
            source: String::new(),
            kernel: String::new(),
            library: String::new(),
            version: String::new(),
            dtype: String::new(),
            device: String::new(),
        }
    }

    /// Whether the row was measured on a CPU rather than a GPU.
    pub fn on_cpu(&self) -> bool {
        let d = self.device.trim().to_ascii_lowercase();
        d == "cpu" || d.starts_with("cpu ") || d.starts_with("cpu(")
    }

    /// "flash_attn_2 (flash_attn 2.7.4)": the kernel with its library and version, as reports
    /// name it; empty for a row that names no kernel.
    pub fn kernel_label(&self) -> String {
        let lib = [self.library.trim(), self.version.trim()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
        match (self.kernel.trim(), lib.is_empty()) {
            ("", _) => String::new(),
            (k, true) => k.to_string(),
            (k, false) => format!("{k} ({lib})"),
        }
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
pub const HEADER: [&str; 17] = [
    "kind", "op", "ranks", "nodes", "bytes", "flops", "shape", "overlapped", "time_s", "predicted_s", "repeats", "source", "kernel",
    "library", "version", "dtype", "device",
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
                kernel: "nccl".into(),
                library: "nccl".into(),
                version: "2.21.5".into(),
                dtype: "bf16".into(),
                device: "NVIDIA H100 80GB HBM3".into(),
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
                kernel: "flash_attn_2".into(),
                library: "flash_attn".into(),
                version: "2.7.4".into(),
                dtype: "bf16".into(),
                device: "cpu".into(),
            },
        ];
        write(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&HEADER.join(",")), "{text}");
        assert_eq!(read(&path).unwrap(), rows);
        assert_eq!(rows[1].shape_value("head_dim"), Some("128"));
        assert_eq!(rows[1].kernel_label(), "flash_attn_2 (flash_attn 2.7.4)");
        assert!(rows[1].on_cpu() && !rows[0].on_cpu());
    }

    #[test]
    fn files_of_the_twelve_old_columns_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, format!("{}\ngemm,gemm,1,1,,2e12,m=1;n=2;k=3,false,1e-3,,5,x\n", HEADER[..12].join(","))).unwrap();
        let rows = read(&path).unwrap();
        assert_eq!((rows[0].kernel.as_str(), rows[0].device.as_str(), rows[0].kernel_label()), ("", "", String::new()));
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
        std::fs::write(&path, format!("{}\ncollective,all_gather,8,1,1024,,,maybe,2e-5,,5,x\n", HEADER[..12].join(","))).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv:2") && err.contains("overlapped must be true or false, not 'maybe'"), "{err}");
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let text = format!("{}\ncollective,all_gather,8,1,1024,,,false,abc,,5,x\n", HEADER[..12].join(","));
        std::fs::write(&path, text).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv:2"), "{err}");
        // Windows line endings and a blank line: the row is on line 4.
        let good = "collective,all_gather,8,1,1024,,,false,2e-5,,5,x";
        let text = format!("{}\r\n{good}\r\n\r\ncollective,all_gather,8,1,1024,,,false,abc,,5,x\r\n", HEADER[..12].join(","));
        std::fs::write(&path, text).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.csv:4"), "{err}");
    }
}
