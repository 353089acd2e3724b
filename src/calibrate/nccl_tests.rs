//! Parser for the standard output of NVIDIA's nccl-tests (`all_reduce_perf`, `all_gather_perf`,
//! `sendrecv_perf` and the rest) as people publish it: with or without the leading `#`, with
//! `mpirun --tag-output` prefixes, NCCL INFO lines anywhere (even inside the table), old and new
//! column sets, cut-off runs, several runs in one file, and shell or kubectl lines around the log.
//!
//! What the parser cannot read it infers and says so (the `from` of every [`Fact`]), and what it
//! cannot infer it reports as missing, so the caller can ask the user (`--op`, `--ranks`,
//! `--nodes`). Input that is not a log, or a table with unreadable rows, is an [`Error::Input`]
//! naming the file and line.

use super::plural;
use crate::cluster::Collective;
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A value the parser knows, and how it knows it ("device lines", "inferred from busbw/algbw"...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact<T> {
    pub value: T,
    pub from: String,
}

impl<T> Fact<T> {
    fn new(value: T, from: impl Into<String>) -> Self {
        Fact { value, from: from.into() }
    }
}

/// The tests nccl-tests ships (one binary each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NcclOp {
    AllReduce,
    AllGather,
    ReduceScatter,
    AllToAll,
    SendRecv,
    Broadcast,
    Reduce,
    Gather,
    Scatter,
    Hypercube,
}

impl NcclOp {
    pub const ALL: [NcclOp; 10] = [
        NcclOp::AllReduce,
        NcclOp::AllGather,
        NcclOp::ReduceScatter,
        NcclOp::AllToAll,
        NcclOp::SendRecv,
        NcclOp::Broadcast,
        NcclOp::Reduce,
        NcclOp::Gather,
        NcclOp::Scatter,
        NcclOp::Hypercube,
    ];

    /// The test's binary without `_perf` (`all_reduce` for `all_reduce_perf`).
    pub fn binary_stem(self) -> &'static str {
        match self {
            NcclOp::AllReduce => "all_reduce",
            NcclOp::AllGather => "all_gather",
            NcclOp::ReduceScatter => "reduce_scatter",
            NcclOp::AllToAll => "alltoall",
            NcclOp::SendRecv => "sendrecv",
            NcclOp::Broadcast => "broadcast",
            NcclOp::Reduce => "reduce",
            NcclOp::Gather => "gather",
            NcclOp::Scatter => "scatter",
            NcclOp::Hypercube => "hypercube",
        }
    }

    /// Reads a binary name or path (`./build/all_reduce_perf`, `all_gather_perf_mpi`).
    pub fn from_binary(token: &str) -> Option<NcclOp> {
        let base = token.rsplit('/').next().unwrap_or(token);
        let stem = base.strip_suffix("_perf_mpi").or_else(|| base.strip_suffix("_perf"))?;
        NcclOp::ALL.into_iter().find(|op| op.binary_stem() == stem)
    }

    /// Reads an op name as a user would type it for `--op`: the binary stem (`alltoall`), the
    /// binary (`alltoall_perf`) or hsap's collective name (`all_to_all`).
    pub fn from_name(name: &str) -> Option<NcclOp> {
        let name = name.trim();
        NcclOp::from_binary(name)
            .or_else(|| NcclOp::ALL.into_iter().find(|op| op.binary_stem() == name))
            .or_else(|| Collective::ALL.into_iter().find(|c| c.name() == name).map(NcclOp::from))
    }

    /// The collective the cost model prices, if it prices this one.
    pub fn collective(self) -> Option<Collective> {
        match self {
            NcclOp::AllReduce => Some(Collective::AllReduce),
            NcclOp::AllGather => Some(Collective::AllGather),
            NcclOp::ReduceScatter => Some(Collective::ReduceScatter),
            NcclOp::AllToAll => Some(Collective::AllToAll),
            NcclOp::SendRecv => Some(Collective::SendRecv),
            _ => None,
        }
    }

    /// busbw / algbw on `n` ranks as nccl-tests computes it, for the tests whose factor
    /// nccl-tests' doc/PERFORMANCE.md states (broadcast and reduce: 1).
    fn bus_factor(self, n: u32) -> Option<f64> {
        match self {
            NcclOp::Broadcast | NcclOp::Reduce => Some(1.0),
            _ => self.collective().map(|c| c.busbw_factor(n)),
        }
    }

    /// Tests whose `count` column is per rank, so that size = count x type size x ranks.
    fn count_is_per_rank(self) -> bool {
        matches!(self, NcclOp::AllGather | NcclOp::ReduceScatter | NcclOp::AllToAll)
    }

    /// Tests that print `none` (or nothing, in old alltoall) in the `redop` column.
    fn has_no_redop(self) -> bool {
        !matches!(self, NcclOp::AllReduce | NcclOp::ReduceScatter | NcclOp::Reduce | NcclOp::SendRecv)
    }

    fn is_rooted(self) -> bool {
        matches!(self, NcclOp::Broadcast | NcclOp::Reduce | NcclOp::Gather | NcclOp::Scatter)
    }
}

impl From<Collective> for NcclOp {
    fn from(c: Collective) -> Self {
        match c {
            Collective::AllReduce => NcclOp::AllReduce,
            Collective::AllGather => NcclOp::AllGather,
            Collective::ReduceScatter => NcclOp::ReduceScatter,
            Collective::AllToAll => NcclOp::AllToAll,
            Collective::SendRecv => NcclOp::SendRecv,
        }
    }
}

impl std::fmt::Display for NcclOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.collective() {
            Some(c) => f.write_str(c.name()),
            None => f.write_str(self.binary_stem()),
        }
    }
}

/// The `# nThread 1 nGpus 1 minBytes 8 maxBytes ... step: 2(factor) warmup iters: 5 iters: 20 ...`
/// line. Fields that older versions do not print are `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunHeader {
    pub line: usize,
    pub n_threads: u32,
    pub n_gpus: u32,
    pub min_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub step: Option<Step>,
    pub warmup_iters: Option<u32>,
    pub iters: Option<u32>,
    pub agg_iters: Option<u32>,
    pub validation: Option<u32>,
    pub graph: Option<u32>,
}

/// How sizes grow from one row to the next (`-f` factor or `-i` increment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Factor(u64),
    Bytes(u64),
}

/// One `Rank N [Group G] Pid P on HOST device D [bus] NAME` line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub line: usize,
    pub rank: u32,
    pub group: Option<u32>,
    pub pid: u64,
    pub host: String,
    pub device: u32,
    pub bus_id: String,
    pub name: String,
}

/// A command line that ran the test (`./build/sendrecv_perf -b 128M -e 1G -f 2 -g 8`, possibly
/// behind `mpirun -np 16` or `srun -N 2`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandLine {
    pub line: usize,
    pub text: String,
    pub op: NcclOp,
    /// `mpirun`, `srun`... when the binary was started by a launcher.
    pub launcher: Option<String>,
    /// Processes the launcher started, when the command line says.
    pub processes: Option<u32>,
    /// Nodes the launcher used, when the command line says.
    pub nodes: Option<u32>,
    /// `-t` (threads per process) and `-g` (GPUs per thread); 1 when absent, as in nccl-tests.
    pub threads: u32,
    pub gpus: u32,
}

/// The data-check column: `#wrong` (count of wrong elements; `N/A` without validation) in current
/// versions, `error` (max relative error, a float) in old ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Wrong(u64),
    Error(f64),
    NotChecked,
}

/// One placement's (out-of-place or in-place) timing of one row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    pub time_us: f64,
    pub algbw_gb_per_s: f64,
    pub busbw_gb_per_s: f64,
    pub check: Check,
    /// Half the last printed digit of algbw and busbw: their rounding, for inferring the
    /// bus factor from them.
    pub algbw_half_ulp: f64,
    pub busbw_half_ulp: f64,
}

/// One result row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub line: usize,
    /// nccl-tests' `size` column, bytes.
    pub size_bytes: u64,
    pub count: u64,
    pub dtype: String,
    /// Empty in old alltoall logs, which printed nothing there.
    pub redop: String,
    /// Absent in the old column set.
    pub root: Option<i64>,
    pub out_of_place: Option<Timing>,
    pub in_place: Option<Timing>,
}

impl Row {
    pub fn timings(&self) -> impl Iterator<Item = &Timing> {
        self.out_of_place.iter().chain(self.in_place.iter())
    }

    /// The faster of the out-of-place and in-place times, microseconds.
    pub fn best_time_us(&self) -> f64 {
        self.timings().map(|t| t.time_us).fold(f64::INFINITY, f64::min)
    }
}

/// Which column set the table uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Columns {
    /// Line of the column header; 0 when there was none and the row width decided.
    pub line: usize,
    pub names: Vec<String>,
    pub has_root: bool,
    /// `#wrong` (current) or `error` (old); `None` when the header has no check column.
    pub check: Option<String>,
    #[serde(skip)]
    layout: Layout,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Layout {
    root: Option<usize>,
    groups: Vec<GroupCols>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupCols {
    time: usize,
    algbw: usize,
    busbw: usize,
    check: Option<usize>,
}

impl Layout {
    fn end_of_group(&self, g: usize) -> usize {
        let cols = self.groups[g];
        cols.check.unwrap_or(cols.busbw) + 1
    }

    fn width(&self) -> usize {
        self.end_of_group(self.groups.len() - 1)
    }

    fn redop(&self) -> usize {
        3
    }
}

/// The `# Out of bounds values : 0 OK` and `# Avg bus bandwidth : 70.742` lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Footer {
    pub line: usize,
    pub out_of_bounds: Option<u64>,
    pub avg_busbw_gb_per_s: Option<f64>,
}

/// What the log says (or lets us infer) about which test it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OpFinding {
    /// Named by the log (`# Collective test starting`, the command line) or inferred from the table.
    Known { op: NcclOp, from: String, inferred: bool },
    /// The table fits several tests equally well (e.g. all_gather and alltoall print the same columns).
    Ambiguous { candidates: Vec<NcclOp>, why: String },
    Unknown { why: String },
}

impl OpFinding {
    pub fn op(&self) -> Option<NcclOp> {
        match self {
            OpFinding::Known { op, .. } => Some(*op),
            _ => None,
        }
    }
}

/// Facts NCCL itself printed in INFO lines (`nRanks 8 nNodes 2 localRanks 4`, `NCCL version`).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct NcclInfo {
    pub ranks: Option<u32>,
    pub nodes: Option<u32>,
    pub local_ranks: Option<u32>,
    pub version: Option<String>,
    /// How many NCCL INFO/WARN lines were skipped.
    pub lines: usize,
}

/// One run of one test: header, devices, table and footer, each as far as the log has them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NcclRun {
    /// 1-based position in the file.
    pub index: usize,
    pub first_line: usize,
    pub last_line: usize,
    pub nccl_tests_version: Option<String>,
    /// The program named by `# Collective test starting: all_reduce_perf`.
    pub program: Option<Fact<NcclOp>>,
    pub command: Option<CommandLine>,
    pub header: Option<RunHeader>,
    pub devices: Vec<Device>,
    /// The device list ends in `...` (cut by nccl-tests' line buffer or by whoever published it).
    pub devices_cut: bool,
    pub nccl_info: NcclInfo,
    pub columns: Option<Columns>,
    pub rows: Vec<Row>,
    pub footer: Option<Footer>,
    /// The line of a last row that was cut off mid-line (the run was killed) and dropped.
    pub cut_row: Option<usize>,
    pub op: OpFinding,
    pub ranks: Option<Fact<u32>>,
    /// When the rank count is only known to lie in a range (bus factor of a large all-reduce).
    pub rank_range: Option<(u32, u32)>,
    pub nodes: Option<Fact<u32>>,
    pub gpus_per_node: Option<Fact<u32>>,
    /// What the log lacks and what was inferred, in words for the user.
    pub notes: Vec<String>,
}

impl NcclRun {
    fn new(index: usize) -> Self {
        NcclRun {
            index,
            first_line: 0,
            last_line: 0,
            nccl_tests_version: None,
            program: None,
            command: None,
            header: None,
            devices: Vec::new(),
            devices_cut: false,
            nccl_info: NcclInfo::default(),
            columns: None,
            rows: Vec::new(),
            footer: None,
            cut_row: None,
            op: OpFinding::Unknown { why: String::new() },
            ranks: None,
            rank_range: None,
            nodes: None,
            gpus_per_node: None,
            notes: Vec::new(),
        }
    }

    /// Distinct GPU names in the device lines, in order of appearance.
    pub fn device_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for d in &self.devices {
            if !names.contains(&d.name.as_str()) {
                names.push(&d.name);
            }
        }
        names
    }

    /// Distinct hosts in the device lines, in order of appearance.
    pub fn hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = Vec::new();
        for d in &self.devices {
            if !hosts.contains(&d.host.as_str()) {
                hosts.push(&d.host);
            }
        }
        hosts
    }

    /// The highest bus bandwidth of any row, out-of-place or in-place (GB/s).
    pub fn peak_busbw_gb_per_s(&self) -> f64 {
        self.rows.iter().flat_map(Row::timings).map(|t| t.busbw_gb_per_s).fold(0.0, f64::max)
    }

    /// The mean bus bandwidth over every timing, as nccl-tests computes its footer.
    pub fn rows_avg_busbw_gb_per_s(&self) -> f64 {
        let (sum, n) = self
            .rows
            .iter()
            .flat_map(Row::timings)
            .fold((0.0, 0usize), |(s, n), t| (s + t.busbw_gb_per_s, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    /// The rows of the first (type, redop) series: a test run with `-d all` or `-o all` prints
    /// several series of sizes in one table.
    pub fn first_series(&self) -> Vec<&Row> {
        let Some(first) = self.rows.first() else { return Vec::new() };
        self.rows.iter().filter(|r| r.dtype == first.dtype && r.redop == first.redop).collect()
    }

    /// "all_reduce, 16 ranks on 2 nodes, 31 sizes 8 B .. 8 GiB".
    pub fn summary(&self) -> String {
        let op = self.op.op().map_or_else(|| "unknown test".to_string(), |o| o.to_string());
        let ranks = match (&self.ranks, self.rank_range) {
            (Some(r), _) => format!("{} ranks", r.value),
            (None, Some((lo, hi))) => format!("{lo}-{hi} ranks"),
            (None, None) => "? ranks".into(),
        };
        let nodes = self.nodes.as_ref().map_or_else(|| "? nodes".to_string(), |n| plural(n.value as usize, "node"));
        let sizes = match (self.rows.first(), self.rows.last()) {
            (Some(a), Some(b)) => format!(
                "{} rows {} .. {}",
                self.rows.len(),
                crate::units::bytes(a.size_bytes as f64),
                crate::units::bytes(b.size_bytes as f64)
            ),
            _ => "no rows".into(),
        };
        format!("{op}, {ranks} on {nodes}, {sizes}")
    }
}

/// Every run found in one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NcclLog {
    pub path: PathBuf,
    pub runs: Vec<NcclRun>,
}

/// Reads and parses an nccl-tests log.
pub fn read(path: &Path) -> Result<NcclLog> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.contains(&0) {
        return Err(Error::input(
            path,
            0,
            "this is a binary file, not an nccl-tests log",
            "pass the text that all_reduce_perf (or another nccl-tests binary) printed",
        ));
    }
    parse(path, &String::from_utf8_lossy(&bytes))
}

/// Parses the text of an nccl-tests log; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<NcclLog> {
    let mut parser = Parser::new(path);
    for (i, raw) in text.lines().enumerate() {
        parser.line(i + 1, raw)?;
    }
    parser.finish()
}

/// A number as printed, with half its last digit (the rounding it carries).
fn parse_reading(token: &str) -> Option<(f64, f64)> {
    let value: f64 = token.parse().ok().filter(|v: &f64| v.is_finite())?;
    let (mantissa, exponent) = match token.find(['e', 'E']) {
        Some(i) => (&token[..i], token[i + 1..].parse::<i32>().ok()?),
        None => (token, 0),
    };
    let decimals = mantissa.find('.').map_or(0, |dot| mantissa.len() - dot - 1) as i32;
    Some((value, 0.5 * 10f64.powi(exponent - decimals)))
}

/// Bytes per element of nccl-tests' type names.
fn type_size(dtype: &str) -> Option<u64> {
    match dtype {
        "int8" | "uint8" | "char" | "f8e4m3" | "f8e5m2" | "fp8_e4m3" | "fp8_e5m2" => Some(1),
        "half" | "float16" | "fp16" | "bfloat16" | "bf16" => Some(2),
        "int32" | "uint32" | "int" | "float" | "float32" => Some(4),
        "int64" | "uint64" | "double" | "float64" => Some(8),
        _ => None,
    }
}

const LOG_HINT: &str = "pass the standard output of an nccl-tests binary (all_reduce_perf, all_gather_perf, ...)";

struct Parser {
    path: PathBuf,
    runs: Vec<NcclRun>,
    cur: NcclRun,
    /// Inside a result table: a line starting with a number must be a row.
    in_table: bool,
    /// The current run has ended (`Collective test concluded`); the next line starts a new one.
    concluded: bool,
    /// A row that did not parse: an error if the table goes on, a cut-off last row if not.
    pending: Option<(usize, Error)>,
}

impl Parser {
    fn new(path: &Path) -> Self {
        Parser {
            path: path.to_path_buf(),
            runs: Vec::new(),
            cur: NcclRun::new(1),
            in_table: false,
            concluded: false,
            pending: None,
        }
    }

    /// The table went on after a row that did not parse: that row is garbled.
    fn raise_pending(&mut self) -> Result<()> {
        match self.pending.take() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The run ended after a row that did not parse: it was the last row, cut off.
    fn settle_pending(&mut self) {
        if let Some((line, _)) = self.pending.take() {
            self.cur.cut_row = Some(line);
        }
    }

    fn err(&self, line: usize, what: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::input(&self.path, line, what, hint)
    }

    /// Whether the current run has begun (anything beyond a version line or a command line).
    fn cur_started(&self) -> bool {
        self.cur.program.is_some() || self.cur.header.is_some() || !self.cur.devices.is_empty() || !self.cur.rows.is_empty()
    }

    fn new_run(&mut self) {
        self.settle_pending();
        let done = std::mem::replace(&mut self.cur, NcclRun::new(self.runs.len() + 2));
        self.runs.push(done);
        self.in_table = false;
        self.concluded = false;
    }

    fn begin_run_if(&mut self, start: bool) {
        if start || self.concluded {
            self.new_run();
        }
    }

    fn line(&mut self, n: usize, raw: &str) -> Result<()> {
        let content = strip_prefixes(raw);
        if content.is_empty() {
            return Ok(());
        }
        if content.contains("NCCL INFO") || content.contains("NCCL WARN") || content.contains("NCCL TRACE") {
            self.nccl_info(content);
            return Ok(());
        }
        if let Some(v) = content.strip_prefix("NCCL version") {
            self.cur.nccl_info.version = Some(v.trim().to_string());
            return Ok(());
        }
        if let Some(v) = content.strip_prefix("nccl-tests version") {
            let started = self.cur_started() || self.cur.nccl_tests_version.is_some();
            self.begin_run_if(started);
            self.cur.nccl_tests_version = Some(v.trim().to_string());
            return self.touch(n);
        }
        if let Some(program) = content.strip_prefix("Collective test starting:") {
            let started = self.cur_started();
            self.begin_run_if(started);
            let program = program.trim();
            let op = NcclOp::from_binary(program)
                .ok_or_else(|| self.err(n, format!("unknown nccl-tests program '{program}'"), LOG_HINT))?;
            self.cur.program = Some(Fact::new(op, format!("`Collective test starting: {program}` (line {n})")));
            return self.touch(n);
        }
        if content.starts_with("Collective test concluded") {
            self.touch(n)?;
            self.concluded = true;
            self.in_table = false;
            return Ok(());
        }
        if content.starts_with("nThread ") {
            let started = self.cur.header.is_some() || !self.cur.devices.is_empty() || !self.cur.rows.is_empty();
            self.begin_run_if(started);
            self.cur.header = Some(self.run_header(n, content)?);
            return self.touch(n);
        }
        if content.starts_with("Using devices") {
            return Ok(());
        }
        if content.starts_with("Rank ") && content.contains(" on ") {
            let device = self.device(n, content)?;
            if !self.cur.rows.is_empty() {
                self.new_run();
            }
            self.cur.devices.push(device);
            return self.touch(n);
        }
        if content == "..." {
            if !self.cur.devices.is_empty() {
                self.cur.devices_cut = true;
            }
            return Ok(());
        }
        let tokens: Vec<&str> = content.split_whitespace().collect();
        if tokens.first() == Some(&"size") && tokens.contains(&"count") && tokens.contains(&"busbw") {
            let started = !self.cur.rows.is_empty() || self.cur.columns.is_some();
            self.begin_run_if(started);
            self.cur.columns = Some(self.columns(n, &tokens)?);
            self.in_table = true;
            return self.touch(n);
        }
        if content.starts_with("(B)") || content.contains("out-of-place") {
            return Ok(());
        }
        if content.starts_with("Out of bounds values") || content.starts_with("Avg bus bandwidth") {
            self.raise_pending()?;
        }
        if let Some(rest) = content.strip_prefix("Out of bounds values") {
            let value = rest.trim_start_matches([' ', ':']).split_whitespace().next().and_then(|v| v.parse().ok());
            self.cur.footer = Some(Footer {
                line: n,
                out_of_bounds: value,
                avg_busbw_gb_per_s: None,
            });
            self.in_table = false;
            return self.touch(n);
        }
        if let Some(rest) = content.strip_prefix("Avg bus bandwidth") {
            let value = rest.trim_start_matches([' ', ':']).split_whitespace().next().and_then(|v| v.parse().ok());
            let footer = self.cur.footer.get_or_insert(Footer {
                line: n,
                out_of_bounds: None,
                avg_busbw_gb_per_s: None,
            });
            footer.avg_busbw_gb_per_s = value;
            self.in_table = false;
            return self.touch(n);
        }
        if tokens.first().is_some_and(|t| t.parse::<u64>().is_ok()) {
            return self.row_line(n, &tokens);
        }
        if let Some(command) = command_line(n, content, &tokens) {
            let started = !self.cur.rows.is_empty() || self.cur.command.is_some();
            self.begin_run_if(started);
            self.cur.command = Some(command);
            return self.touch(n);
        }
        Ok(())
    }

    fn touch(&mut self, n: usize) -> Result<()> {
        if self.cur.first_line == 0 {
            self.cur.first_line = n;
        }
        self.cur.last_line = n;
        Ok(())
    }

    fn nccl_info(&mut self, content: &str) {
        if self.concluded {
            self.new_run();
        }
        let info = &mut self.cur.nccl_info;
        info.lines += 1;
        let tokens: Vec<&str> = content.split_whitespace().collect();
        for pair in tokens.windows(2) {
            let value = pair[1].parse::<u32>().ok();
            match pair[0] {
                "nRanks" | "nranks" => info.ranks = info.ranks.or(value),
                "nNodes" => info.nodes = info.nodes.or(value),
                "localRanks" => info.local_ranks = info.local_ranks.or(value),
                _ => {}
            }
        }
        if let Some(i) = content.find("NCCL version ") {
            let v = content[i + "NCCL version ".len()..].split_whitespace().next().unwrap_or_default();
            info.version.get_or_insert_with(|| v.to_string());
        }
    }

    fn run_header(&self, n: usize, content: &str) -> Result<RunHeader> {
        // "nThread 1 nGpus 1 minBytes 8 maxBytes 8589934592 step: 2(factor) warmup iters: 5
        // iters: 20 agg iters: 1 validation: 1 graph: 0": words up to a value name it.
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut key: Vec<&str> = Vec::new();
        for token in content.split_whitespace() {
            if token.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                fields.insert(key.join(" ").trim_end_matches(':').to_string(), token.to_string());
                key.clear();
            } else {
                key.push(token);
            }
        }
        let hint = "the header should read `nThread 1 nGpus 1 minBytes 8 maxBytes ... step: 2(factor) ...`";
        let number = |name: &str| -> Result<Option<u64>> {
            fields
                .get(name)
                .map(|v| v.parse::<u64>().map_err(|_| self.err(n, format!("run header: {name} = '{v}' is not a number"), hint)))
                .transpose()
        };
        let small = |name: &str| -> Result<Option<u32>> {
            number(name)?
                .map(|v| u32::try_from(v).map_err(|_| self.err(n, format!("run header: {name} = {v} is too large"), hint)))
                .transpose()
        };
        let required = |name: &str| -> Result<u32> {
            small(name)?.ok_or_else(|| self.err(n, format!("run header without {name}"), hint))
        };
        let step = match fields.get("step") {
            None => None,
            Some(v) => {
                let (num, kind) = v.split_once('(').unwrap_or((v, "factor)"));
                let num: u64 = num
                    .parse()
                    .map_err(|_| self.err(n, format!("run header: step '{v}' is not understood"), hint))?;
                Some(if kind.starts_with("bytes") { Step::Bytes(num) } else { Step::Factor(num) })
            }
        };
        Ok(RunHeader {
            line: n,
            n_threads: required("nThread")?,
            n_gpus: required("nGpus")?,
            min_bytes: number("minBytes")?,
            max_bytes: number("maxBytes")?,
            step,
            warmup_iters: small("warmup iters")?,
            iters: small("iters")?,
            agg_iters: small("agg iters")?,
            validation: small("validation")?,
            graph: small("graph")?,
        })
    }

    fn device(&self, n: usize, content: &str) -> Result<Device> {
        let bad = |what: &str| {
            self.err(
                n,
                format!("device line not understood ({what}): '{content}'"),
                "device lines read `Rank N Group G Pid P on HOST device D [BUS] NAME`",
            )
        };
        let tokens: Vec<&str> = content.split_whitespace().collect();
        let value_after = |key: &str| tokens.iter().position(|t| *t == key).and_then(|i| tokens.get(i + 1).copied());
        let int = |key: &str| value_after(key).and_then(|v| v.parse::<u64>().ok());
        let rank = int("Rank").and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad("rank"))?;
        let group = int("Group").and_then(|v| u32::try_from(v).ok());
        let pid = int("Pid").ok_or_else(|| bad("pid"))?;
        let host = value_after("on").ok_or_else(|| bad("host"))?.to_string();
        let device = int("device").and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad("device"))?;
        let dev_pos = tokens.iter().position(|t| *t == "device").unwrap_or(0);
        let rest = tokens.get(dev_pos + 2..).unwrap_or_default();
        let (bus_id, name) = match rest.first() {
            Some(b) if b.starts_with('[') => (b.trim_matches(['[', ']']).to_string(), rest[1..].join(" ")),
            _ => (String::new(), rest.join(" ")),
        };
        Ok(Device {
            line: n,
            rank,
            group,
            pid,
            host,
            device,
            bus_id,
            name,
        })
    }

    fn columns(&self, n: usize, tokens: &[&str]) -> Result<Columns> {
        let bad = |what: String| {
            self.err(
                n,
                format!("column header not understood: {what}"),
                "expected `size count type redop [root] time algbw busbw #wrong time algbw busbw #wrong`",
            )
        };
        if tokens.len() < 4 || tokens[1] != "count" || tokens[2] != "type" || tokens[3] != "redop" {
            return Err(bad(format!("'{}' does not start with size, count, type, redop", tokens.join(" "))));
        }
        let root = (tokens.get(4) == Some(&"root")).then_some(4);
        let mut groups = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if *t != "time" && *t != "cputime" {
                continue;
            }
            if tokens.get(i + 1) != Some(&"algbw") || tokens.get(i + 2) != Some(&"busbw") {
                return Err(bad(format!("'{t}' at column {} is not followed by algbw and busbw", i + 1)));
            }
            let check = tokens.get(i + 3).filter(|c| **c == "#wrong" || **c == "error").map(|_| i + 3);
            groups.push(GroupCols {
                time: i,
                algbw: i + 1,
                busbw: i + 2,
                check,
            });
        }
        if groups.is_empty() {
            return Err(bad("no time/algbw/busbw columns".into()));
        }
        let check = groups[0].check.map(|c| tokens[c].to_string());
        Ok(Columns {
            line: n,
            names: tokens.iter().map(|t| t.to_string()).collect(),
            has_root: root.is_some(),
            check,
            layout: Layout { root, groups },
        })
    }

    /// The column set a header-less table has, from the width of its first row: 13 columns are
    /// the current format (with `root`), 12 the old one.
    fn implied_columns(tokens: &[&str]) -> Option<Columns> {
        let (root, first_time, names) = match tokens.len() {
            13 => (Some(4), 5, "size count type redop root time algbw busbw #wrong time algbw busbw #wrong"),
            12 => (None, 4, "size count type redop time algbw busbw error time algbw busbw error"),
            _ => return None,
        };
        let group = |t: usize| GroupCols {
            time: t,
            algbw: t + 1,
            busbw: t + 2,
            check: Some(t + 3),
        };
        Some(Columns {
            line: 0,
            names: names.split(' ').map(String::from).collect(),
            has_root: root.is_some(),
            check: Some(if root.is_some() { "#wrong" } else { "error" }.into()),
            layout: Layout {
                root,
                groups: vec![group(first_time), group(first_time + 4)],
            },
        })
    }

    fn row_line(&mut self, n: usize, tokens: &[&str]) -> Result<()> {
        if self.concluded {
            self.begin_run_if(true);
        }
        if self.cur.columns.is_none() {
            // Outside any table, a line that starts with a number is only a row if it has a
            // row's shape; otherwise it is some other program's output around the log.
            let Some(columns) = Self::implied_columns(tokens) else { return Ok(()) };
            let Ok(row) = self.row(n, tokens, &columns) else { return Ok(()) };
            self.cur.columns = Some(columns);
            self.cur.rows.push(row);
            self.in_table = true;
            return self.touch(n);
        }
        if !self.in_table {
            // A number after the footer: a new table without a header, or unrelated output.
            let Some(columns) = Self::implied_columns(tokens) else { return Ok(()) };
            let Ok(row) = self.row(n, tokens, &columns) else { return Ok(()) };
            self.new_run();
            self.cur.columns = Some(columns);
            self.cur.rows.push(row);
            self.in_table = true;
            return self.touch(n);
        }
        let Some(columns) = self.cur.columns.clone() else { return Ok(()) };
        match self.row(n, tokens, &columns) {
            Ok(row) => {
                self.raise_pending()?;
                self.cur.rows.push(row);
                self.touch(n)
            }
            Err(e) => {
                self.raise_pending()?;
                self.pending = Some((n, e));
                Ok(())
            }
        }
    }

    fn row(&self, n: usize, tokens: &[&str], columns: &Columns) -> Result<Row> {
        let layout = &columns.layout;
        let expected = layout.width();
        let hint = format!(
            "rows follow the column header{}: {}",
            if columns.line > 0 { format!(" at line {}", columns.line) } else { String::new() },
            columns.names.join(" ")
        );
        let mut tokens: Vec<&str> = tokens.to_vec();
        // Old alltoall printed an empty redop: the row is one column short and a number sits
        // where the redop should be.
        if tokens.len() + 1 == expected && tokens.get(layout.redop()).is_some_and(|t| t.parse::<f64>().is_ok()) {
            tokens.insert(layout.redop(), "");
        }
        let one_group = layout.end_of_group(0);
        let groups = if tokens.len() >= expected {
            layout.groups.len()
        } else if tokens.len() == one_group {
            1
        } else {
            return Err(self.err(
                n,
                format!("garbled result row: {} columns where the table has {expected}", tokens.len()),
                hint,
            ));
        };
        let field = |i: usize, name: &str| -> Result<&str> {
            tokens
                .get(i)
                .copied()
                .ok_or_else(|| self.err(n, format!("result row without its {name} column"), hint.clone()))
        };
        let int = |i: usize, name: &str| -> Result<u64> {
            let t = field(i, name)?;
            t.parse()
                .map_err(|_| self.err(n, format!("result row: {name} '{t}' is not a whole number"), hint.clone()))
        };
        let size_bytes = int(0, "size")?;
        let count = int(1, "count")?;
        let dtype = field(2, "type")?;
        if !dtype.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(self.err(n, format!("result row: type '{dtype}' is not a type name"), hint));
        }
        let redop = field(3, "redop")?.to_string();
        let root = match layout.root {
            Some(i) => {
                let t = field(i, "root")?;
                Some(t.parse::<i64>().map_err(|_| self.err(n, format!("result row: root '{t}' is not a number"), hint.clone()))?)
            }
            None => None,
        };
        let mut timings = Vec::new();
        for cols in &layout.groups[..groups] {
            timings.push(self.timing(n, &tokens, cols, &hint)?);
        }
        let mut timings = timings.into_iter();
        Ok(Row {
            line: n,
            size_bytes,
            count,
            dtype: dtype.to_string(),
            redop,
            root,
            out_of_place: timings.next(),
            in_place: timings.next(),
        })
    }

    fn timing(&self, n: usize, tokens: &[&str], cols: &GroupCols, hint: &str) -> Result<Timing> {
        let reading = |i: usize, name: &str| -> Result<(f64, f64)> {
            let t = tokens.get(i).copied().unwrap_or_default();
            parse_reading(t)
                .filter(|(v, _)| *v >= 0.0)
                .ok_or_else(|| self.err(n, format!("result row: {name} '{t}' is not a non-negative number"), hint))
        };
        let (time_us, _) = reading(cols.time, "time")?;
        if time_us <= 0.0 {
            return Err(self.err(n, "result row: a time of 0 us cannot be a measurement", hint));
        }
        let (algbw, algbw_half_ulp) = reading(cols.algbw, "algbw")?;
        let (busbw, busbw_half_ulp) = reading(cols.busbw, "busbw")?;
        let check = match cols.check.map(|i| tokens.get(i).copied().unwrap_or_default()) {
            None | Some("N/A") => Check::NotChecked,
            Some(t) => match (t.parse::<u64>(), t.parse::<f64>()) {
                (Ok(w), _) => Check::Wrong(w),
                (_, Ok(e)) => Check::Error(e),
                _ => return Err(self.err(n, format!("result row: check column '{t}' is not a number or N/A"), hint)),
            },
        };
        Ok(Timing {
            time_us,
            algbw_gb_per_s: algbw,
            busbw_gb_per_s: busbw,
            check,
            algbw_half_ulp,
            busbw_half_ulp,
        })
    }

    fn finish(mut self) -> Result<NcclLog> {
        self.settle_pending();
        let last = std::mem::replace(&mut self.cur, NcclRun::new(0));
        self.runs.push(last);
        let mut runs = Vec::new();
        let mut tableless = Vec::new();
        for run in std::mem::take(&mut self.runs) {
            match (&run.columns, run.rows.is_empty()) {
                (_, false) => runs.push(run),
                (Some(columns), true) => {
                    return Err(self.err(
                        columns.line,
                        "the result table has a column header but no rows",
                        "the run stopped before its first size finished; rerun it, or drop this log",
                    ))
                }
                (None, true) => {
                    if run.header.is_some() || !run.devices.is_empty() {
                        tableless.push(run.first_line);
                    }
                }
            }
        }
        if runs.is_empty() {
            return Err(match tableless.first() {
                Some(line) => self.err(
                    *line,
                    "the run starting here printed no result table (did it fail? look for errors after this line)",
                    LOG_HINT,
                ),
                None => self.err(
                    0,
                    "not an nccl-tests log: found no result table (a `size count type redop ...` header or rows of sizes and timings)",
                    LOG_HINT,
                ),
            });
        }
        for (i, run) in runs.iter_mut().enumerate() {
            run.index = i + 1;
            infer(run);
        }
        if let Some(first) = runs.first_mut() {
            for line in tableless {
                first.notes.push(format!("the run starting at line {line} printed no result table and was skipped"));
            }
        }
        Ok(NcclLog { path: self.path, runs })
    }
}

/// Strips what launchers and renderers put around nccl-tests' own text: `[1,0]<stdout>:` from
/// `mpirun --tag-output`, a carriage return, the leading `#` of comment lines.
fn strip_prefixes(raw: &str) -> &str {
    let mut s = raw.trim_end();
    if let Some(rest) = s.strip_prefix('[') {
        if let Some(close) = rest.find("]<") {
            let tag = &rest[..close];
            if tag.split(',').all(|p| p.trim().parse::<u32>().is_ok()) {
                if let Some(colon) = rest[close..].find(">:") {
                    s = &rest[close + colon + 2..];
                }
            }
        }
    }
    let s = s.trim_start();
    s.strip_prefix('#').unwrap_or(s).trim()
}

/// A line that runs an nccl-tests binary, with what it says about the launch.
fn command_line(n: usize, content: &str, tokens: &[&str]) -> Option<CommandLine> {
    let at = tokens.iter().position(|t| NcclOp::from_binary(t).is_some())?;
    let op = NcclOp::from_binary(tokens[at])?;
    let before = &tokens[..at];
    let after = &tokens[at + 1..];
    const LAUNCHERS: [&str; 8] = ["mpirun", "mpiexec", "orterun", "prterun", "srun", "torchrun", "jsrun", "aprun"];
    let launcher_at = before.iter().position(|t| LAUNCHERS.contains(&t.rsplit('/').next().unwrap_or(t)));
    let flag = |args: &[&str], names: &[&str]| -> Option<u32> {
        args.iter().enumerate().find_map(|(i, t)| {
            names.iter().find_map(|name| {
                if *t == *name {
                    args.get(i + 1)?.parse().ok()
                } else {
                    t.strip_prefix(&format!("{name}="))?.parse().ok()
                }
            })
        })
    };
    // Only a command that starts with the binary (after a prompt, variables or wrappers such
    // as `env` or `numactl ...`) is known to be one process; `kubectl exec pod -- x_perf` or a
    // sentence naming the binary says nothing about the launch.
    let direct = before.iter().all(|t| {
        ["$", "#", ">", "%", "env", "sudo", "time", "exec", "nohup", "numactl"].contains(t) || t.contains('=') || t.starts_with('-')
    });
    let (launcher, processes, nodes) = match launcher_at {
        None if direct => (None, Some(1), Some(1)),
        None => (None, None, None),
        Some(i) => {
            let name = before[i].rsplit('/').next().unwrap_or(before[i]).to_string();
            let args = &before[i + 1..];
            if name == "srun" {
                let nodes = flag(args, &["-N", "--nodes"]);
                let per_node = flag(args, &["--ntasks-per-node"]);
                let processes = flag(args, &["-n", "--ntasks"]).or_else(|| Some(per_node? * nodes?));
                (Some(name), processes, nodes)
            } else if name.starts_with("mpi") || name == "orterun" || name == "prterun" {
                (Some(name), flag(args, &["-np", "-n", "--np", "--n"]), None)
            } else {
                (Some(name), None, None)
            }
        }
    };
    Some(CommandLine {
        line: n,
        text: content.to_string(),
        op,
        launcher,
        processes,
        nodes,
        threads: flag(after, &["-t", "--nthreads"]).unwrap_or(1),
        gpus: flag(after, &["-g", "--ngpus"]).unwrap_or(1),
    })
}

/// What the table itself says about the test and the rank count.
struct Evidence {
    /// busbw / algbw lies in this interval on every row (nccl-tests derives busbw from algbw by
    /// the test's bus factor, so only the printing rounds it).
    bus_ratio: Option<(f64, f64)>,
    /// size / (count x type size), when the same whole number on every row.
    count_ratio: Option<u64>,
    /// Whether the redop column says `none` (or nothing).
    no_redop: bool,
    /// The root column's values, when the table has one.
    roots: Option<Vec<i64>>,
}

/// Possible rank counts: all, or a closed range.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RankSet {
    Any,
    Range(u32, u32),
}

/// Rank counts beyond this are not considered when inverting a bus factor.
const MAX_RANKS: u32 = 1 << 20;

impl Evidence {
    fn of(rows: &[&Row]) -> Evidence {
        let mut lo: f64 = 0.0;
        let mut hi: f64 = f64::INFINITY;
        let mut informative = false;
        for t in rows.iter().flat_map(|r| r.timings()) {
            let a_lo = t.algbw_gb_per_s - t.algbw_half_ulp;
            if a_lo <= 0.0 || t.busbw_gb_per_s <= 0.0 {
                continue;
            }
            lo = lo.max((t.busbw_gb_per_s - t.busbw_half_ulp) / (t.algbw_gb_per_s + t.algbw_half_ulp));
            hi = hi.min((t.busbw_gb_per_s + t.busbw_half_ulp) / a_lo);
            informative = true;
        }
        let ratios: Vec<Option<u64>> = rows
            .iter()
            .map(|r| {
                let ts = type_size(&r.dtype)?;
                let per = r.count.checked_mul(ts).filter(|&p| p > 0)?;
                (r.size_bytes % per == 0).then_some(r.size_bytes / per)
            })
            .collect();
        let count_ratio = match ratios.first() {
            Some(Some(first)) if ratios.iter().all(|r| *r == Some(*first)) => Some(*first),
            _ => None,
        };
        let roots = rows.iter().map(|r| r.root).collect::<Option<Vec<i64>>>();
        Evidence {
            bus_ratio: (informative && lo <= hi).then_some((lo, hi)),
            count_ratio,
            no_redop: rows.iter().all(|r| r.redop.is_empty() || r.redop == "none"),
            roots,
        }
    }

    /// The rank counts under which the table is what `op` prints, or `None` if it cannot be.
    fn ranks_for(&self, op: NcclOp) -> Option<RankSet> {
        if op.has_no_redop() != self.no_redop {
            return None;
        }
        if let Some(roots) = &self.roots {
            if roots.iter().any(|&r| (r >= 0) != op.is_rooted()) {
                return None;
            }
        }
        let mut set = RankSet::Any;
        match (self.count_ratio, op.count_is_per_rank()) {
            (Some(r), true) => set = RankSet::Range(u32::try_from(r).ok()?, u32::try_from(r).ok()?),
            (Some(r), false) if r != 1 => return None,
            _ => {}
        }
        if let Some((lo, hi)) = self.bus_ratio {
            set = intersect(set, factor_ranks(op, lo, hi)?)?;
        }
        Some(set)
    }
}

/// Rank counts whose bus factor for `op` lies in [lo, hi].
fn factor_ranks(op: NcclOp, lo: f64, hi: f64) -> Option<RankSet> {
    op.bus_factor(2)?;
    let f = |n: u32| op.bus_factor(n).unwrap_or(f64::NAN);
    if (f(2) - f(MAX_RANKS)).abs() < 1e-12 {
        return (lo <= f(2) && f(2) <= hi).then_some(RankSet::Any);
    }
    // The other factors increase with n towards their limit, so bisection finds the first n
    // at or above lo and the first n above hi.
    let first_where = |pred: &dyn Fn(f64) -> bool| -> u32 {
        let (mut a, mut b) = (1u32, MAX_RANKS + 1);
        while a < b {
            let m = a + (b - a) / 2;
            if pred(f(m)) {
                b = m;
            } else {
                a = m + 1;
            }
        }
        a
    };
    let first = first_where(&|v| v >= lo);
    let last = first_where(&|v| v > hi) - 1;
    (first <= last && first <= MAX_RANKS).then_some(RankSet::Range(first, last.min(MAX_RANKS)))
}

fn intersect(a: RankSet, b: RankSet) -> Option<RankSet> {
    match (a, b) {
        (RankSet::Any, x) | (x, RankSet::Any) => Some(x),
        (RankSet::Range(a0, a1), RankSet::Range(b0, b1)) => {
            let (lo, hi) = (a0.max(b0), a1.min(b1));
            (lo <= hi).then_some(RankSet::Range(lo, hi))
        }
    }
}

/// Works out the test, the rank and node counts from everything the run printed, and notes
/// what is missing.
fn infer(run: &mut NcclRun) {
    let mut notes = Vec::new();
    let series = run.first_series();
    if series.len() < run.rows.len() {
        notes.push(format!(
            "the table holds several type/redop series; the first ({} {}, {} rows) is used",
            series[0].dtype,
            series[0].redop,
            series.len()
        ));
    }
    let evidence = Evidence::of(&series);

    // Ranks the log lists outright.
    let ranks_listed = listed_ranks(run);
    if run.header.is_none() {
        notes.push("no `nThread ... nGpus ...` run header".into());
    }
    if run.devices.is_empty() {
        notes.push("no device lines: the log does not list ranks and hosts".into());
    } else if run.devices_cut {
        notes.push(format!("device list cut short (`...`) after {} of the ranks", run.devices.len()));
    }

    // The test: named by the log, else inferred from the table.
    let stated = run
        .program
        .clone()
        .or_else(|| run.command.as_ref().map(|c| Fact::new(c.op, format!("the command line (line {})", c.line))));
    let constrain = |set: RankSet| match &ranks_listed {
        Some(r) => intersect(set, RankSet::Range(r.value, r.value)),
        None => Some(set),
    };
    let fits: Vec<(NcclOp, RankSet)> = NcclOp::ALL
        .into_iter()
        .filter_map(|op| Some((op, constrain(evidence.ranks_for(op)?)?)))
        .collect();
    let describe = describe_evidence(&evidence);
    let op_ranks: Option<RankSet>;
    run.op = match stated {
        Some(fact) => {
            op_ranks = fits.iter().find(|(op, _)| *op == fact.value).map(|(_, s)| *s);
            if op_ranks.is_none() && fact.value.bus_factor(2).is_some() {
                notes.push(format!(
                    "the table does not look like {} ({describe}{}); the log's word is taken",
                    fact.value,
                    ranks_listed.as_ref().map_or(String::new(), |r| format!(", {} ranks", r.value))
                ));
            }
            OpFinding::Known {
                op: fact.value,
                from: fact.from,
                inferred: false,
            }
        }
        None => match fits.as_slice() {
            [(op, set)] => {
                op_ranks = Some(*set);
                let from = format!("inferred from the table: {describe}");
                notes.push("the log does not name its test".into());
                OpFinding::Known {
                    op: *op,
                    from,
                    inferred: true,
                }
            }
            [] => {
                op_ranks = None;
                let why = format!("no nccl-tests test prints a table like this one ({describe})");
                notes.push(why.clone());
                OpFinding::Unknown { why }
            }
            many => {
                // The candidates may still agree on the rank count.
                let sets: Vec<RankSet> = many.iter().map(|(_, s)| *s).collect();
                op_ranks = sets.iter().all(|s| *s == sets[0]).then_some(sets[0]);
                let names: Vec<String> = many.iter().map(|(op, _)| op.to_string()).collect();
                let why = format!("the table fits {} alike ({describe})", names.join(" and "));
                notes.push(format!("the log does not name its test, and {why}"));
                OpFinding::Ambiguous {
                    candidates: many.iter().map(|(op, _)| *op).collect(),
                    why,
                }
            }
        },
    };

    run.ranks = ranks_listed.clone();
    if run.ranks.is_none() {
        match op_ranks {
            Some(RankSet::Range(lo, hi)) if lo == hi => {
                let how = if evidence.count_ratio.is_some_and(|r| r > 1) { "size/count" } else { "busbw/algbw" };
                run.ranks = Some(Fact::new(lo, format!("inferred from {how}")));
                notes.push("the rank count is not listed".into());
            }
            Some(RankSet::Range(lo, hi)) => {
                let lo = if run.devices_cut { lo.max(run.devices.len() as u32) } else { lo };
                run.rank_range = Some((lo, hi));
                notes.push(format!("the rank count is not listed; busbw/algbw puts it between {lo} and {hi}"));
            }
            _ => notes.push("the rank count is not listed".into()),
        }
    }

    run.nodes = listed_nodes(run);
    if run.nodes.is_none() {
        let seen = run.hosts().len();
        notes.push(if seen > 0 {
            format!("the node count is not listed (the cut device list shows {})", plural(seen, "host"))
        } else {
            "the node count is not listed".into()
        });
    }
    run.gpus_per_node = gpus_per_node(run);

    if run.footer.is_none() {
        notes.push("no footer (`Out of bounds values`, `Avg bus bandwidth`): the run may have been cut short".into());
    } else if let Some(avg) = run.footer.as_ref().and_then(|f| f.avg_busbw_gb_per_s) {
        // nccl-tests' footer is the mean busbw over every timing: if the rows disagree, rows
        // are missing (an excerpt) or extra.
        let rows_avg = run.rows_avg_busbw_gb_per_s();
        if (rows_avg - avg).abs() > 0.006 + 1e-5 * avg.abs() {
            notes.push(format!(
                "the footer's average bus bandwidth {avg} GB/s differs from the rows' {rows_avg:.4} GB/s: rows are missing from this log"
            ));
        }
    }
    if run.columns.as_ref().is_some_and(|c| c.line == 0) {
        notes.push("no column header: columns taken from the row width".into());
    }
    if let Some(line) = run.cut_row {
        notes.push(format!("the last row (line {line}) is cut off and was dropped: the run was cut short"));
    }
    let one_group = run.rows.iter().filter(|r| r.in_place.is_none()).count();
    if one_group > 0 {
        notes.push(format!("{one_group} row(s) have a single timing (the in-place half is missing)"));
    }
    run.notes = notes;
}

fn describe_evidence(e: &Evidence) -> String {
    let mut parts = Vec::new();
    if let Some((lo, hi)) = e.bus_ratio {
        parts.push(format!("busbw/algbw = {:.4}", (lo + hi) / 2.0));
    }
    if let Some(r) = e.count_ratio {
        parts.push(if r == 1 { "size = count x type size".to_string() } else { format!("size = {r} x count x type size") });
    }
    parts.push(if e.no_redop { "no redop".to_string() } else { "a redop".to_string() });
    if let Some(roots) = &e.roots {
        parts.push(format!("root {}", roots.first().copied().unwrap_or(-1)));
    }
    parts.join(", ")
}

fn listed_ranks(run: &NcclRun) -> Option<Fact<u32>> {
    if !run.devices.is_empty() && !run.devices_cut {
        let n = run.devices.len() as u32;
        let mut seen: Vec<u32> = run.devices.iter().map(|d| d.rank).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() as u32 == n && seen.last() == Some(&(n - 1)) {
            return Some(Fact::new(n, "device lines"));
        }
    }
    if let Some(n) = run.nccl_info.ranks {
        return Some(Fact::new(n, "NCCL INFO lines"));
    }
    let command = run.command.as_ref()?;
    let processes = command.processes?;
    // The run header, when present, says what each process actually drove.
    let per_process = run.header.as_ref().map_or(command.threads * command.gpus, |h| h.n_threads * h.n_gpus);
    let how = match &command.launcher {
        None => format!("the command line (one process, -t {} -g {})", command.threads, command.gpus),
        Some(l) => format!("the command line ({l}: {processes} processes x {per_process} GPUs)"),
    };
    Some(Fact::new(processes * per_process, how))
}

fn listed_nodes(run: &NcclRun) -> Option<Fact<u32>> {
    if !run.devices.is_empty() && !run.devices_cut {
        return Some(Fact::new(run.hosts().len() as u32, "device lines (distinct hosts)"));
    }
    if let Some(n) = run.nccl_info.nodes {
        return Some(Fact::new(n, "NCCL INFO lines"));
    }
    let command = run.command.as_ref()?;
    let nodes = command.nodes?;
    let how = match &command.launcher {
        None => "the command line (a single process runs on one node)".to_string(),
        Some(l) => format!("the command line ({l})"),
    };
    Some(Fact::new(nodes, how))
}

fn gpus_per_node(run: &NcclRun) -> Option<Fact<u32>> {
    if !run.devices.is_empty() && !run.devices_cut {
        let most = run
            .hosts()
            .iter()
            .map(|h| run.devices.iter().filter(|d| d.host == *h).count() as u32)
            .max()?;
        return Some(Fact::new(most, "device lines"));
    }
    if let Some(n) = run.nccl_info.local_ranks {
        return Some(Fact::new(n, "NCCL INFO lines"));
    }
    let (ranks, nodes) = (run.ranks.as_ref()?, run.nodes.as_ref()?);
    (nodes.value > 0 && ranks.value % nodes.value == 0)
        .then(|| Fact::new(ranks.value / nodes.value, format!("{} ranks / {} nodes", ranks.value, nodes.value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_carry_their_rounding() {
        assert_eq!(parse_reading("338.82"), Some((338.82, 0.005)));
        assert_eq!(parse_reading("12646"), Some((12646.0, 0.5)));
        let (v, h) = parse_reading("1.2e+05").unwrap();
        assert_eq!(v, 1.2e5);
        assert!((h - 5e3).abs() < 1e-9, "{h}");
        assert_eq!(parse_reading("N/A"), None);
    }

    #[test]
    fn bus_factor_inverts_to_rank_counts() {
        // 2(n-1)/n = 1.75 only for n = 8.
        assert_eq!(factor_ranks(NcclOp::AllReduce, 1.7499, 1.7501), Some(RankSet::Range(8, 8)));
        // (n-1)/n = 0.9375 only for n = 16.
        assert_eq!(factor_ranks(NcclOp::AllGather, 0.93749, 0.93751), Some(RankSet::Range(16, 16)));
        // A wide interval leaves a range.
        assert_eq!(factor_ranks(NcclOp::AllReduce, 1.979, 1.985), Some(RankSet::Range(96, 133)));
        assert_eq!(factor_ranks(NcclOp::SendRecv, 0.99, 1.01), Some(RankSet::Any));
        assert_eq!(factor_ranks(NcclOp::SendRecv, 1.7, 1.8), None);
        assert_eq!(factor_ranks(NcclOp::Gather, 0.9, 1.0), None);
    }

    #[test]
    fn prefixes_and_hashes_are_stripped() {
        assert_eq!(strip_prefixes("[1,12]<stdout>:#  Rank  0 Group"), "Rank  0 Group");
        assert_eq!(strip_prefixes("#       size  \r"), "size");
        assert_eq!(strip_prefixes("   8  2  float"), "8  2  float");
        assert_eq!(strip_prefixes("[x]<stdout>: 8"), "[x]<stdout>: 8");
    }

    #[test]
    fn command_lines_say_how_the_test_was_launched() {
        let text = "./build/sendrecv_perf -b 128M -e 1G -f 2 -g 8";
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let c = command_line(3, text, &tokens).unwrap();
        assert_eq!((c.op, c.launcher.as_deref(), c.processes, c.nodes, c.gpus), (NcclOp::SendRecv, None, Some(1), Some(1), 8));
        let text = "mpirun -np 16 -x NCCL_DEBUG=INFO /opt/nccl-tests/build/all_gather_perf -b 8 -e 1G";
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let c = command_line(1, text, &tokens).unwrap();
        assert_eq!((c.op, c.launcher.as_deref(), c.processes, c.nodes), (NcclOp::AllGather, Some("mpirun"), Some(16), None));
        let text = "srun -N 2 --ntasks-per-node=8 all_reduce_perf_mpi -g 1";
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let c = command_line(1, text, &tokens).unwrap();
        assert_eq!((c.op, c.processes, c.nodes), (NcclOp::AllReduce, Some(16), Some(2)));
        let text = "$ NCCL_DEBUG=INFO ./all_reduce_perf -b 8 -e 1G";
        let c = command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.op, c.processes, c.nodes), (NcclOp::AllReduce, Some(1), Some(1)));
        let text = "kubectl exec nccl-0 -- /opt/nccl-tests/build/alltoall_perf -g 8";
        let c = command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.op, c.launcher.as_deref(), c.processes, c.nodes, c.gpus), (NcclOp::AllToAll, None, None, None, 8));
        let text = "Running all_gather_perf on the cluster";
        let c = command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((c.op, c.processes), (NcclOp::AllGather, None));
        let text = "$ dstack apply -f nccl-tests.dstack.yml";
        assert!(command_line(1, text, &text.split_whitespace().collect::<Vec<_>>()).is_none());
    }

    #[test]
    fn op_names_read_every_spelling() {
        assert_eq!(NcclOp::from_name("all_to_all"), Some(NcclOp::AllToAll));
        assert_eq!(NcclOp::from_name("alltoall"), Some(NcclOp::AllToAll));
        assert_eq!(NcclOp::from_name("alltoall_perf"), Some(NcclOp::AllToAll));
        assert_eq!(NcclOp::from_name("send_recv"), Some(NcclOp::SendRecv));
        assert_eq!(NcclOp::from_name("broadcast"), Some(NcclOp::Broadcast));
        assert_eq!(NcclOp::from_name("allreduce"), None);
    }
}
