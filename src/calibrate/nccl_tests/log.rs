//! What an nccl-tests log holds, as the parser reads it: the tests, run headers, device lines,
//! command lines, result tables and footers of each run, and what was inferred about them.

use crate::calibrate::plural;
use crate::cluster::Collective;
use serde::Serialize;
use std::path::PathBuf;


/// A value the parser knows, and how it knows it ("device lines", "inferred from busbw/algbw"...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact<T> {
    pub value: T,
    pub from: String,
}

impl<T> Fact<T> {
    pub(super) fn new(value: T, from: impl Into<String>) -> Self {
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
    pub(super) fn bus_factor(self, n: u32) -> Option<f64> {
        match self {
            NcclOp::Broadcast | NcclOp::Reduce => Some(1.0),
            _ => self.collective().map(|c| c.busbw_factor(n)),
        }
    }

    /// Tests whose `count` column is per rank, so that size = count x type size x ranks.
    pub(super) fn count_is_per_rank(self) -> bool {
        matches!(self, NcclOp::AllGather | NcclOp::ReduceScatter | NcclOp::AllToAll)
    }

    /// Tests that print `none` (or nothing, in old alltoall) in the `redop` column.
    pub(super) fn has_no_redop(self) -> bool {
        !matches!(self, NcclOp::AllReduce | NcclOp::ReduceScatter | NcclOp::Reduce | NcclOp::SendRecv)
    }

    pub(super) fn is_rooted(self) -> bool {
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
    pub(super) layout: Layout,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Layout {
    pub(super) root: Option<usize>,
    pub(super) groups: Vec<GroupCols>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct GroupCols {
    pub(super) time: usize,
    pub(super) algbw: usize,
    pub(super) busbw: usize,
    pub(super) check: Option<usize>,
}

impl Layout {
    pub(super) fn end_of_group(&self, g: usize) -> usize {
        let cols = self.groups[g];
        cols.check.unwrap_or(cols.busbw) + 1
    }

    pub(super) fn width(&self) -> usize {
        self.end_of_group(self.groups.len() - 1)
    }

    pub(super) fn redop(&self) -> usize {
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
    pub(super) fn new(index: usize) -> Self {
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

/// Bytes per element of nccl-tests' type names.
pub(super) fn type_size(dtype: &str) -> Option<u64> {
    match dtype {
        "int8" | "uint8" | "char" | "f8e4m3" | "f8e5m2" | "fp8_e4m3" | "fp8_e5m2" => Some(1),
        "half" | "float16" | "fp16" | "bfloat16" | "bf16" => Some(2),
        "int32" | "uint32" | "int" | "float" | "float32" => Some(4),
        "int64" | "uint64" | "double" | "float64" => Some(8),
        _ => None,
    }
}
