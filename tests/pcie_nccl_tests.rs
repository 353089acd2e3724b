//! The cost model's collectives on PCIe servers against published nccl-tests runs on PCIe GPUs
//! without NVLink (reference/pcie-nccl-tests/: the logs as published, and machines.csv: each
//! machine's PCIe tree as its topology output or README describes it, P2P, the source). Nothing
//! here was fitted to these logs. Run with `--no-capture` to see every row:
//! `cargo nextest run --release --no-capture --test pcie_nccl_tests`

use hsap::calibrate::nccl_tests::{self, NcclRun};
use hsap::cluster::{Cluster, PcieTree};
use hsap::cost::comm::{time_s, Transfer};
use hsap::formats::read_csv;
use hsap::stats::median;
use serde::Deserialize;
use std::path::Path;

const DIR: &str = "reference/pcie-nccl-tests";

/// Rows below this size are latency-bound (the protocols' latencies, not the tree); the tree is
/// what these logs check.
const MIN_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct Machine {
    file: String,
    gpu: String,
    gpus: u32,
    gpus_per_switch: u32,
    switches_per_socket: u32,
    /// Row of reference/hardware_facts.csv: the GPU's PCIe link, one direction.
    link: String,
    /// Row of reference/hardware_facts.csv: the CPU interconnect (empty: one socket).
    socket_link: String,
    p2p: bool,
}

fn machines() -> Vec<Machine> {
    let path = Path::new(DIR).join("machines.csv");
    read_csv::<Machine>(&path, &["file", "gpus", "gpus_per_switch", "switches_per_socket", "link", "p2p"], "reference/pcie-nccl-tests/README.md")
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// The machine as a cluster: the `l40s` preset's PCIe fabric and NCCL constants, with the node,
/// the link rate (peer-to-peer at the preset's practical share of it, staged through host memory
/// at the published staged share) and the tree of this machine; `socket_link` overrides the
/// machine's CPU interconnect row.
fn cluster(m: &Machine, socket_link: Option<&str>) -> Cluster {
    let facts = hsap::reference::tables().unwrap();
    let mut c = Cluster::resolve("l40s").unwrap();
    let practical = c.intra.busbw_gb_per_s / c.intra.line_rate_gb_per_s;
    let staged_share = facts.fact("nccl.pcie_host_staged_busbw_share").unwrap();
    let line = facts.fact(&m.link).unwrap();
    c.gpus_per_node = m.gpus;
    c.intra.line_rate_gb_per_s = line;
    c.intra.busbw_gb_per_s = line * practical;
    c.intra.p2p_gb_per_s = None;
    let per_socket = m.gpus_per_switch * m.switches_per_socket;
    assert_eq!(m.gpus % per_socket, 0, "{}: the tree's GPUs per socket divide the node's", m.file);
    let socket_link = match socket_link.unwrap_or(&m.socket_link) {
        "" => line,
        row => facts.fact(row).unwrap(),
    };
    c.intra.pcie = Some(PcieTree {
        gpus_per_switch: m.gpus_per_switch,
        switches_per_socket: m.switches_per_socket,
        switch_uplink_gb_per_s: line,
        socket_link_gb_per_s: socket_link,
        p2p: m.p2p,
        host_staged_gb_per_s: line * staged_share,
    });
    c
}

/// One measured row against the model.
struct Check {
    file: String,
    op: &'static str,
    ranks: u32,
    bytes: u64,
    measured_us: f64,
    predicted_us: f64,
}

impl Check {
    fn error(&self) -> f64 {
        self.predicted_us / self.measured_us - 1.0
    }
}

fn checks_of(m: &Machine, run: &NcclRun, socket_link: Option<&str>) -> Vec<Check> {
    let op = run.op.op().unwrap_or_else(|| panic!("{}: run {} names no op", m.file, run.index));
    let Some(collective) = op.collective() else { return Vec::new() };
    let ranks = run.ranks.as_ref().map_or(m.gpus, |r| r.value);
    assert_eq!(ranks, m.gpus, "{}: run {} has {ranks} ranks, machines.csv says {}", m.file, run.index, m.gpus);
    let c = cluster(m, socket_link);
    run.rows
        .iter()
        .filter(|r| r.size_bytes >= MIN_BYTES)
        .map(|r| {
            let t = Transfer::new(collective, ranks, 1, r.size_bytes as f64);
            Check {
                file: m.file.clone(),
                op: collective.name(),
                ranks,
                bytes: r.size_bytes,
                measured_us: r.best_time_us(),
                predicted_us: time_s(&c, &t) * 1e6,
            }
        })
        .collect()
}

/// Every row of every log, each machine described by machines.csv; `socket_link` prices the CPU
/// interconnect of the machines with two sockets by another row.
fn all_checks(socket_link: Option<&str>) -> Vec<Check> {
    let mut out = Vec::new();
    for m in machines() {
        let log = nccl_tests::read(&Path::new(DIR).join(&m.file)).unwrap();
        assert!(log.runs.iter().all(|r| r.device_names().iter().all(|d| d.contains(&m.gpu))), "{}: devices are {}", m.file, m.gpu);
        let socket_link = socket_link.filter(|_| !m.socket_link.is_empty());
        for run in &log.runs {
            out.extend(checks_of(&m, run, socket_link));
        }
    }
    out
}

fn median_abs(values: impl Iterator<Item = f64>) -> f64 {
    median(&values.map(f64::abs).collect::<Vec<_>>()).expect("rows")
}

#[test]
fn pcie_nccl_tests_predicted_against_measured() {
    let checks = all_checks(None);
    println!("file                                                      op          n      bytes  measured_us predicted_us  error");
    for c in &checks {
        println!(
            "{:<57} {:<11} {} {:>10} {:>12.1} {:>12.1} {:>+6.1}%",
            c.file, c.op, c.ranks, c.bytes, c.measured_us, c.predicted_us, 100.0 * c.error()
        );
    }
    let mut groups: Vec<(&str, &str)> = checks.iter().map(|c| (c.file.as_str(), c.op)).collect();
    groups.dedup();
    for (file, op) in &groups {
        let m = median_abs(checks.iter().filter(|c| c.file == *file && c.op == *op).map(Check::error));
        println!("{file} {op}: median |time error| {:.1}%", 100.0 * m);
    }
    let all = median_abs(checks.iter().map(Check::error));
    println!("rows {} (>= 1 MiB) over {} runs: median |time error| {:.1}%", checks.len(), groups.len(), 100.0 * all);
    // Every published run of a collective hsap prices is here: 2 all-reduce runs on L40S, and the
    // 2080 Ti's all-reduce, all-gather and all-to-all.
    assert_eq!(groups.len(), 5);
    assert!(all <= 0.25, "median |time error| {:.1}% over the PCIe nccl-tests rows exceeds 25%", 100.0 * all);
    // The 4-GPU L40S log states no CPU: machines.csv takes NCCL's Skylake figure (10 GB/s, as the
    // presets do), which its measured 15.4 GB/s across the sockets refutes as a bound on one ring
    // flow. Under NCCL's Sapphire Rapids figure instead (printed for comparison, not asserted):
    let srp = all_checks(Some("nccl.inter_cpu_bw.intel_srp"));
    let two_socket = median_abs(srp.iter().filter(|c| c.file.starts_with("l40s_4gpu")).map(Check::error));
    println!("with nccl.inter_cpu_bw.intel_srp: 4-GPU L40S median |time error| {:.1}%, all rows {:.1}%", 100.0 * two_socket, 100.0 * median_abs(srp.iter().map(Check::error)));
}
