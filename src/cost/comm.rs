//! NCCL collectives priced by message size: a latency term and a bandwidth term per link level.

use crate::cluster::{Cluster, Collective, CollectiveFit, LinkLevel, PcieTree, GB};
use serde::{Deserialize, Serialize};

/// One collective as a group issues it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub collective: Collective,
    pub level: LinkLevel,
    /// Ranks taking part.
    pub ranks: u32,
    /// NVLink domains the ranks span (a domain is a node on every cluster but a multi-node
    /// NVLink rack: `Cluster::gpus_per_domain`).
    pub nodes: u32,
    /// nccl-tests `size` semantics: bytes in each rank's buffer (all-gather: the gathered output;
    /// all-to-all: what each rank sends in total; send/recv: the block sent).
    pub bytes: f64,
    /// GPUs of one domain that send over the network at the same time in this transfer: every
    /// rank in the domain for all-to-all and ring collectives, only the ranks at the domain's edge
    /// of a ring of send/recv.
    pub network_senders_per_node: u32,
    /// Messages the transfer is sent as, one after another, `bytes` split evenly between them:
    /// each pays the collective's latency. A ring step backward sends the next key/value block and
    /// the travelling key/value gradients as two (ring-flash-attention's `send_recv_kv` and
    /// `send_recv_kv_grad`).
    #[serde(default = "one")]
    pub messages: u32,
    /// GPUs each rank stands for side by side: a ring hop's slot is `ulysses x tp` GPUs that all
    /// send to the next slot's. A PCIe tree's links carry that many flows where the ring leaves a
    /// switch or socket.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub gpus_per_rank: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Transfer {
    pub fn new(collective: Collective, ranks: u32, nodes: u32, bytes: f64) -> Transfer {
        Transfer {
            collective,
            level: if nodes > 1 { LinkLevel::Inter } else { LinkLevel::Intra },
            ranks,
            nodes,
            bytes,
            network_senders_per_node: ranks.div_ceil(nodes.max(1)),
            messages: 1,
            gpus_per_rank: 1,
        }
    }

    /// The same transfer with each rank standing for `gpus` GPUs side by side.
    pub fn with_gpus_per_rank(mut self, gpus: u32) -> Transfer {
        self.gpus_per_rank = gpus.max(1);
        self
    }

    /// The same bytes sent as `messages` messages.
    pub fn in_messages(mut self, messages: u32) -> Transfer {
        self.messages = messages.max(1);
        self
    }

    /// The same transfer with `senders` GPUs per node sharing the node's NICs.
    pub fn with_network_senders(mut self, senders: u32) -> Transfer {
        self.network_senders_per_node = senders.max(1);
        self
    }

    /// Bytes each GPU moves over the network (0 inside a domain): the share of its traffic whose
    /// peer is in another domain.
    pub fn network_bytes_per_gpu(&self, gpus_per_domain: u32) -> f64 {
        if self.level == LinkLevel::Intra {
            return 0.0;
        }
        let n = f64::from(self.ranks);
        let per_node = (n / f64::from(self.nodes)).min(f64::from(gpus_per_domain));
        let off_node = (n - per_node) / n;
        match self.collective {
            Collective::AllToAll => self.bytes * off_node,
            Collective::SendRecv => self.bytes,
            // Ring algorithms cross each node boundary once per step: busbw-equivalent bytes.
            _ => self.bytes * self.collective.busbw_factor(self.ranks),
        }
    }
}

/// Latency steps of NCCL's ring/p2p algorithms for `n` ranks.
fn steps(collective: Collective, n: u32) -> f64 {
    let n = f64::from(n.max(1));
    match collective {
        Collective::AllReduce => 2.0 * (n - 1.0),
        Collective::AllGather | Collective::ReduceScatter => n - 1.0,
        Collective::AllToAll | Collective::SendRecv => 1.0,
    }
}

/// Time of a transfer on an otherwise idle cluster: the cluster's calibrated fit for the
/// collective and link level where there is one; else NCCL's latency-bandwidth model per protocol
/// (simple, LL, LL128; NCCL picks the fastest for the size, as its tuner does), with the level's
/// latency and bandwidth scaled to another collective's fit at that level when the calibration
/// has one ([`source`]).
pub fn time_s(cluster: &Cluster, t: &Transfer) -> f64 {
    if t.ranks <= 1 || t.bytes <= 0.0 {
        return 0.0;
    }
    if t.messages > 1 {
        let each = Transfer { bytes: t.bytes / f64::from(t.messages), messages: 1, ..*t };
        return f64::from(t.messages) * time_s(cluster, &each);
    }
    match source(cluster, t.collective, t.level, t.ranks) {
        Source::Fitted(fit) => fit.time_s(t.bytes, t.ranks),
        Source::Scaled { latency, bandwidth, .. } => model_time_s(cluster, t, latency, bandwidth),
        Source::Preset => model_time_s(cluster, t, 1.0, 1.0),
    }
}

/// The protocol model with the latencies multiplied by `latency` and the bandwidths by `bandwidth`.
fn model_time_s(cluster: &Cluster, t: &Transfer, latency: f64, bandwidth: f64) -> f64 {
    let steps = steps(t.collective, t.ranks);
    let bandwidth_s = bandwidth_time_s(cluster, t) / bandwidth;
    protocols(cluster, t.level)
        .map(|(base_us, hw_us, efficiency)| (base_us + hw_us * steps) * 1e-6 * latency + bandwidth_s / efficiency)
        .fold(f64::INFINITY, f64::min)
}

/// Where the price of a collective at a link level comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source<'a> {
    /// The calibration's fit of this collective at this level.
    Fitted(&'a CollectiveFit),
    /// The preset's model, its latencies times `latency` and bandwidths times `bandwidth`: the
    /// ratios of `fit` (another collective measured at this level) to what the preset predicts
    /// for that measurement. A link measured by one collective prices every collective over it.
    Scaled { fit: &'a CollectiveFit, latency: f64, bandwidth: f64 },
    /// The preset's figures: nothing at this level was measured.
    Preset,
}

/// How `collective` on `ranks` ranks at `level` is priced on this cluster. With no fit of the
/// collective itself, the fit that scales the level is one of the same kind (ring collectives:
/// all-reduce, all-gather, reduce-scatter; point-to-point: all-to-all, send/recv) if there is one,
/// at the nearest rank count.
pub fn source(cluster: &Cluster, collective: Collective, level: LinkLevel, ranks: u32) -> Source<'_> {
    let Some(cal) = &cluster.calibration else { return Source::Preset };
    if let Some(fit) = cal.collective_fit(collective, level, ranks) {
        return Source::Fitted(fit);
    }
    let distance = |f: &CollectiveFit| (f64::from(f.ranks.max(1)) / f64::from(ranks.max(1))).ln().abs();
    let kind = |c: Collective| matches!(c, Collective::AllToAll | Collective::SendRecv);
    let Some(fit) = cal
        .collectives
        .iter()
        .filter(|f| f.level == level)
        .min_by(|a, b| {
            (kind(a.op) != kind(collective))
                .cmp(&(kind(b.op) != kind(collective)))
                .then(distance(a).total_cmp(&distance(b)))
        })
    else {
        return Source::Preset;
    };
    // What the preset predicts for the fit's own measurement: its smallest latency (the
    // fastest protocol at 0 bytes) and its bus bandwidth on large messages (simple protocol).
    let nodes = fit.nodes_or_assumed(cluster);
    let measured = Transfer::new(fit.op, fit.ranks.max(2), if level == LinkLevel::Intra { 1 } else { nodes.max(2) }, GB);
    let steps = steps(fit.op, measured.ranks);
    let preset_latency_s = protocols(cluster, level).map(|(base, hw, _)| (base + hw * steps) * 1e-6).fold(f64::INFINITY, f64::min);
    let preset_busbw = measured.bytes * fit.op.busbw_factor(measured.ranks) / bandwidth_time_s(cluster, &measured) / GB;
    Source::Scaled {
        fit,
        latency: fit.latency_us * 1e-6 / preset_latency_s,
        bandwidth: fit.busbw_gb_per_s / preset_busbw,
    }
}

/// (base latency us, hardware latency us per step, bandwidth efficiency) of each protocol the
/// cluster describes at this link level.
fn protocols(cluster: &Cluster, level: LinkLevel) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
    let simple_hw = match level {
        LinkLevel::Intra => cluster.intra.hw_latency_us_per_step,
        LinkLevel::Inter => cluster.inter.hw_latency_us_per_step,
    };
    let low_latency = [&cluster.nccl.ll, &cluster.nccl.ll128].into_iter().flatten().map(move |p| {
        let hw = match level {
            LinkLevel::Intra => p.intra_hw_latency_us_per_step,
            LinkLevel::Inter => p.inter_hw_latency_us_per_step,
        };
        (p.base_latency_us, hw, p.efficiency)
    });
    std::iter::once((cluster.nccl.base_latency_us, simple_hw, 1.0)).chain(low_latency)
}

/// Bandwidth of NCCL's point-to-point transfers inside a node (send/recv, and all-to-all, which
/// NCCL runs as grouped send/recv), GB/s.
pub fn intra_gb_per_s(cluster: &Cluster, collective: Collective) -> f64 {
    match collective {
        Collective::AllToAll | Collective::SendRecv => cluster.intra.p2p_gb_per_s.unwrap_or(cluster.intra.busbw_gb_per_s),
        _ => cluster.intra.busbw_gb_per_s,
    }
}

/// The bandwidth part inside a domain: the bytes each GPU moves over its own link at the fabric's
/// bus bandwidth, or on a PCIe tree the busiest of the links the transfer's GPUs use ([`pcie_s`]).
fn intra_s(cluster: &Cluster, t: &Transfer) -> f64 {
    let per_gpu = t.bytes * t.collective.busbw_factor(t.ranks);
    let direct_gb_per_s = intra_gb_per_s(cluster, t.collective);
    match &cluster.intra.pcie {
        Some(tree) => pcie_s(cluster, tree, t, per_gpu, direct_gb_per_s),
        None => per_gpu / (direct_gb_per_s * GB),
    }
}

/// One node's part of a transfer on a PCIe tree, its GPUs side by side from a switch boundary
/// (the planner's placement): the busiest of each GPU's own link, its switch's uplink and the CPU
/// interconnect. With `n` GPUs of the transfer in the node, `g` of them under one switch and `s`
/// under one socket, each direction of
/// - a GPU's link carries its bytes: peer-to-peer at the fabric's bus bandwidth between GPUs under
///   one switch when P2P is allowed, staged through host memory otherwise (NCCL's default P2P
///   level stops at a common switch, so every path through a CPU host bridge is staged), at
///   `host_staged_gb_per_s`; a ring runs at its slowest edge, so a ring that leaves a switch is
///   staged throughout;
/// - a switch's uplink carries what its `g` GPUs stage through host memory: all-to-all
///   `g b (n - g) / n` (P2P off: `g b (n - 1) / n`); a ring (send/recv, and ring collectives'
///   `b x busbw factor` per GPU) one flow per sending GPU of a slot where it leaves the switch
///   (P2P off: `g` flows);
/// - the CPU interconnect carries what one socket's `s` GPUs send to the other's: all-to-all
///   `s b (n - s) / n`; a ring its crossing flows.
///
/// Uplinks carry staged traffic at their line rate times the staged share of the GPU link's; the
/// socket link's figure is already an achieved one.
fn pcie_s(cluster: &Cluster, tree: &PcieTree, t: &Transfer, per_gpu: f64, direct_gb_per_s: f64) -> f64 {
    let direct = direct_gb_per_s * GB;
    let staged = tree.host_staged_gb_per_s * GB;
    let gpus = match t.collective {
        // A ring of send/recv: `ranks` slots of `gpus_per_rank` GPUs each.
        Collective::SendRecv => t.ranks.div_ceil(t.nodes.max(1)).saturating_mul(t.gpus_per_rank.max(1)),
        // Every GPU of the node taking part sends.
        _ => t.network_senders_per_node.max(1),
    }
    .min(cluster.gpus_per_node);
    if gpus <= 1 {
        return per_gpu / direct;
    }
    let b = t.bytes;
    let n = f64::from(gpus);
    let g = f64::from(gpus.min(tree.gpus_per_switch));
    let s = f64::from(gpus.min(tree.gpus_per_socket()));
    let crosses_switch = gpus > tree.gpus_per_switch;
    let crosses_socket = gpus > tree.gpus_per_socket();
    let (own_s, uplink_bytes, socket_bytes) = match t.collective {
        Collective::AllToAll => {
            // What each GPU sends to the others under its switch, and to GPUs elsewhere.
            let (local, remote) = (b * (g - 1.0) / n, b * (n - g) / n);
            let (direct_bytes, staged_bytes) = if tree.p2p { (local, remote) } else { (0.0, local + remote) };
            (direct_bytes / direct + staged_bytes / staged, g * staged_bytes, s * b * (n - s) / n)
        }
        _ => {
            let is_staged = !tree.p2p || crosses_switch;
            let own_s = per_gpu / if is_staged { staged } else { direct };
            // Ring collectives: one ring edge leaves each switch and socket; send/recv: every GPU
            // of a slot sends to the next slot's, side by side.
            let slot = if t.collective == Collective::SendRecv { f64::from(t.gpus_per_rank.max(1)) } else { 1.0 };
            let up = match (tree.p2p, crosses_switch) {
                (false, _) => g * per_gpu,
                (true, true) => slot.min(g) * per_gpu,
                (true, false) => 0.0,
            };
            (own_s, up, if crosses_socket { slot.min(s) * per_gpu } else { 0.0 })
        }
    };
    let uplink_staged = tree.switch_uplink_gb_per_s * tree.host_staged_gb_per_s / cluster.intra.line_rate_gb_per_s;
    let uplink_s = uplink_bytes / (uplink_staged * GB);
    let socket_s = if crosses_socket { socket_bytes / (tree.socket_link_gb_per_s * GB) } else { 0.0 };
    own_s.max(uplink_s).max(socket_s)
}

fn bandwidth_time_s(cluster: &Cluster, t: &Transfer) -> f64 {
    let intra_s = intra_s(cluster, t);
    if t.level == LinkLevel::Intra {
        return intra_s;
    }
    let network_s = t.network_bytes_per_gpu(cluster.gpus_per_domain()) / (network_gb_per_s(cluster, t) * GB);
    intra_s.max(network_s)
}

/// Network bandwidth one GPU gets in this transfer when every GPU of its domain takes part: the
/// domain's NICs shared by its senders (a DGX node's 8 NICs; an NVL72 rack's 18 trays of 4).
pub fn network_gb_per_s(cluster: &Cluster, t: &Transfer) -> f64 {
    let per_node = t.network_senders_per_node.clamp(1, cluster.gpus_per_domain());
    let node_gb_per_s = cluster.nics_per_domain() * cluster.inter.nic_gb_per_s;
    let fair_share = node_gb_per_s / f64::from(per_node);
    match t.collective {
        // NCCL cannot aggregate NICs in an inter-node all-to-all or a point-to-point transfer.
        Collective::AllToAll | Collective::SendRecv => {
            fair_share.min(cluster.inter.alltoall_nics_per_gpu * cluster.inter.nic_gb_per_s)
        }
        // Ring collectives: NCCL runs one ring per NIC and only ring edges cross nodes, so the bus
        // bandwidth is the node's NICs together (DGX A100: 8 x 24 = 192 GB/s, as NVIDIA measured
        // in nccl.dgx_a100_multinode_allreduce_busbw).
        _ => node_gb_per_s,
    }
}

/// A transfer's load on each node's NICs: what the simulator shares out between groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkDemand {
    pub flows_per_node: u32,
    pub bytes_per_flow: f64,
    /// Most one flow can get (bytes/s): one NIC for all-to-all and point-to-point traffic, the
    /// node's NICs for ring collectives.
    pub cap_per_flow: f64,
    /// The rate one flow gets when only this transfer uses the node (bytes/s).
    pub isolated_rate: f64,
}

/// The simple protocol's parts of a transfer's isolated time: a latency, then an intra-node
/// bandwidth part and a network part side by side. On an idle cluster the transfer takes
/// `latency + max(intra, network bytes / isolated rate)`; [`time_s`] may be lower (a faster
/// protocol) or fitted (a calibrated profile), and the simulator scales the parts to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts {
    pub latency_s: f64,
    pub intra_s: f64,
    pub network: Option<NetworkDemand>,
}

impl Parts {
    pub fn isolated_s(&self) -> f64 {
        let network_s = self.network.map_or(0.0, |d| d.bytes_per_flow / d.isolated_rate);
        self.latency_s + self.intra_s.max(network_s)
    }
}

pub fn parts(cluster: &Cluster, t: &Transfer) -> Parts {
    let hw_us = match t.level {
        LinkLevel::Intra => cluster.intra.hw_latency_us_per_step,
        LinkLevel::Inter => cluster.inter.hw_latency_us_per_step,
    };
    let latency_s = (cluster.nccl.base_latency_us + hw_us * steps(t.collective, t.ranks)) * 1e-6;
    let intra_s = intra_s(cluster, t);
    let bytes = t.network_bytes_per_gpu(cluster.gpus_per_domain());
    let network = (t.level == LinkLevel::Inter && bytes > 0.0).then(|| {
        let isolated_rate = network_gb_per_s(cluster, t) * GB;
        match t.collective {
            Collective::AllToAll | Collective::SendRecv => NetworkDemand {
                flows_per_node: t.network_senders_per_node.clamp(1, cluster.gpus_per_domain()),
                bytes_per_flow: bytes,
                cap_per_flow: cluster.inter.alltoall_nics_per_gpu * cluster.inter.nic_gb_per_s * GB,
                isolated_rate,
            },
            // NCCL's rings cross each domain boundary on every NIC: one aggregate flow per domain.
            _ => NetworkDemand {
                flows_per_node: 1,
                bytes_per_flow: bytes,
                cap_per_flow: cluster.nics_per_domain() * cluster.inter.nic_gb_per_s * GB,
                isolated_rate,
            },
        }
    });
    Parts { latency_s, intra_s, network }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a100() -> Cluster {
        Cluster::resolve("dgx-a100-80g").unwrap()
    }

    #[test]
    fn large_all_to_all_inside_a_node_runs_at_p2p_bandwidth() {
        // 8 ranks, 256 MiB each: 7/8 of it leaves each GPU at the measured 195 GB/s send/recv rate,
        // 1.2044 ms, plus the simple protocol's 8.4 + 3.4 us.
        let t = Transfer::new(Collective::AllToAll, 8, 1, 268_435_456.0);
        let expected = 268_435_456.0 * 0.875 / 195e9 + 11.8e-6;
        assert!((time_s(&a100(), &t) - expected).abs() < 1e-12);
    }

    #[test]
    fn small_messages_take_the_low_latency_protocol() {
        // 8 KiB all-gather over 8 GPUs: simple 8.4 + 7 x 3.4 = 32.2 us + 7168 B / 230 GB/s;
        // LL: 6.6 + 7 x 0.6 = 10.8 us + 7168 B / (0.5 x 230 GB/s) = 10.86 us. LL wins.
        let t = Transfer::new(Collective::AllGather, 8, 1, 8192.0);
        let ll = 10.8e-6 + 8192.0 * 0.875 / (0.5 * 230e9);
        assert!((time_s(&a100(), &t) - ll).abs() < 1e-12);
    }

    #[test]
    fn each_message_of_a_transfer_pays_the_latency() {
        // 64 MiB sent between 2 GPUs of a node, in one message and in two: the simple protocol
        // (8.4 + 3.4 us) wins at both sizes, so the second message adds exactly its 11.8 us.
        let one = Transfer::new(Collective::SendRecv, 2, 1, 67_108_864.0);
        let expected = 67_108_864.0 / 195e9 + 11.8e-6;
        assert!((time_s(&a100(), &one) - expected).abs() < 1e-12);
        assert!((time_s(&a100(), &one.in_messages(2)) - (expected + 11.8e-6)).abs() < 1e-12);
    }

    /// A100 preset with one all-reduce fit across 2 nodes of 16 ranks at `latency` x and
    /// `bandwidth` x what the preset predicts for it.
    fn calibrated(latency: f64, bandwidth: f64) -> Cluster {
        let mut c = a100();
        let ar = Transfer::new(Collective::AllReduce, 16, 2, GB);
        // Preset: LL's 6.6 + 30 x 2.7 = 87.6 us; bus bandwidth min(230 intra, 8 x 24 network) = 192 GB/s.
        assert!((bandwidth_time_s(&c, &ar) - GB * 1.875 / (192.0 * GB)).abs() < 1e-15);
        c.calibration = Some(crate::cluster::Calibration {
            collectives: vec![CollectiveFit {
                op: Collective::AllReduce,
                level: LinkLevel::Inter,
                ranks: 16,
                nodes: Some(2),
                latency_us: 87.6 * latency,
                busbw_gb_per_s: 192.0 * bandwidth,
                saturation_bytes: 0.0,
                regimes: Vec::new(),
                points: 0,
                rms_log_residual: 0.0,
                max_rel_error: 0.0,
                provenance: "test".into(),
                measured: Vec::new(),
            }],
            ..Default::default()
        });
        c
    }

    #[test]
    fn a_fit_scales_every_collective_over_its_link() {
        let c = calibrated(2.0, 0.5);
        let preset = a100();
        // An all-gather across the same nodes: every protocol's latency doubled, its bandwidth halved.
        for bytes in [8.0, 1e5, 1e9] {
            let t = Transfer::new(Collective::AllGather, 16, 2, bytes);
            assert!((time_s(&c, &t) - model_time_s(&preset, &t, 2.0, 0.5)).abs() < 1e-15, "{bytes}");
        }
        let big = Transfer::new(Collective::ReduceScatter, 32, 4, 1e9);
        assert!(time_s(&c, &big) > 1.9 * time_s(&preset, &big));
        // Nothing inside a node was measured: intra-node prices stay the preset's.
        let intra = Transfer::new(Collective::AllGather, 8, 1, 1e9);
        assert_eq!(time_s(&c, &intra), time_s(&preset, &intra));
        assert_eq!(source(&c, Collective::AllGather, LinkLevel::Intra, 8), Source::Preset);
        // The fitted collective itself is priced by its fit.
        assert!(matches!(source(&c, Collective::AllReduce, LinkLevel::Inter, 16), Source::Fitted(_)));
        // A fit that matches the preset changes nothing.
        let same = calibrated(1.0, 1.0);
        let t = Transfer::new(Collective::AllToAll, 16, 2, 1e8);
        assert!((time_s(&same, &t) / time_s(&preset, &t) - 1.0).abs() < 1e-12);
    }

    fn l40s() -> Cluster {
        Cluster::resolve("l40s").unwrap()
    }

    #[test]
    fn a_pcie_all_to_all_is_priced_through_the_narrowest_shared_link() {
        // L40S: 2 GPUs per switch, 2 switches per socket, two sockets; GPU links at 23.8 GB/s
        // peer-to-peer under a switch, 17.4 GB/s staged through host memory (all traffic that
        // leaves a switch), uplinks at the staged 17.4 GB/s, the CPU interconnect at 10 GB/s.
        // 64 MiB per rank.
        let b = 67_108_864.0;
        let simple = (8.4 + 5.7) * 1e-6;
        // Two GPUs under one switch share nothing: each sends half its buffer peer-to-peer.
        let u2 = Transfer::new(Collective::AllToAll, 2, 1, b);
        assert!((time_s(&l40s(), &u2) - (simple + b * 0.5 / 23.8e9)).abs() < 1e-12);
        // Four GPUs of one socket: each switch's 2 GPUs stage 2 of 4 quarters across its uplink,
        // 2 x b x 2/4 = b, against b/4 peer-to-peer plus b/2 staged on each GPU's own link: the
        // uplink bounds it.
        let u4 = Transfer::new(Collective::AllToAll, 4, 1, b);
        assert!((time_s(&l40s(), &u4) - (simple + b / 17.4e9)).abs() < 1e-12);
        // All eight: a socket's 4 GPUs send half their buffers to the other socket, 4 x b / 2 =
        // 2b over the 10 GB/s CPU interconnect: 13.4 ms, 7.1x the flat fabric's 7/8 b / 23.8 GB/s.
        let u8 = Transfer::new(Collective::AllToAll, 8, 1, b);
        assert!((time_s(&l40s(), &u8) - (simple + 2.0 * b / 10e9)).abs() < 1e-12);
        let mut flat = l40s();
        flat.intra.pcie = None;
        assert!((time_s(&flat, &u8) - (simple + b * 0.875 / 23.8e9)).abs() < 1e-12);
        // Without peer-to-peer NCCL stages through host memory: under one switch both GPUs' sends
        // go up the uplink and come down again, 2 x b/2 = b per direction at the staged rate.
        let mut staged = l40s();
        staged.intra.pcie.as_mut().unwrap().p2p = false;
        assert!((time_s(&staged, &u2) - (simple + b / 17.4e9)).abs() < 1e-12);
    }

    #[test]
    fn ring_hops_under_one_switch_are_cheap_and_across_sockets_are_not() {
        // A ring of 2 slots of one GPU each under one switch: the block peer-to-peer at the GPU
        // link's 23.8 GB/s.
        let b = 16_777_216.0;
        let simple = (8.4 + 5.7) * 1e-6;
        let near = Transfer::new(Collective::SendRecv, 2, 1, b);
        assert!((time_s(&l40s(), &near) - (simple + b / 23.8e9)).abs() < 1e-12);
        // A ring of 2 slots of 4 GPUs (u4 x r2 over the node): each slot's 4 GPUs send across the
        // socket boundary at once, 4 b through the 10 GB/s CPU interconnect.
        let far = Transfer::new(Collective::SendRecv, 2, 1, b).with_network_senders(4).with_gpus_per_rank(4);
        assert!((time_s(&l40s(), &far) - (simple + 4.0 * b / 10e9)).abs() < 1e-12);
        // A ring all-gather over the node crosses the socket boundary once per direction: 7/8 b
        // per GPU, one flow, at 10 GB/s.
        let ag = Transfer::new(Collective::AllGather, 8, 1, b);
        let simple_ag = (8.4 + 7.0 * 5.7) * 1e-6;
        assert!((time_s(&l40s(), &ag) - (simple_ag + 0.875 * b / 10e9)).abs() < 1e-12);
        // A ring all-reduce over one socket's 4 GPUs leaves each switch, so NCCL stages its edges
        // through host memory: 2 x 3/4 b per GPU at the staged 17.4 GB/s, not the 23.8 GB/s of
        // peer-to-peer under a switch.
        let ar = Transfer::new(Collective::AllReduce, 4, 1, b);
        let simple_ar = (8.4 + 6.0 * 5.7) * 1e-6;
        assert!((time_s(&l40s(), &ar) - (simple_ar + 1.5 * b / 17.4e9)).abs() < 1e-12);
        let pair = Transfer::new(Collective::AllReduce, 2, 1, b);
        assert!((time_s(&l40s(), &pair) - ((8.4 + 2.0 * 5.7) * 1e-6 + b / 23.8e9)).abs() < 1e-12);
    }

    #[test]
    fn inter_node_all_to_all_gets_one_nic_per_gpu() {
        // 16 ranks on 2 DGX A100 nodes, 64 MiB each: half of it crosses the network, each GPU at
        // min(8 NICs x 24 / 8 GPUs, one NIC's 24 GB/s) = 24 GB/s: 1.398 ms, plus 8.4 + 14 us.
        let t = Transfer::new(Collective::AllToAll, 16, 2, 67_108_864.0);
        let expected = 67_108_864.0 * 0.5 / 24e9 + 22.4e-6;
        assert!((time_s(&a100(), &t) - expected).abs() < 1e-12);
    }
}
