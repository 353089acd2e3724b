//! NCCL collectives priced by message size: a latency term and a bandwidth term per link level.

use crate::cluster::{Cluster, Collective, LinkLevel, GB};
use serde::{Deserialize, Serialize};

/// One collective as a group issues it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub collective: Collective,
    pub level: LinkLevel,
    /// Ranks taking part.
    pub ranks: u32,
    /// Nodes the ranks span.
    pub nodes: u32,
    /// nccl-tests `size` semantics: bytes in each rank's buffer (all-gather: the gathered output;
    /// all-to-all: what each rank sends in total; send/recv: the block sent).
    pub bytes: f64,
    /// GPUs of one node that send over the network at the same time in this transfer: every rank
    /// on the node for all-to-all and ring collectives, only the ranks at the node's edge of a ring
    /// of send/recv.
    pub network_senders_per_node: u32,
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
        }
    }

    /// The same transfer with `senders` GPUs per node sharing the node's NICs.
    pub fn with_network_senders(mut self, senders: u32) -> Transfer {
        self.network_senders_per_node = senders.max(1);
        self
    }

    /// Bytes each GPU moves over the network (0 inside a node): the share of its traffic whose peer
    /// is on another node.
    pub fn network_bytes_per_gpu(&self, gpus_per_node: u32) -> f64 {
        if self.level == LinkLevel::Intra {
            return 0.0;
        }
        let n = f64::from(self.ranks);
        let per_node = (n / f64::from(self.nodes)).min(f64::from(gpus_per_node));
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

/// Time of a transfer on an otherwise idle cluster: NCCL's latency-bandwidth model per protocol
/// (simple, LL, LL128; NCCL picks the fastest for the size, as its tuner does), or the cluster's
/// calibrated fit for the collective and link level.
pub fn time_s(cluster: &Cluster, t: &Transfer) -> f64 {
    if t.ranks <= 1 || t.bytes <= 0.0 {
        return 0.0;
    }
    if let Some(fit) = cluster
        .calibration
        .as_ref()
        .and_then(|c| c.collectives.iter().find(|f| f.op == t.collective && f.level == t.level))
    {
        return fit.time_s(t.bytes, t.ranks);
    }
    let steps = steps(t.collective, t.ranks);
    let bandwidth_s = bandwidth_time_s(cluster, t);
    protocols(cluster, t.level)
        .map(|(base_us, hw_us, efficiency)| (base_us + hw_us * steps) * 1e-6 + bandwidth_s / efficiency)
        .fold(f64::INFINITY, f64::min)
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

fn bandwidth_time_s(cluster: &Cluster, t: &Transfer) -> f64 {
    let intra_s = t.bytes * t.collective.busbw_factor(t.ranks) / (intra_gb_per_s(cluster, t.collective) * GB);
    if t.level == LinkLevel::Intra {
        return intra_s;
    }
    let network_s = t.network_bytes_per_gpu(cluster.gpus_per_node) / (network_gb_per_s(cluster, t) * GB);
    intra_s.max(network_s)
}

/// Network bandwidth one GPU gets in this transfer when every GPU of its node takes part.
pub fn network_gb_per_s(cluster: &Cluster, t: &Transfer) -> f64 {
    let per_node = t.network_senders_per_node.clamp(1, cluster.gpus_per_node);
    let node_gb_per_s = f64::from(cluster.inter.nics_per_node) * cluster.inter.nic_gb_per_s;
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
    fn inter_node_all_to_all_gets_one_nic_per_gpu() {
        // 16 ranks on 2 DGX A100 nodes, 64 MiB each: half of it crosses the network, each GPU at
        // min(8 NICs x 24 / 8 GPUs, one NIC's 24 GB/s) = 24 GB/s: 1.398 ms, plus 8.4 + 14 us.
        let t = Transfer::new(Collective::AllToAll, 16, 2, 67_108_864.0);
        let expected = 67_108_864.0 * 0.5 / 24e9 + 22.4e-6;
        assert!((time_s(&a100(), &t) - expected).abs() < 1e-12);
    }
}
