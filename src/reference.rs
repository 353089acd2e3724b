//! The published tables of `reference/` (see reference/README.md), embedded in the binary and
//! parsed into typed rows. The cost model seeds its kernel efficiencies from the FlashAttention
//! tables; the validation (`cost::validate`) compares its predictions with the USP, FlashAttention
//! and FlexSP measurements.

use crate::error::{Error, Result};
use crate::scheme::RingVariant;
use serde::Serialize;
use std::path::Path;
use std::sync::OnceLock;

const FA2_A100_FWD_BWD: &str = include_str!("../reference/fa2_a100_fwd_bwd_tflops.csv");
const FA2_H100_FWD_BWD: &str = include_str!("../reference/fa2_h100_fwd_bwd_tflops.csv");
const FA3_H100_FWD: &str = include_str!("../reference/fa3_h100_fwd_tflops.csv");
const USP_8XA100: &str = include_str!("../reference/usp_8xA100_nvlink_fwd_iters_per_s.csv");
const FLEXSP_ALLTOALL: &str = include_str!("../reference/flexsp_alltoall_bandwidth.csv");
const HARDWARE_FACTS: &str = include_str!("../reference/hardware_facts.csv");
const E2E_RUNS: &str = include_str!("../reference/e2e/e2e_training_runs.csv");
const SDPA: &str = include_str!("../reference/sdpa_blackwell_hopper_tflops.csv");

/// cuDNN's SDPA benchmark (and the FlashAttention-2 and PyTorch backends beside it) on B200,
/// GB200 and H200 (reference/README.md).
pub const SDPA_FILE: &str = "reference/sdpa_blackwell_hopper_tflops.csv";

/// The development set of published end-to-end training runs (reference/e2e/README.md).
pub const E2E_FILE: &str = "reference/e2e/e2e_training_runs.csv";

/// Sequence lengths of the FlashAttention tables' columns.
pub const FA_SEQLENS: [u32; 6] = [512, 1024, 2048, 4096, 8192, 16384];

/// Tokens per batch of the FlashAttention benchmarks: batch = 16K / seqlen (reference/README.md).
pub const FA_BENCH_TOKENS: u32 = 16 * 1024;

/// Model width of the FlashAttention benchmarks: heads = 2048 / head_dim (reference/README.md).
pub const FA_BENCH_HIDDEN: u32 = 2048;

/// Which published FlashAttention figure a row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaTable {
    /// FlashAttention-2 benchmark on A100 80GB SXM4, forward + backward.
    Fa2A100FwdBwd,
    /// The same on H100 80GB SXM5.
    Fa2H100FwdBwd,
    /// FlashAttention-3 benchmark on H100, forward only (FP16), with FA2 and others beside it.
    Fa3H100Fwd,
}

impl FaTable {
    pub const ALL: [FaTable; 3] = [FaTable::Fa2A100FwdBwd, FaTable::Fa2H100FwdBwd, FaTable::Fa3H100Fwd];

    pub fn file(self) -> &'static str {
        match self {
            FaTable::Fa2A100FwdBwd => "reference/fa2_a100_fwd_bwd_tflops.csv",
            FaTable::Fa2H100FwdBwd => "reference/fa2_h100_fwd_bwd_tflops.csv",
            FaTable::Fa3H100Fwd => "reference/fa3_h100_fwd_tflops.csv",
        }
    }

    fn text(self) -> &'static str {
        match self {
            FaTable::Fa2A100FwdBwd => FA2_A100_FWD_BWD,
            FaTable::Fa2H100FwdBwd => FA2_H100_FWD_BWD,
            FaTable::Fa3H100Fwd => FA3_H100_FWD,
        }
    }

    /// Whether the table times forward and backward together (FLOPs counted as 3.5 x forward).
    pub fn fwd_bwd(self) -> bool {
        !matches!(self, FaTable::Fa3H100Fwd)
    }

    /// The cluster preset whose GPU ran the benchmark.
    pub fn cluster_preset(self) -> &'static str {
        match self {
            FaTable::Fa2A100FwdBwd => "dgx-a100-80g",
            FaTable::Fa2H100FwdBwd | FaTable::Fa3H100Fwd => "dgx-h100",
        }
    }
}

/// One implementation's row of a FlashAttention table: TFLOP/s at each of [`FA_SEQLENS`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaRow {
    pub table: FaTable,
    /// 1-based line in the CSV file.
    pub line: usize,
    pub causal: bool,
    pub head_dim: u32,
    /// `FlashAttention-2`, `FlashAttention-3`, `cuDNN`, `PyTorch`...
    pub implementation: String,
    /// Achieved TFLOP/s; `None` where the benchmark ran out of memory.
    pub tflops: [Option<f64>; 6],
    /// The bar label was partly hidden (`~` in the CSV): the value is a reading, not exact.
    pub approximate: [bool; 6],
}

/// How a USP cell's variant column runs: ring layout, and Q/K/V packed into one all-to-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct UspVariant {
    pub ring: RingVariant,
    pub qkv_packed: bool,
}

impl UspVariant {
    /// The table's columns, in order.
    pub const COLUMNS: [UspVariant; 6] = [
        UspVariant { ring: RingVariant::Basic, qkv_packed: true },
        UspVariant { ring: RingVariant::Basic, qkv_packed: false },
        UspVariant { ring: RingVariant::Zigzag, qkv_packed: true },
        UspVariant { ring: RingVariant::Zigzag, qkv_packed: false },
        UspVariant { ring: RingVariant::Stripe, qkv_packed: true },
        UspVariant { ring: RingVariant::Stripe, qkv_packed: false },
    ];

    pub fn name(self) -> String {
        let pack = if self.qkv_packed { "qkvpack" } else { "no_packed" };
        format!("{}_{pack}", self.ring.name())
    }
}

/// A cell of the USP table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UspCell {
    /// Iterations per second.
    Measured(f64),
    /// The run ran out of memory.
    Oom,
    /// Empty: the configuration was not run.
    NotRun,
}

/// One row of the USP table: one attention shape and one Ulysses x ring split of 8 GPUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UspRow {
    pub line: usize,
    /// Query heads per key/value head.
    pub group_num: u32,
    /// Sequences per batch.
    pub bs: u32,
    /// Global sequence length (split over the 8 GPUs).
    pub seqlen: u32,
    pub head_num: u32,
    pub head_size: u32,
    pub ulysses: u32,
    pub ring: u32,
    /// In the order of [`UspVariant::COLUMNS`].
    pub cells: [UspCell; 6],
}

impl UspRow {
    pub fn kv_heads(&self) -> u32 {
        self.head_num / self.group_num.max(1)
    }
}

/// FlexSP's measured effective all-to-all bandwidth for one SP degree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlltoallRow {
    pub line: usize,
    pub sp_degree: u32,
    /// Bytes in each rank's buffer over the time of the whole all-to-all (FlexSP's solver divides
    /// `h x tokens x 2 / sp` by it), GB/s.
    pub effective_gb_per_s: f64,
    pub note: String,
}

/// One row of reference/hardware_facts.csv.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub line: usize,
    pub item: String,
    /// As written (some values are formulas, like `(n-1)/n`).
    pub value: String,
    pub unit: String,
    pub kind: String,
    pub source: String,
}

/// What a published end-to-end run reports (reference/e2e/README.md, "Columns").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum E2eMetric {
    /// Tokens per second per GPU.
    TokensPerSPerGpu,
    /// Model TFLOP/s per GPU under the source's FLOP convention.
    TflopsPerGpuModel,
    /// Model FLOPs utilisation, percent of the source's peak.
    Mfu,
    /// Hardware FLOPs utilisation (recomputation counted), percent of the source's peak.
    Hfu,
    /// Seconds per training step (global batch).
    StepTimeS,
}

impl E2eMetric {
    fn parse(text: &str) -> Option<E2eMetric> {
        Some(match text {
            "tokens_per_s_per_gpu" => E2eMetric::TokensPerSPerGpu,
            "tflops_per_gpu_model" => E2eMetric::TflopsPerGpuModel,
            "mfu" => E2eMetric::Mfu,
            "hfu" => E2eMetric::Hfu,
            "step_time_s" => E2eMetric::StepTimeS,
            _ => return None,
        })
    }
}

/// The class of a run's GEMM precision: the first word of the `dtype` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum E2eDtype {
    Bf16,
    Fp8,
    /// MX block-scaled FP8 (Blackwell).
    Mxfp8,
    /// fp16 or bf16, not said which (both run at the same tensor-core rate).
    Half,
}

/// One published end-to-end training run (a row of reference/e2e/e2e_training_runs.csv). Empty
/// cells are `None`: the source did not give them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct E2eRow {
    /// 1-based line in the CSV file.
    pub line: usize,
    pub source_id: String,
    pub source: String,
    pub commit: String,
    pub framework: String,
    pub framework_version: String,
    pub model: String,
    pub layers: Option<u32>,
    pub hidden: Option<u32>,
    pub heads: Option<u32>,
    pub kv_heads: Option<u32>,
    pub ffn: Option<u32>,
    pub vocab: Option<u32>,
    pub gpu: String,
    pub gpus: u32,
    pub gpus_per_node: Option<u32>,
    pub interconnect: String,
    pub dtype: E2eDtype,
    /// The `dtype` column as written (which FP8 recipe, which library).
    pub dtype_detail: String,
    pub seq_len: u32,
    pub global_batch: u32,
    pub micro_batch: Option<u32>,
    pub tp: Option<u32>,
    pub pp: Option<u32>,
    pub vp: Option<u32>,
    pub cp: Option<u32>,
    pub dp: Option<u32>,
    /// Optimizer and parameter sharding as written (FSDP flavour, ZeRO stage, distributed optimizer).
    pub sharding: String,
    pub sequence_parallel: String,
    pub recompute: String,
    pub metric: E2eMetric,
    pub value: f64,
    pub flop_convention: String,
    pub notes: String,
}

/// One measured cell of cuDNN's SDPA training benchmark (NVIDIA/cudnn-frontend
/// benchmark/sdpa_benchmark_training): one kernel, pass and shape on one GPU. TFLOP/s under
/// FlashAttention's convention (forward 4 b s^2 h d, halved when causal; backward 2.5x).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SdpaRow {
    pub line: usize,
    pub gpu: String,
    /// `cudnn_bf16`, `flash_attention`, `pyt_cudnn`, ... as the benchmark names its backends.
    pub kernel: String,
    pub dtype: String,
    pub causal: bool,
    pub batch: u32,
    pub seqlen: u32,
    pub q_heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// `fwd` or `bwd`.
    pub pass: String,
    /// Empty when the benchmark did not say; `True` rows ran the deterministic backward.
    pub deterministic: String,
    pub tflops: f64,
    /// The benchmark's result file and commit.
    pub source: String,
}

/// Every table, parsed once.
#[derive(Debug)]
pub struct Reference {
    pub fa: Vec<FaRow>,
    pub usp: Vec<UspRow>,
    pub alltoall: Vec<AlltoallRow>,
    pub facts: Vec<Fact>,
    pub e2e: Vec<E2eRow>,
    pub sdpa: Vec<SdpaRow>,
}

impl Reference {
    /// The FlashAttention rows of `implementation` in `table`.
    pub fn fa_rows<'a>(&'a self, table: FaTable, implementation: &'a str) -> impl Iterator<Item = &'a FaRow> + 'a {
        self.fa
            .iter()
            .filter(move |r| r.table == table && r.implementation == implementation)
    }

    /// A hardware fact's numeric value.
    pub fn fact(&self, item: &str) -> Result<f64> {
        let path = Path::new("reference/hardware_facts.csv");
        let fact = self.facts.iter().find(|f| f.item == item).ok_or_else(|| {
            Error::input(path, 0, format!("no row '{item}'"), "add the row with its source")
        })?;
        fact.value.trim().parse().map_err(|_| {
            Error::input(path, fact.line, format!("{item} = '{}' is not a number", fact.value), "fix the row")
        })
    }
}

/// The embedded reference tables, parsed on first use.
pub fn tables() -> Result<&'static Reference> {
    static TABLES: OnceLock<std::result::Result<Reference, String>> = OnceLock::new();
    TABLES
        .get_or_init(|| parse_all().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::invalid(format!("embedded reference tables: {e}"), "the tables in reference/ must parse; fix them"))
}

fn parse_all() -> Result<Reference> {
    let mut fa = Vec::new();
    for table in FaTable::ALL {
        fa.extend(parse_fa(table)?);
    }
    Ok(Reference {
        fa,
        usp: parse_usp()?,
        alltoall: parse_alltoall()?,
        facts: parse_facts()?,
        e2e: parse_e2e()?,
        sdpa: parse_sdpa()?,
    })
}

/// Records with their 1-based line numbers, the header checked against `header`. Rows may have
/// more fields than the header (an unquoted comma in a free-text last column).
fn records(file: &str, text: &str, header: &[&str]) -> Result<Vec<(usize, csv::StringRecord)>> {
    let path = Path::new(file);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(text.as_bytes());
    let found = reader.headers().map_err(|e| Error::input(path, 1, e.to_string(), "fix the header"))?;
    if found.iter().collect::<Vec<_>>() != header {
        return Err(Error::input(path, 1, format!("header is {found:?}, expected {header:?}"), "fix the header"));
    }
    let mut lines = crate::error::CsvLines::new(text.as_bytes());
    reader
        .records()
        .map(|r| {
            let r = r.map_err(|e| {
                let line = lines.of(e.position());
                Error::input(path, line, e.to_string(), "fix the row")
            })?;
            let line = lines.of(r.position());
            Ok((line, r))
        })
        .collect()
}

fn field<'a>(file: &str, line: usize, r: &'a csv::StringRecord, i: usize, name: &str) -> Result<&'a str> {
    r.get(i)
        .map(str::trim)
        .ok_or_else(|| Error::input(file, line, format!("missing field '{name}'"), "fix the row"))
}

fn number<T: std::str::FromStr>(file: &str, line: usize, text: &str, name: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::input(file, line, format!("field '{name}' = '{text}' is not a number"), "fix the row"))
}

/// `512`, `8K`, `128K` as tokens.
fn tokens(file: &str, line: usize, text: &str) -> Result<u32> {
    match text.strip_suffix(['K', 'k']) {
        Some(k) => Ok(number::<u32>(file, line, k, "seqlen")? * 1024),
        None => number(file, line, text, "seqlen"),
    }
}

fn parse_fa(table: FaTable) -> Result<Vec<FaRow>> {
    let file = table.file();
    let header = ["causal", "headdim", "impl", "512", "1k", "2k", "4k", "8k", "16k"];
    records(file, table.text(), &header)?
        .into_iter()
        .map(|(line, r)| {
            let causal = number(file, line, field(file, line, &r, 0, "causal")?, "causal")?;
            let head_dim = number(file, line, field(file, line, &r, 1, "headdim")?, "headdim")?;
            let mut tflops = [None; 6];
            let mut approximate = [false; 6];
            for k in 0..6 {
                let cell = field(file, line, &r, 3 + k, header[3 + k])?;
                if cell == "OOM" {
                    continue;
                }
                // `~625 (label hidden)`: a partly hidden bar label, read as 625.
                approximate[k] = cell.starts_with('~');
                let digits: String = cell
                    .trim_start_matches('~')
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                tflops[k] = Some(number(file, line, &digits, header[3 + k])?);
            }
            Ok(FaRow {
                table,
                line,
                causal,
                head_dim,
                implementation: field(file, line, &r, 2, "impl")?.to_string(),
                tflops,
                approximate,
            })
        })
        .collect()
}

fn parse_usp() -> Result<Vec<UspRow>> {
    let file = "reference/usp_8xA100_nvlink_fwd_iters_per_s.csv";
    let header = [
        "group_num",
        "bs",
        "seqlen",
        "head_num",
        "head_size",
        "ulysses_degree",
        "ring_degree",
        "basic_qkvpack",
        "basic_no_packed",
        "zigzag_qkvpack",
        "zigzag_no_packed",
        "stripe_qkvpack",
        "stripe_no_packed",
    ];
    records(file, USP_8XA100, &header)?
        .into_iter()
        .map(|(line, r)| {
            let int = |i: usize| -> Result<u32> { number(file, line, field(file, line, &r, i, header[i])?, header[i]) };
            let mut cells = [UspCell::NotRun; 6];
            for (k, cell) in cells.iter_mut().enumerate() {
                let text = field(file, line, &r, 7 + k, header[7 + k])?;
                *cell = match text {
                    "" => UspCell::NotRun,
                    "OOM" => UspCell::Oom,
                    t => UspCell::Measured(number(file, line, t, header[7 + k])?),
                };
            }
            Ok(UspRow {
                line,
                group_num: int(0)?,
                bs: int(1)?,
                seqlen: tokens(file, line, field(file, line, &r, 2, "seqlen")?)?,
                head_num: int(3)?,
                head_size: int(4)?,
                ulysses: int(5)?,
                ring: int(6)?,
                cells,
            })
        })
        .collect()
}

fn parse_alltoall() -> Result<Vec<AlltoallRow>> {
    let file = "reference/flexsp_alltoall_bandwidth.csv";
    records(file, FLEXSP_ALLTOALL, &["sp_degree", "effective_alltoall_gbps", "note"])?
        .into_iter()
        .map(|(line, r)| {
            Ok(AlltoallRow {
                line,
                sp_degree: number(file, line, field(file, line, &r, 0, "sp_degree")?, "sp_degree")?,
                effective_gb_per_s: number(file, line, field(file, line, &r, 1, "effective_alltoall_gbps")?, "effective_alltoall_gbps")?,
                // The note is free text; an unquoted comma in it splits it over fields.
                note: r.iter().skip(2).collect::<Vec<_>>().join(","),
            })
        })
        .collect()
}

fn parse_facts() -> Result<Vec<Fact>> {
    let file = "reference/hardware_facts.csv";
    records(file, HARDWARE_FACTS, &["item", "value", "unit", "kind", "source"])?
        .into_iter()
        .map(|(line, r)| {
            let f = |i: usize, name: &str| field(file, line, &r, i, name).map(str::to_string);
            Ok(Fact {
                line,
                item: f(0, "item")?,
                value: f(1, "value")?,
                unit: f(2, "unit")?,
                kind: f(3, "kind")?,
                source: f(4, "source")?,
            })
        })
        .collect()
}

fn parse_sdpa() -> Result<Vec<SdpaRow>> {
    let file = SDPA_FILE;
    let header = [
        "gpu", "kernel", "dtype", "causal", "batch", "seqlen_q", "seqlen_kv", "q_heads", "kv_heads", "head_dim_qk", "head_dim_v",
        "pass", "deterministic_bwd", "time_ms", "tflops", "flop_convention", "software", "source",
    ];
    records(file, SDPA, &header)?
        .into_iter()
        .map(|(line, r)| {
            let text = |i: usize| field(file, line, &r, i, header[i]).map(str::to_string);
            let int = |i: usize| -> Result<u32> { number(file, line, field(file, line, &r, i, header[i])?, header[i]) };
            let causal = match text(3)?.as_str() {
                "True" => true,
                "False" => false,
                other => return Err(Error::input(file, line, format!("field 'causal' = '{other}'"), "use True or False")),
            };
            Ok(SdpaRow {
                line,
                gpu: text(0)?,
                kernel: text(1)?,
                dtype: text(2)?,
                causal,
                batch: int(4)?,
                seqlen: int(5)?,
                q_heads: int(7)?,
                kv_heads: int(8)?,
                head_dim: int(9)?,
                pass: text(11)?,
                deterministic: text(12)?,
                tflops: number(file, line, field(file, line, &r, 14, "tflops")?, "tflops")?,
                source: text(17)?,
            })
        })
        .collect()
}

fn parse_e2e() -> Result<Vec<E2eRow>> {
    let file = E2E_FILE;
    let header = [
        "source_id", "source_url_or_repo_path", "source_commit_or_date", "framework", "framework_version", "model", "params_b",
        "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "gpu", "gpus", "gpus_per_node", "interconnect", "dtype",
        "seq_len", "global_batch_seqs", "micro_batch", "tp", "pp", "vp", "cp", "dp", "ep", "zero_or_fsdp", "sequence_parallel",
        "recompute", "metric", "value", "flop_convention", "notes",
    ];
    records(file, E2E_RUNS, &header)?
        .into_iter()
        .map(|(line, r)| {
            let text = |name: &str| -> Result<String> {
                let i = header.iter().position(|h| *h == name).unwrap_or(header.len());
                field(file, line, &r, i, name).map(str::to_string)
            };
            let optional = |name: &str| -> Result<Option<u32>> {
                let t = text(name)?;
                if t.is_empty() {
                    return Ok(None);
                }
                number(file, line, &t, name).map(Some)
            };
            let required = |name: &str| -> Result<u32> {
                optional(name)?.ok_or_else(|| Error::input(file, line, format!("field '{name}' is empty"), "every run needs it"))
            };
            let dtype_detail = text("dtype")?;
            let dtype = match dtype_detail.split_whitespace().next().unwrap_or("") {
                "bf16" => E2eDtype::Bf16,
                "fp8" => E2eDtype::Fp8,
                "mxfp8" => E2eDtype::Mxfp8,
                "half" => E2eDtype::Half,
                other => return Err(Error::input(file, line, format!("field 'dtype' starts with '{other}'"), "use bf16, fp8, mxfp8 or half")),
            };
            let metric_text = text("metric")?;
            let metric = E2eMetric::parse(&metric_text).ok_or_else(|| {
                Error::input(file, line, format!("field 'metric' = '{metric_text}'"), "use tokens_per_s_per_gpu, tflops_per_gpu_model, mfu, hfu or step_time_s")
            })?;
            Ok(E2eRow {
                line,
                source_id: text("source_id")?,
                source: text("source_url_or_repo_path")?,
                commit: text("source_commit_or_date")?,
                framework: text("framework")?,
                framework_version: text("framework_version")?,
                model: text("model")?,
                layers: optional("layers")?,
                hidden: optional("hidden")?,
                heads: optional("heads")?,
                kv_heads: optional("kv_heads")?,
                ffn: optional("ffn_hidden")?,
                vocab: optional("vocab")?,
                gpu: text("gpu")?,
                gpus: required("gpus")?,
                gpus_per_node: optional("gpus_per_node")?,
                interconnect: text("interconnect")?,
                dtype,
                dtype_detail,
                seq_len: required("seq_len")?,
                global_batch: required("global_batch_seqs")?,
                micro_batch: optional("micro_batch")?,
                tp: optional("tp")?,
                pp: optional("pp")?,
                vp: optional("vp")?,
                cp: optional("cp")?,
                dp: optional("dp")?,
                sharding: text("zero_or_fsdp")?,
                sequence_parallel: text("sequence_parallel")?,
                recompute: text("recompute")?,
                metric,
                value: number(file, line, &text("value")?, "value")?,
                flop_convention: text("flop_convention")?,
                notes: text("notes")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses_with_its_shape() {
        let t = tables().unwrap();
        // 20 + 12 + 26 implementation rows in the three FlashAttention tables.
        assert_eq!(t.fa.len(), 58);
        assert_eq!(t.usp.len(), 30);
        assert_eq!(t.alltoall.len(), 6);
        assert!(t.facts.len() >= 40);
        assert_eq!(t.e2e.len(), 150);
        assert_eq!(t.sdpa.len(), 468);
    }

    #[test]
    fn e2e_rows_keep_empty_cells_and_their_metric() {
        let t = tables().unwrap();
        let first = &t.e2e[0];
        assert_eq!((first.line, first.source_id.as_str(), first.model.as_str()), (2, "torchtitan_a100_2024_04", "Llama-3-8B"));
        assert_eq!((first.layers, first.heads, first.kv_heads, first.vocab), (Some(32), Some(32), Some(8), Some(128_256)));
        assert_eq!((first.gpus, first.seq_len, first.global_batch, first.micro_batch), (64, 8192, 64, Some(1)));
        assert_eq!((first.metric, first.value, first.dtype), (E2eMetric::TokensPerSPerGpu, 2904.0, E2eDtype::Bf16));
        assert_eq!(first.vp, None);
        let bloom = t.e2e.iter().find(|r| r.source_id == "bloom_176b_2022_03").unwrap();
        assert_eq!((bloom.metric, bloom.value, bloom.tp, bloom.pp), (E2eMetric::StepTimeS, 105.22, Some(4), Some(12)));
        let megatron_2021 = t.e2e.iter().find(|r| r.source_id == "megatron_lm_a100_2021_04").unwrap();
        assert_eq!((megatron_2021.metric, megatron_2021.tp, megatron_2021.heads, megatron_2021.dtype), (E2eMetric::Hfu, None, None, E2eDtype::Half));
    }

    #[test]
    fn fa_cells_keep_approximate_readings_and_oom() {
        let t = tables().unwrap();
        let row = t
            .fa_rows(FaTable::Fa2A100FwdBwd, "FlashAttention-2")
            .find(|r| !r.causal && r.head_dim == 64)
            .unwrap();
        assert_eq!(row.tflops, [Some(132.0), Some(153.0), Some(162.0), Some(171.0), Some(175.0), Some(176.0)]);
        assert_eq!(row.approximate, [false, true, false, false, false, false]);
        let hidden = t
            .fa_rows(FaTable::Fa3H100Fwd, "FlashAttention-3")
            .find(|r| !r.causal && r.head_dim == 256)
            .unwrap();
        assert_eq!(hidden.tflops[1], Some(625.0));
        let pytorch = t.fa_rows(FaTable::Fa2H100FwdBwd, "PyTorch").next().unwrap();
        assert_eq!(pytorch.tflops[5], None);
    }

    #[test]
    fn usp_rows_read_seqlen_suffixes_and_empty_cells() {
        let t = tables().unwrap();
        assert_eq!(t.usp[0].seqlen, 512);
        assert_eq!(t.usp[1].seqlen, 8192);
        let gqa = t.usp.iter().find(|r| r.group_num == 8).unwrap();
        assert_eq!((gqa.seqlen, gqa.head_num, gqa.kv_heads()), (131_072, 64, 8));
        assert_eq!(gqa.cells[0], UspCell::NotRun);
        assert_eq!(gqa.cells[1], UspCell::Measured(8.375));
        let oom = t.usp.iter().find(|r| r.cells[0] == UspCell::Oom).unwrap();
        assert_eq!((oom.ulysses, oom.ring), (1, 8));
    }

    #[test]
    fn facts_are_numbers_where_they_should_be() {
        let t = tables().unwrap();
        assert_eq!(t.fact("a100_sxm.bf16_dense_peak").unwrap(), 312.0);
        let err = t.fact("nccl.busbw_factor.allreduce").unwrap_err().to_string();
        assert!(err.contains("is not a number"), "{err}");
    }
}
