//! Cluster topologies: the GPU, how GPUs connect inside a node, and how nodes connect.
//! Presets live in `models/clusters/`; a calibrated profile (written by `calibrate`) has the same
//! format plus a `[calibration]` section that overrides the datasheet figures where measured.

use crate::error::{Error, Result};
use crate::units::thousands;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub gpus_per_node: u32,
    /// Nodes in use; `--nodes` overrides it.
    pub nodes: u32,
    /// Nodes (hosts) that share one NVLink domain: 18 compute trays in a GB200 NVL72 rack; one
    /// (the node is the domain) when absent. Inside a domain every GPU reaches every other at
    /// NVLink speed, whatever the host; between domains, traffic crosses the NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_per_domain: Option<u32>,
    /// Why some of the preset's figures are derived rather than measured (no published
    /// kernel or NCCL figure for this GPU): `predict`, `tune` and the report say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncalibrated: Option<String>,
    pub gpu: Gpu,
    pub intra: IntraNode,
    pub inter: InterNode,
    pub nccl: Nccl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    /// Which published kernel tables describe this GPU's attention throughput.
    pub arch: Arch,
    pub bf16_dense_tflops: f64,
    /// Absent on GPUs without FP8 tensor cores.
    #[serde(default)]
    pub fp8_dense_tflops: Option<f64>,
    pub hbm_gib: f64,
    pub hbm_gb_per_s: f64,
    /// Streaming multiprocessors: GEMM tiles are scheduled on them in waves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<u32>,
    /// Fraction of `hbm_gb_per_s` a streaming kernel achieves (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbm_efficiency: Option<f64>,
    /// Fraction of the dense peak a large, well-shaped GEMM sustains (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemm_efficiency: Option<f64>,
    /// The same for FP8 GEMMs, as a fraction of the FP8 dense peak (`gemm_efficiency` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8_gemm_efficiency: Option<f64>,
    /// Shortest time the GPU spends on one kernel: the launch overhead of a kernel that does
    /// nothing, microseconds (0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_launch_us: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Ampere,
    /// Ada Lovelace (L20, L40S): FlashAttention-2's mma.sync kernels, as on Ampere.
    Ada,
    Hopper,
    Blackwell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fabric {
    /// Every GPU reaches every other at full NVLink rate through NVSwitch.
    Nvswitch,
    /// GPUs talk over PCIe (through switches or the CPU), no NVLink.
    Pcie,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntraNode {
    pub fabric: Fabric,
    /// Per-GPU line rate, one direction (GB/s, 1 GB = 1e9 bytes).
    pub line_rate_gb_per_s: f64,
    /// What NCCL achieves as bus bandwidth on large messages (GB/s).
    pub busbw_gb_per_s: f64,
    /// NCCL's per-step hardware latency on this fabric (simple protocol), microseconds.
    pub hw_latency_us_per_step: f64,
    /// What NCCL point-to-point transfers (send/recv, and all-to-all, which NCCL runs as grouped
    /// send/recv) achieve per GPU and direction on large messages (GB/s); `busbw_gb_per_s` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p_gb_per_s: Option<f64>,
    /// How a PCIe server's GPUs hang off its CPUs (`fabric = "pcie"` only); absent: every GPU pair
    /// at the line rate, nothing shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie: Option<PcieTree>,
}

/// A PCIe server's tree: GPUs under PCIe switches, switches under CPU sockets, the sockets joined
/// by the CPU interconnect. What GPUs under one switch exchange with GPUs elsewhere shares the
/// switch's uplink; what one socket's GPUs exchange with the other's shares the CPU interconnect
/// (the cost model prices the busiest such link, docs/cost-model.md section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcieTree {
    pub gpus_per_switch: u32,
    pub switches_per_socket: u32,
    /// A switch's uplink to its CPU's root port, one direction (GB/s, line rate).
    pub switch_uplink_gb_per_s: f64,
    /// What GPU peer traffic gets across the CPU interconnect between two sockets, one direction
    /// (GB/s, achieved: NCCL's own figure for it is already a practical one).
    pub socket_link_gb_per_s: f64,
    /// Whether GPUs under one PCIe switch may read and write each other's memory (NCCL's P2P
    /// transport); false (ACS, a platform or driver without PCIe P2P, NCCL_P2P_DISABLE): NCCL
    /// stages every transfer through host memory, so all of a switch's traffic crosses its uplink.
    /// Between GPUs under different switches NCCL stages through host memory whatever this says:
    /// its default P2P level stops at a common PCIe switch (`PATH_PXB`, src/graph/paths.cc).
    pub p2p: bool,
    /// What NCCL's transfers staged through host memory (its SHM transport) achieve per GPU and
    /// direction on large messages (GB/s, achieved); uplinks carry staged traffic at their line
    /// rate times this figure's share of the GPU link's.
    pub host_staged_gb_per_s: f64,
}

impl PcieTree {
    /// GPUs under one CPU socket.
    pub fn gpus_per_socket(&self) -> u32 {
        self.gpus_per_switch.saturating_mul(self.switches_per_socket)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterNode {
    pub nics_per_node: u32,
    /// Effective bandwidth NCCL gets from one NIC, one direction (GB/s).
    pub nic_gb_per_s: f64,
    /// Line rate of one NIC, one direction (GB/s): what no transfer can beat, the bound on
    /// calibrated bandwidths. Taken as `nic_gb_per_s` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_line_rate_gb_per_s: Option<f64>,
    /// NCCL's per-step hardware latency over the network (simple protocol), microseconds.
    pub hw_latency_us_per_step: f64,
    /// NICs one GPU can use at once in an inter-node all-to-all (NCCL cannot aggregate several).
    pub alltoall_nics_per_gpu: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nccl {
    /// Fixed cost of launching one collective (simple protocol), microseconds.
    pub base_latency_us: f64,
    /// NCCL's low-latency protocols, which it picks for small messages: 8-byte lines with a
    /// 4-byte flag (LL) and 128-byte lines with an 8-byte flag (LL128). Absent: simple only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ll: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ll128: Option<Protocol>,
}

/// Latency and bandwidth efficiency of one NCCL protocol (NCCL src/graph/tuning.cc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub base_latency_us: f64,
    pub intra_hw_latency_us_per_step: f64,
    pub inter_hw_latency_us_per_step: f64,
    /// Fraction of the simple protocol's bandwidth the protocol delivers.
    pub efficiency: f64,
}

/// The collectives the cost model prices and calibration fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collective {
    AllToAll,
    AllGather,
    ReduceScatter,
    AllReduce,
    SendRecv,
}

impl Collective {
    pub const ALL: [Collective; 5] = [
        Collective::AllToAll,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllReduce,
        Collective::SendRecv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Collective::AllToAll => "all_to_all",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::AllReduce => "all_reduce",
            Collective::SendRecv => "send_recv",
        }
    }

    /// nccl-tests' bus-bandwidth factor: busbw = algbw x factor for `n` ranks
    /// (nccl-tests doc/PERFORMANCE.md; reference/hardware_facts.csv `nccl.busbw_factor.*`).
    pub fn busbw_factor(self, n: u32) -> f64 {
        let n = f64::from(n.max(1));
        match self {
            Collective::AllToAll | Collective::AllGather | Collective::ReduceScatter => (n - 1.0) / n,
            Collective::AllReduce => 2.0 * (n - 1.0) / n,
            Collective::SendRecv => 1.0,
        }
    }
}

/// Where a group's traffic travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkLevel {
    /// All ranks inside one node.
    Intra,
    /// Ranks on several nodes.
    Inter,
}

impl LinkLevel {
    pub const ALL: [LinkLevel; 2] = [LinkLevel::Intra, LinkLevel::Inter];

    pub fn name(self) -> &'static str {
        match self {
            LinkLevel::Intra => "intra",
            LinkLevel::Inter => "inter",
        }
    }
}

/// Measured replacements for datasheet figures, with where they came from
/// (written by `hsap-tune calibrate`; docs/calibration.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectives: Vec<CollectiveFit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelFit>,
    /// How much of its standalone speed an operation keeps when it runs overlapped with other
    /// work, where both were measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlap: Vec<OverlapFit>,
}

impl Calibration {
    /// Fitted figures that break physics, one message per fit (see [`Self::unphysical_fit`]),
    /// each naming the fit (`calibration.collectives[i]`).
    pub fn unphysical(&self, cluster: &Cluster) -> Vec<String> {
        self.collectives
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let problem = Self::unphysical_fit(cluster, f)?;
                Some(format!("calibration.collectives[{i}] ({} {} on {} ranks): {problem}", f.op.name(), f.level.name(), f.ranks))
            })
            .collect()
    }

    /// What breaks physics in one fit, if anything: a negative or non-finite latency, a bandwidth
    /// that is not positive, or one above what the cluster's links allow
    /// ([`Cluster::busbw_ceiling_gb_per_s`]).
    pub fn unphysical_fit(cluster: &Cluster, f: &CollectiveFit) -> Option<String> {
        let nodes = f.nodes_or_assumed(cluster);
        let ceiling = cluster.busbw_ceiling_gb_per_s(f.op, f.ranks, nodes);
        let lines = std::iter::once((f.latency_us, f.busbw_gb_per_s)).chain(f.regimes.iter().map(|r| (r.latency_us, r.busbw_gb_per_s)));
        for (latency_us, busbw) in lines {
            if !(latency_us.is_finite() && latency_us >= 0.0) {
                return Some(format!("latency {latency_us} us must be a non-negative number"));
            }
            if !(busbw.is_finite() && busbw > 0.0) {
                return Some(format!("bus bandwidth {busbw} GB/s must be positive"));
            }
            if busbw > ceiling {
                return Some(format!(
                    "bus bandwidth {busbw} GB/s exceeds the {ceiling:.1} GB/s that the links of {} allow on {} ranks over {}",
                    cluster.line_rate_words(nodes),
                    f.ranks,
                    if nodes == 1 { "1 node".to_string() } else { format!("{nodes} nodes") }
                ));
            }
        }
        None
    }

    /// The fit for `op` at `level` measured on `ranks` ranks, or else on the nearest rank count
    /// (by ratio) at that level.
    pub fn collective_fit(&self, op: Collective, level: LinkLevel, ranks: u32) -> Option<&CollectiveFit> {
        let distance = |f: &CollectiveFit| (f64::from(f.ranks.max(1)) / f64::from(ranks.max(1))).ln().abs();
        self.collectives
            .iter()
            .filter(|f| f.op == op && f.level == level)
            .min_by(|a, b| distance(a).total_cmp(&distance(b)))
    }
}

/// A fitted model of one collective at one link level. NCCL prices every (algorithm,
/// protocol) pair as a latency plus bytes over a bandwidth and runs the cheapest, so the fit is
/// the lower envelope of a few such lines (`regimes`):
/// time(bytes) = min over regimes of latency + bytes x busbw_factor(ranks) / busbw.
/// Without regimes (a hand-written profile) it is the single line (latency_us, busbw_gb_per_s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectiveFit {
    pub op: Collective,
    pub level: LinkLevel,
    /// Ranks of the measurement the fit came from.
    pub ranks: u32,
    /// Nodes the measurement spanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Latency of the smallest messages (the first regime's), microseconds.
    pub latency_us: f64,
    /// Bus bandwidth of the largest messages (the last regime's), GB/s.
    pub busbw_gb_per_s: f64,
    /// Message size (bytes) from which the highest-bandwidth regime is the cheapest and its
    /// bandwidth term outweighs its latency (the collective runs at half its peak or better).
    pub saturation_bytes: f64,
    /// The lines of the envelope, in the order they take over as messages grow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regimes: Vec<CollectiveRegime>,
    /// Measured sizes the fit used.
    #[serde(default)]
    pub points: u32,
    /// Root mean square of ln(fitted / measured) over those sizes.
    #[serde(default)]
    pub rms_log_residual: f64,
    /// Largest |fitted - measured| / measured over those sizes.
    #[serde(default)]
    pub max_rel_error: f64,
    /// Which log or measurement file, how many points, and the fit's residual.
    pub provenance: String,
    /// The measured (bytes, seconds) points the fit came from, so that a profile alone can show
    /// predicted against measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measured: Vec<[f64; 2]>,
}

/// One alpha-beta line of a [`CollectiveFit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectiveRegime {
    pub latency_us: f64,
    pub busbw_gb_per_s: f64,
    /// Where this line became the cheapest at the measured rank count (informational: time_s
    /// takes the minimum over all lines, which moves the crossovers for other rank counts).
    pub from_bytes: f64,
}

impl CollectiveFit {
    /// The nodes the measurement spanned: as recorded, else one for an intra-node fit and whole
    /// nodes of `cluster` for an inter-node one.
    pub fn nodes_or_assumed(&self, cluster: &Cluster) -> u32 {
        match (self.nodes, self.level) {
            (Some(n), _) => n.max(1),
            (None, LinkLevel::Intra) => 1,
            (None, LinkLevel::Inter) => self.ranks.div_ceil(cluster.gpus_per_node.max(1)).max(2),
        }
    }

    /// Predicted time of the collective for `bytes` per rank (nccl-tests' `size`) on `ranks` ranks:
    /// the cheapest regime's latency plus the bytes each rank moves over its bus bandwidth.
    pub fn time_s(&self, bytes: f64, ranks: u32) -> f64 {
        let factor = self.op.busbw_factor(ranks);
        let line = |latency_us: f64, busbw_gb_per_s: f64| latency_us * 1e-6 + bytes * factor / (busbw_gb_per_s * GB);
        if self.regimes.is_empty() {
            return line(self.latency_us, self.busbw_gb_per_s);
        }
        self.regimes
            .iter()
            .map(|r| line(r.latency_us, r.busbw_gb_per_s))
            .fold(f64::INFINITY, f64::min)
    }
}

/// Overlap efficiency of one operation: its time alone over its time when overlapped with
/// other work (1 = overlap costs it nothing), the median over matched measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlapFit {
    /// The measurement's `op` (a collective such as `send_recv`, or a kernel name).
    pub op: String,
    pub efficiency: f64,
    /// Shapes measured both alone and overlapped.
    pub pairs: u32,
    pub provenance: String,
}

/// A measured kernel throughput curve that replaces the published table for its kind and shape:
/// one per kernel, kind, head dim, causality and varlen (attention) or dtype (GEMMs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelFit {
    pub kind: KernelKind,
    /// The kernel measured, as the measurement rows name it (`flash_attn_2`, `sdpa_cudnn`,
    /// `matmul`...; docs/measurements.md). The stack's attention kernel selects the attention
    /// curves of the kernels that are it (`cost::AttentionKernel::of_measured`). None (profiles
    /// written before rows named their kernel): the curve prices every kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The kernel's library and version ("flash_attn 2.7.4").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// The GPU the rows were measured on, as CUDA names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default)]
    pub head_dim: Option<u32>,
    #[serde(default)]
    pub causal: Option<bool>,
    /// Attention: packed documents with `cu_seqlens` (true; the curve's size is the document
    /// length) or one dense sequence per call (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub varlen: Option<bool>,
    /// GEMMs: the element type of the inputs (`bf16`, `fp8`); the training dtype selects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// (work size, achieved TFLOP/s) in increasing size: sequence length for attention,
    /// m x n x k for GEMMs.
    pub points: Vec<(f64, f64)>,
    pub provenance: String,
}

impl KernelFit {
    /// A curve of `kind` that names no kernel, shape or dtype (it prices every one).
    pub fn curve(kind: KernelKind, points: Vec<(f64, f64)>, provenance: impl Into<String>) -> KernelFit {
        KernelFit {
            kind,
            kernel: None,
            library: None,
            device: None,
            head_dim: None,
            causal: None,
            varlen: None,
            dtype: None,
            points,
            provenance: provenance.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    AttentionFwd,
    AttentionBwd,
    Gemm,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::AttentionFwd => "attention_fwd",
            KernelKind::AttentionBwd => "attention_bwd",
            KernelKind::Gemm => "gemm",
        }
    }
}

impl Cluster {
    /// Looks a preset up by name or reads a cluster TOML file (a preset or a calibrated profile).
    pub fn resolve(name_or_path: &str) -> Result<Cluster> {
        if let Some((file, text)) = crate::presets::CLUSTER_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            return Cluster::from_toml(Path::new(&format!("models/clusters/{file}.toml")), text);
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            return Cluster::from_toml(path, &text);
        }
        Err(Error::Unknown {
            kind: "cluster",
            name: name_or_path.to_string(),
            known: Cluster::preset_names(),
            hint: "name a preset, or pass a path to a cluster TOML (e.g. one written by `hsap-tune calibrate`)".into(),
        })
    }

    pub fn preset_names() -> Vec<String> {
        crate::presets::CLUSTER_PRESETS.iter().map(|(n, _)| n.to_string()).collect()
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Cluster> {
        let cluster: Cluster = crate::toml_input::parse(path, text, "see models/clusters/dgx-a100-80g.toml for the format")?;
        cluster.check(path)?;
        Ok(cluster)
    }

    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        let gpus = u64::from(self.nodes) * u64::from(self.gpus_per_node);
        if gpus > u64::from(MAX_GPUS) {
            return Err(Error::input(
                path,
                0,
                format!(
                    "nodes {} x gpus_per_node {} = {} GPUs; hsap plans for at most {}",
                    thousands(u64::from(self.nodes)),
                    self.gpus_per_node,
                    thousands(gpus),
                    thousands(u64::from(MAX_GPUS))
                ),
                "fix the cluster file",
            ));
        }
        self.check_domain().map_err(|(what, hint)| Error::input(path, 0, what, hint))?;
        let positive = [
            ("gpus_per_node", f64::from(self.gpus_per_node)),
            ("nodes", f64::from(self.nodes)),
            ("gpu.bf16_dense_tflops", self.gpu.bf16_dense_tflops),
            ("gpu.hbm_gib", self.gpu.hbm_gib),
            ("gpu.hbm_gb_per_s", self.gpu.hbm_gb_per_s),
            ("intra.line_rate_gb_per_s", self.intra.line_rate_gb_per_s),
            ("intra.busbw_gb_per_s", self.intra.busbw_gb_per_s),
            ("inter.nics_per_node", f64::from(self.inter.nics_per_node)),
            ("inter.nic_gb_per_s", self.inter.nic_gb_per_s),
            ("inter.alltoall_nics_per_gpu", self.inter.alltoall_nics_per_gpu),
        ];
        let optional = [
            ("gpu.sms", self.gpu.sms.map(f64::from)),
            ("gpu.hbm_efficiency", self.gpu.hbm_efficiency),
            ("gpu.gemm_efficiency", self.gpu.gemm_efficiency),
            ("gpu.fp8_gemm_efficiency", self.gpu.fp8_gemm_efficiency),
            ("intra.p2p_gb_per_s", self.intra.p2p_gb_per_s),
            ("inter.nic_line_rate_gb_per_s", self.inter.nic_line_rate_gb_per_s),
            ("nccl.ll.efficiency", self.nccl.ll.as_ref().map(|p| p.efficiency)),
            ("nccl.ll128.efficiency", self.nccl.ll128.as_ref().map(|p| p.efficiency)),
        ];
        let fractions = [
            ("gpu.hbm_efficiency", self.gpu.hbm_efficiency),
            ("gpu.gemm_efficiency", self.gpu.gemm_efficiency),
            ("gpu.fp8_gemm_efficiency", self.gpu.fp8_gemm_efficiency),
            ("nccl.ll.efficiency", self.nccl.ll.as_ref().map(|p| p.efficiency)),
            ("nccl.ll128.efficiency", self.nccl.ll128.as_ref().map(|p| p.efficiency)),
        ];
        if let Some((name, v)) = fractions.iter().find_map(|(n, v)| v.filter(|v| *v > 1.0).map(|v| (n, v))) {
            return Err(Error::input(path, 0, format!("{name} = {v} is a fraction and cannot exceed 1"), "fix the cluster file"));
        }
        let latencies = [
            ("gpu.kernel_launch_us", self.gpu.kernel_launch_us),
            ("nccl.ll.base_latency_us", self.nccl.ll.as_ref().map(|p| p.base_latency_us)),
            ("nccl.ll128.base_latency_us", self.nccl.ll128.as_ref().map(|p| p.base_latency_us)),
        ];
        if let Some((name, v)) = latencies.iter().find_map(|(n, v)| v.filter(|v| !(v.is_finite() && *v >= 0.0)).map(|v| (n, v))) {
            return Err(Error::input(path, 0, format!("{name} = {v} must not be negative"), "fix the cluster file"));
        }
        let present = optional.iter().filter_map(|(n, v)| v.map(|v| (*n, v)));
        if let Some((name, v)) = positive.into_iter().chain(present).find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::input(path, 0, format!("{name} = {v} must be positive"), "fix the cluster file"));
        }
        if let Some(tree) = &self.intra.pcie {
            let per_socket = tree.gpus_per_socket();
            if self.intra.fabric != Fabric::Pcie || per_socket == 0 || self.gpus_per_node % per_socket != 0 {
                return Err(Error::input(
                    path,
                    0,
                    format!(
                        "intra.pcie: {} GPUs per switch x {} switches per socket must divide the node's {} GPUs on a pcie fabric",
                        tree.gpus_per_switch, tree.switches_per_socket, self.gpus_per_node
                    ),
                    "describe the node's PCIe tree, or drop intra.pcie",
                ));
            }
            let rates = [
                ("intra.pcie.switch_uplink_gb_per_s", tree.switch_uplink_gb_per_s),
                ("intra.pcie.socket_link_gb_per_s", tree.socket_link_gb_per_s),
                ("intra.pcie.host_staged_gb_per_s", tree.host_staged_gb_per_s),
            ];
            for (name, v) in rates {
                if !(v.is_finite() && v > 0.0) {
                    return Err(Error::input(path, 0, format!("{name} = {v} must be positive"), "fix the cluster file"));
                }
            }
        }
        // An achieved bandwidth cannot beat the line it runs on.
        let achieved = [
            ("intra.busbw_gb_per_s", self.intra.busbw_gb_per_s, "intra.line_rate_gb_per_s", self.intra.line_rate_gb_per_s),
            ("intra.p2p_gb_per_s", self.intra.p2p_gb_per_s.unwrap_or(0.0), "intra.line_rate_gb_per_s", self.intra.line_rate_gb_per_s),
            (
                "intra.pcie.host_staged_gb_per_s",
                self.intra.pcie.as_ref().map_or(0.0, |t| t.host_staged_gb_per_s),
                "intra.line_rate_gb_per_s",
                self.intra.line_rate_gb_per_s,
            ),
            (
                "inter.nic_gb_per_s",
                self.inter.nic_gb_per_s,
                "inter.nic_line_rate_gb_per_s",
                self.inter.nic_line_rate_gb_per_s.unwrap_or(f64::INFINITY),
            ),
        ];
        if let Some((name, v, line, rate)) = achieved.iter().find(|(_, v, _, rate)| v > rate) {
            return Err(Error::input(path, 0, format!("{name} = {v} exceeds {line} = {rate}"), "an achieved bandwidth cannot beat the line rate; fix the cluster file"));
        }
        if let Some(cal) = &self.calibration {
            if let Some(first) = cal.unphysical(self).into_iter().next() {
                return Err(Error::input(
                    path,
                    0,
                    first,
                    "recalibrate from logs of this cluster (`hsap-tune calibrate`), or fix the fit by hand",
                ));
            }
        }
        Ok(())
    }

    /// An NVLink domain spans whole nodes and the nodes in use fill whole domains (or lie in
    /// one), and only NVSwitch fabrics span nodes: (what is wrong, hint).
    fn check_domain(&self) -> std::result::Result<(), (String, String)> {
        let per = self.nodes_per_domain.unwrap_or(1);
        if per == 0 {
            return Err(("nodes_per_domain = 0 must be positive".into(), "fix the cluster file".into()));
        }
        if per > 1 && self.intra.fabric != Fabric::Nvswitch {
            return Err((
                format!("nodes_per_domain = {per} needs an NVSwitch fabric (intra.fabric is {:?})", self.intra.fabric),
                "only NVLink switches join several hosts into one domain; drop nodes_per_domain".into(),
            ));
        }
        if self.nodes > per && self.nodes % per != 0 {
            return Err((
                format!("{} nodes are not whole NVLink domains of {per} nodes", self.nodes),
                format!("use at most {per} nodes or a multiple of {per} (whole domains)"),
            ));
        }
        Ok(())
    }

    /// Nodes of one NVLink domain in use: the preset's domain, or every node when fewer are used.
    pub fn nodes_per_domain(&self) -> u32 {
        self.nodes_per_domain.unwrap_or(1).clamp(1, self.nodes.max(1))
    }

    /// GPUs of one NVLink domain in use: what all-to-all and ring traffic reaches at NVLink speed.
    /// The cost model, the planner and the simulator call this unit a domain; a node is only a
    /// host (its NICs, its processes).
    pub fn gpus_per_domain(&self) -> u32 {
        self.gpus_per_node.saturating_mul(self.nodes_per_domain())
    }

    /// NVLink domains in use.
    pub fn domains(&self) -> u32 {
        self.nodes / self.nodes_per_domain()
    }

    /// NICs of one NVLink domain: every host's together (a float: a count from the user's file
    /// times hosts, never overflowed).
    pub fn nics_per_domain(&self) -> f64 {
        f64::from(self.inter.nics_per_node) * f64::from(self.nodes_per_domain())
    }

    /// The line rate of one node's NICs together, one direction (GB/s).
    pub fn node_nic_line_rate_gb_per_s(&self) -> f64 {
        f64::from(self.inter.nics_per_node) * self.inter.nic_line_rate_gb_per_s.unwrap_or(self.inter.nic_gb_per_s)
    }

    /// The highest bus bandwidth (nccl-tests' busbw) `op` can reach over `ranks` ranks spread
    /// evenly over `nodes` nodes, by any algorithm, given the links' line rates: a bound that
    /// calibrated figures may not exceed (docs/calibration.md derives it). Inside a node each GPU
    /// moves at least the bytes nccl-tests' bus factor counts through its own link, except that
    /// an all-reduce with in-switch reduction (NVLS) sends and receives its buffer only once:
    /// algbw <= L. Across nodes the bytes that must leave (or enter) a node cross its NICs
    /// (R, their line rates together), with g = ranks / nodes GPUs per node:
    /// all-reduce algbw <= R (in-network reduction: each node sends its buffer once);
    /// all-gather and reduce-scatter: a node receives (sends) every other node's share once,
    /// busbw <= R (n-1) / (n-g); all-to-all: each of its g GPUs sends (n-g)/n of its buffer
    /// off the node, busbw <= R (n-1) / (g (n-g)); send/recv: a node's edge rank sends its
    /// buffer off the node, busbw <= R.
    pub fn busbw_ceiling_gb_per_s(&self, op: Collective, ranks: u32, nodes: u32) -> f64 {
        let n = f64::from(ranks.max(2));
        if nodes <= 1 {
            let line = self.intra.line_rate_gb_per_s;
            return match op {
                Collective::AllReduce => line * op.busbw_factor(ranks.max(2)),
                _ => line,
            };
        }
        let node = self.node_nic_line_rate_gb_per_s();
        let g = n / f64::from(nodes);
        match op {
            Collective::AllReduce => node * op.busbw_factor(ranks.max(2)),
            Collective::AllGather | Collective::ReduceScatter => node * (n - 1.0) / (n - g),
            Collective::AllToAll => node * (n - 1.0) / (g * (n - g)),
            Collective::SendRecv => node,
        }
    }

    /// Which line rates bound a level, in words for messages.
    pub fn line_rate_words(&self, nodes: u32) -> String {
        if nodes <= 1 {
            return format!("'{}' (intra.line_rate_gb_per_s {} GB/s per GPU)", self.name, self.intra.line_rate_gb_per_s);
        }
        let (rate, field) = match self.inter.nic_line_rate_gb_per_s {
            Some(r) => (r, "inter.nic_line_rate_gb_per_s"),
            None => (self.inter.nic_gb_per_s, "inter.nic_gb_per_s, as no line rate is given"),
        };
        format!("'{}' ({} NICs per node x {rate} GB/s, {field})", self.name, self.inter.nics_per_node)
    }

    /// The same cluster with `nodes` nodes.
    pub fn with_nodes(mut self, nodes: u32) -> Result<Cluster> {
        if nodes == 0 {
            return Err(Error::invalid("--nodes must be at least 1", "try --nodes 8"));
        }
        let gpus = u64::from(nodes) * u64::from(self.gpus_per_node);
        if gpus > u64::from(MAX_GPUS) {
            return Err(Error::invalid(
                format!(
                    "--nodes {nodes} makes {} GPUs ({} per node); hsap plans for at most {}",
                    thousands(gpus),
                    self.gpus_per_node,
                    thousands(u64::from(MAX_GPUS))
                ),
                format!("at most --nodes {}", MAX_GPUS / self.gpus_per_node.max(1)),
            ));
        }
        self.nodes = nodes;
        self.check_domain().map_err(|(what, hint)| Error::invalid(format!("--nodes {nodes}: {what}"), hint))?;
        Ok(self)
    }

    /// GPUs in use; a cluster that passed `check` or `with_nodes` has at most [`MAX_GPUS`].
    pub fn gpus(&self) -> u32 {
        self.nodes * self.gpus_per_node
    }

    pub fn hbm_bytes(&self) -> f64 {
        self.gpu.hbm_gib * crate::units::GIB
    }
}

/// The most GPUs hsap plans for (2^20): more than any training cluster, and few enough that GPU
/// counts and their products with token counts fit the integers the planner computes in.
pub const MAX_GPUS: u32 = 1 << 20;

/// Bytes in a GB (bandwidths are quoted in decimal units).
pub const GB: f64 = 1e9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_is_named_after_its_file() {
        for name in Cluster::preset_names() {
            let c = Cluster::resolve(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.name, name);
        }
    }

    #[test]
    fn required_presets_exist() {
        for name in ["dgx-a100-80g", "a100-40g-ib400", "a800", "dgx-h100", "h800", "pcie-a100", "dgx-h200", "dgx-b200", "gb200-nvl72", "h20", "l20", "l40s"] {
            Cluster::resolve(name).unwrap();
        }
    }

    #[test]
    fn busbw_factors_follow_nccl_tests() {
        assert_eq!(Collective::AllReduce.busbw_factor(8), 1.75);
        assert_eq!(Collective::AllGather.busbw_factor(8), 0.875);
        assert_eq!(Collective::SendRecv.busbw_factor(8), 1.0);
    }

    fn fit(ranks: u32, regimes: Vec<CollectiveRegime>) -> CollectiveFit {
        CollectiveFit {
            op: Collective::AllReduce,
            level: LinkLevel::Inter,
            ranks,
            nodes: Some(2),
            latency_us: 10.0,
            busbw_gb_per_s: 100.0,
            saturation_bytes: 0.0,
            regimes,
            points: 0,
            rms_log_residual: 0.0,
            max_rel_error: 0.0,
            provenance: String::new(),
            measured: Vec::new(),
        }
    }

    #[test]
    fn collective_fit_without_regimes_is_one_alpha_beta_line() {
        // 10 us + 1 GB x 1.75 / 100 GB/s = 17.51 ms on 8 ranks.
        let t = fit(8, Vec::new()).time_s(1e9, 8);
        assert!((t - 0.01751).abs() < 1e-12, "{t}");
    }

    #[test]
    fn collective_fit_takes_the_cheapest_regime() {
        let f = fit(
            16,
            vec![
                CollectiveRegime {
                    latency_us: 10.0,
                    busbw_gb_per_s: 10.0,
                    from_bytes: 0.0,
                },
                CollectiveRegime {
                    latency_us: 100.0,
                    busbw_gb_per_s: 100.0,
                    from_bytes: 1e5,
                },
            ],
        );
        // 1 KB on 2 ranks (factor 1): 10 us + 0.1 us beats 100 us + 0.01 us.
        assert!((f.time_s(1e3, 2) - 10.1e-6).abs() < 1e-15);
        // 1 GB on 2 ranks: 100 us + 10 ms beats 10 us + 100 ms.
        assert!((f.time_s(1e9, 2) - 0.0101).abs() < 1e-12);
    }

    #[test]
    fn calibration_finds_the_nearest_rank_count() {
        let cal = Calibration {
            collectives: vec![fit(8, Vec::new()), fit(64, Vec::new())],
            ..Calibration::default()
        };
        assert_eq!(cal.collective_fit(Collective::AllReduce, LinkLevel::Inter, 16).map(|f| f.ranks), Some(8));
        assert_eq!(cal.collective_fit(Collective::AllReduce, LinkLevel::Inter, 32).map(|f| f.ranks), Some(64));
        assert!(cal.collective_fit(Collective::AllReduce, LinkLevel::Intra, 8).is_none());
        assert!(cal.collective_fit(Collective::AllGather, LinkLevel::Inter, 8).is_none());
    }

    #[test]
    fn busbw_ceilings_follow_the_line_rates() {
        let h100 = Cluster::resolve("dgx-h100").unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Inside a node: NVLink's 450 GB/s; an all-reduce with in-switch reduction moves its buffer
        // once, so algbw <= 450 and busbw <= 450 x 2 x 7/8.
        assert!(close(h100.busbw_ceiling_gb_per_s(Collective::AllReduce, 8, 1), 787.5));
        assert!(close(h100.busbw_ceiling_gb_per_s(Collective::AllGather, 8, 1), 450.0));
        // Across 2 nodes of 8: the node's 8 x 50 GB/s NDR NICs.
        assert!(close(h100.busbw_ceiling_gb_per_s(Collective::AllReduce, 16, 2), 400.0 * 1.875));
        assert!(close(h100.busbw_ceiling_gb_per_s(Collective::AllGather, 16, 2), 400.0 * 15.0 / 8.0));
        assert!(close(h100.busbw_ceiling_gb_per_s(Collective::AllToAll, 16, 2), 400.0 * 15.0 / 64.0));
        assert!(close(h100.busbw_ceiling_gb_per_s(Collective::SendRecv, 16, 2), 400.0));
        // Without a line rate the effective rate bounds: 8 x 48.5.
        let mut no_line = h100.clone();
        no_line.inter.nic_line_rate_gb_per_s = None;
        assert!(close(no_line.busbw_ceiling_gb_per_s(Collective::SendRecv, 16, 2), 388.0));
    }

    #[test]
    fn unphysical_fits_are_named() {
        let h100 = Cluster::resolve("dgx-h100").unwrap();
        let mut f = fit(16, Vec::new());
        assert_eq!(Calibration::unphysical_fit(&h100, &f), None);
        f.busbw_gb_per_s = 751.0;
        let why = Calibration::unphysical_fit(&h100, &f).unwrap();
        assert!(why.contains("751 GB/s exceeds the 750.0 GB/s"), "{why}");
        f.busbw_gb_per_s = 100.0;
        f.regimes = vec![CollectiveRegime { latency_us: -1.0, busbw_gb_per_s: 10.0, from_bytes: 0.0 }];
        let cal = Calibration { collectives: vec![f], ..Calibration::default() };
        assert_eq!(cal.unphysical(&h100), ["calibration.collectives[0] (all_reduce inter on 16 ranks): latency -1 us must be a non-negative number"]);
        // Cluster files whose achieved rates beat their line rates are refused.
        let text = std::fs::read_to_string("models/clusters/dgx-h100.toml").unwrap().replace("nic_gb_per_s = 48.5", "nic_gb_per_s = 51");
        let err = Cluster::from_toml(Path::new("fast.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("inter.nic_gb_per_s = 51 exceeds inter.nic_line_rate_gb_per_s = 50"), "{err}");
    }

    #[test]
    fn every_row_a_preset_names_is_in_the_hardware_facts() {
        // A figure's comment starts with its row in reference/hardware_facts.csv (or says in
        // words where it comes from): every row-like name must be a row.
        let facts = std::fs::read_to_string("reference/hardware_facts.csv").unwrap();
        let rows: std::collections::BTreeSet<&str> = facts.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
        let mut named = 0;
        for entry in std::fs::read_dir("models/clusters").unwrap() {
            let path = entry.unwrap().path();
            for line in std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.starts_with('#')) {
                let Some((_, comment)) = line.split_once("# ") else { continue };
                let word = comment.split_whitespace().next().unwrap_or("");
                if word.contains('.') && word.chars().all(|c| c.is_ascii_alphanumeric() || "._".contains(c)) {
                    assert!(rows.contains(word), "{}: '{word}' is not a row of reference/hardware_facts.csv", path.display());
                    named += 1;
                }
            }
        }
        assert!(named > 200, "{named}");
    }

    #[test]
    fn an_nvl72_rack_is_one_nvlink_domain_of_its_trays() {
        let rack = Cluster::resolve("gb200-nvl72").unwrap();
        assert_eq!((rack.gpus(), rack.gpus_per_domain(), rack.domains(), rack.nics_per_domain()), (72, 72, 1, 72.0));
        let two = rack.clone().with_nodes(36).unwrap();
        assert_eq!((two.gpus(), two.gpus_per_domain(), two.domains()), (144, 72, 2));
        // Part of a rack is a smaller domain; a rack and a part is refused.
        let part = rack.clone().with_nodes(4).unwrap();
        assert_eq!((part.gpus_per_domain(), part.domains()), (16, 1));
        let err = rack.with_nodes(20).unwrap_err().to_string();
        assert!(err.contains("--nodes 20: 20 nodes are not whole NVLink domains of 18 nodes"), "{err}");
        // Elsewhere the node is the domain.
        let dgx = Cluster::resolve("dgx-h100").unwrap().with_nodes(4).unwrap();
        assert_eq!((dgx.gpus_per_domain(), dgx.domains()), (8, 4));
        // Only NVLink switches join hosts.
        let text = std::fs::read_to_string("models/clusters/l40s.toml").unwrap().replace("nodes = 1\n", "nodes = 2\nnodes_per_domain = 2\n");
        let err = Cluster::from_toml(Path::new("l40s-pair.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("nodes_per_domain = 2 needs an NVSwitch fabric"), "{err}");
    }

    #[test]
    fn unknown_cluster_lists_the_known_ones() {
        let err = Cluster::resolve("dgx-b300").unwrap_err().to_string();
        assert!(err.contains("unknown cluster 'dgx-b300'") && err.contains("dgx-h100"), "{err}");
    }
}
