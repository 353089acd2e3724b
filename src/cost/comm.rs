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

/// Time of a transfer on an otherwise idle cluster.
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
    let hw_latency_us = match t.level {
        LinkLevel::Intra => cluster.intra.hw_latency_us_per_step,
        LinkLevel::Inter => cluster.inter.hw_latency_us_per_step,
    };
    let latency_s = (cluster.nccl.base_latency_us + hw_latency_us * steps(t.collective, t.ranks)) * 1e-6;
    latency_s + bandwidth_time_s(cluster, t)
}

fn bandwidth_time_s(cluster: &Cluster, t: &Transfer) -> f64 {
    let intra_s = t.bytes * t.collective.busbw_factor(t.ranks) / (cluster.intra.busbw_gb_per_s * GB);
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
