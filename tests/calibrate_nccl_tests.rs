//! The nccl-tests parser on every real log in tests/data/nccl-tests (expectations from that
//! folder's README.md), and on broken, truncated and unusual synthetic logs.

use hsap::calibrate::nccl_tests::{self, Check, NcclLog, NcclOp, NcclRun, OpFinding, Step};
use std::path::Path;

const DATA: &str = "tests/data/nccl-tests";

fn read(file: &str) -> NcclLog {
    let path = Path::new(DATA).join(file);
    nccl_tests::read(&path).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn parse(text: &str) -> hsap::Result<NcclLog> {
    nccl_tests::parse(Path::new("synthetic.log"), text)
}

fn only_run(log: &NcclLog) -> &NcclRun {
    assert_eq!(log.runs.len(), 1, "{}: {} runs", log.path.display(), log.runs.len());
    &log.runs[0]
}

/// One row of the README's index, as the parser should read it.
struct Expect {
    file: &'static str,
    op: Option<NcclOp>,
    op_inferred: bool,
    rows: usize,
    first_bytes: u64,
    last_bytes: u64,
    peak_busbw: f64,
    ranks: Option<u32>,
    nodes: Option<u32>,
    has_root: bool,
    check: &'static str,
    footer: bool,
}

const EXPECT: [Expect; 9] = [
    Expect { file: "01_h100_a3mega_2node_allreduce.txt", op: Some(NcclOp::AllReduce), op_inferred: true, rows: 31, first_bytes: 8, last_bytes: 8_589_934_592, peak_busbw: 338.82, ranks: Some(16), nodes: Some(2), has_root: true, check: "#wrong", footer: true },
    Expect { file: "02_a100_coreweave_16node_allreduce_oldfmt.txt", op: Some(NcclOp::AllReduce), op_inferred: true, rows: 30, first_bytes: 4, last_bytes: 2_147_483_648, peak_busbw: 45.44, ranks: None, nodes: None, has_root: false, check: "error", footer: true },
    Expect { file: "05_a100_8gpu_sendrecv_truncated.txt", op: Some(NcclOp::SendRecv), op_inferred: false, rows: 4, first_bytes: 134_217_728, last_bytes: 1_073_741_824, peak_busbw: 195.56, ranks: Some(8), nodes: Some(1), has_root: true, check: "#wrong", footer: false },
    Expect { file: "06_a100_40gb_p4d_2node_efa_allreduce_tagged_oldfmt.txt", op: Some(NcclOp::AllReduce), op_inferred: true, rows: 30, first_bytes: 8, last_bytes: 4_294_967_296, peak_busbw: 43.81, ranks: Some(16), nodes: Some(2), has_root: false, check: "error", footer: true },
    Expect { file: "07_h100_2node_4gpu_roce_sendrecv_ncclinfo_linearstep.txt", op: Some(NcclOp::SendRecv), op_inferred: true, rows: 13, first_bytes: 1_073_741_824, last_bytes: 26_843_545_600, peak_busbw: 5.86, ranks: Some(8), nodes: Some(2), has_root: true, check: "#wrong", footer: true },
    Expect { file: "09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt", op: None, op_inferred: false, rows: 11, first_bytes: 8_388_608, last_bytes: 8_589_934_592, peak_busbw: 188.59, ranks: Some(16), nodes: None, has_root: true, check: "#wrong", footer: true },
    Expect { file: "15_h200_2node_allreduce_slurm_g8.txt", op: Some(NcclOp::AllReduce), op_inferred: true, rows: 11, first_bytes: 1_048_576, last_bytes: 1_073_741_824, peak_busbw: 267.77, ranks: Some(16), nodes: Some(2), has_root: true, check: "#wrong", footer: true },
    Expect { file: "16_h100_p5_1node_8gpu_allreduce_awsbatch_tagged_excerpt.txt", op: Some(NcclOp::AllReduce), op_inferred: true, rows: 32, first_bytes: 8, last_bytes: 17_179_869_184, peak_busbw: 483.35, ranks: Some(8), nodes: None, has_root: true, check: "#wrong", footer: true },
    Expect { file: "18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt", op: Some(NcclOp::AllReduce), op_inferred: true, rows: 30, first_bytes: 8, last_bytes: 4_294_967_296, peak_busbw: 188.70, ranks: Some(16), nodes: None, has_root: false, check: "error", footer: true },
];

#[test]
fn every_real_log_is_read_as_its_index_describes() {
    let mut seen: Vec<String> = std::fs::read_dir(DATA)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    seen.sort();
    let expected: Vec<&str> = EXPECT.iter().map(|e| e.file).collect();
    assert_eq!(seen, expected, "every log in {DATA} has an expectation here");

    for e in &EXPECT {
        let log = read(e.file);
        let run = only_run(&log);
        let what = e.file;
        assert_eq!(run.rows.len(), e.rows, "{what}: rows");
        assert_eq!(run.rows.first().unwrap().size_bytes, e.first_bytes, "{what}: first size");
        assert_eq!(run.rows.last().unwrap().size_bytes, e.last_bytes, "{what}: last size");
        assert_eq!(run.peak_busbw_gb_per_s(), e.peak_busbw, "{what}: peak busbw (README column)");
        assert_eq!(run.ranks.as_ref().map(|r| r.value), e.ranks, "{what}: ranks");
        assert_eq!(run.nodes.as_ref().map(|n| n.value), e.nodes, "{what}: nodes");
        let columns = run.columns.as_ref().unwrap();
        assert_eq!(columns.has_root, e.has_root, "{what}: root column");
        assert_eq!(columns.check.as_deref(), Some(e.check), "{what}: check column");
        match (&run.op, e.op) {
            (OpFinding::Known { op, inferred, .. }, Some(want)) => {
                assert_eq!((*op, *inferred), (want, e.op_inferred), "{what}: op");
            }
            (OpFinding::Ambiguous { .. }, None) => {}
            (other, want) => panic!("{what}: op {other:?}, expected {want:?}"),
        }
        // Every row has both timings, and times are positive.
        for r in &run.rows {
            assert!(r.out_of_place.is_some() && r.in_place.is_some(), "{what}: line {}", r.line);
            assert!(r.best_time_us() > 0.0);
        }
        // nccl-tests' footer averages busbw over every timing: matching it proves that no row
        // was lost or invented (the README calls 16 an excerpt, but its table is whole).
        assert_eq!(run.footer.is_some(), e.footer, "{what}: footer");
        if let Some(avg) = run.footer.as_ref().and_then(|f| f.avg_busbw_gb_per_s) {
            assert!((run.rows_avg_busbw_gb_per_s() - avg).abs() < 0.006, "{what}: rows' average busbw vs footer {avg}");
            assert!(!run.notes.iter().any(|n| n.contains("rows are missing")), "{what}: {:?}", run.notes);
        } else {
            assert!(run.notes.iter().any(|n| n.contains("no footer")), "{what}: {:?}", run.notes);
        }
    }
}

#[test]
fn headers_devices_and_nccl_info_are_read() {
    let run = only_run(&read("01_h100_a3mega_2node_allreduce.txt")).clone();
    let h = run.header.as_ref().unwrap();
    assert_eq!((h.n_threads, h.n_gpus, h.min_bytes, h.max_bytes), (1, 1, Some(8), Some(8_589_934_592)));
    assert_eq!((h.step, h.warmup_iters, h.iters, h.agg_iters, h.validation, h.graph), (Some(Step::Factor(2)), Some(5), Some(20), Some(1), Some(1), Some(0)));
    assert_eq!(run.devices.len(), 16);
    assert_eq!(run.hosts(), vec!["ztan-mig-235z", "ztan-mig-gq73"]);
    assert_eq!(run.device_names(), vec!["NVIDIA H100 80GB HBM3"]);
    assert_eq!(run.devices[9].bus_id, "0000:05:00");
    assert_eq!((run.devices[9].rank, run.devices[9].group, run.devices[9].pid, run.devices[9].device), (9, Some(0), 6734, 1));
    assert_eq!(run.gpus_per_node.as_ref().map(|g| g.value), Some(8));
    assert_eq!(run.rows[0].out_of_place.unwrap().check, Check::Wrong(0));
    assert_eq!(run.rows[30].in_place.unwrap().time_us, 47743.0);

    // Old format: `Rank N Pid P` without Group; mpirun tags; NCCL INFO lines counted.
    let run = only_run(&read("06_a100_40gb_p4d_2node_efa_allreduce_tagged_oldfmt.txt")).clone();
    assert_eq!(run.devices[13].group, None);
    assert_eq!(run.devices[13].pid, 38);
    assert_eq!(run.device_names(), vec!["A100-SXM4-40GB"]);
    assert_eq!(run.nccl_info.lines, 529);
    assert_eq!(run.nccl_info.version.as_deref(), Some("2.9.9+cuda11.2"));
    assert_eq!(run.rows[0].out_of_place.unwrap().check, Check::Error(2e-7));
    assert_eq!(run.rows[0].root, None);

    // Linear steps, NCCL INFO between the column header and the rows, nRanks/nNodes in INFO.
    let run = only_run(&read("07_h100_2node_4gpu_roce_sendrecv_ncclinfo_linearstep.txt")).clone();
    let h = run.header.as_ref().unwrap();
    assert_eq!((h.n_gpus, h.step), (4, Some(Step::Bytes(2_147_483_648))));
    assert_eq!((run.nccl_info.ranks, run.nccl_info.nodes, run.nccl_info.local_ranks), (Some(8), Some(2), Some(4)));
    assert_eq!(run.nccl_info.lines, 101);
    assert_eq!(run.gpus_per_node.as_ref().map(|g| g.value), Some(4));
    assert_eq!(run.rows[1].size_bytes - run.rows[0].size_bytes, 2_147_483_648);
    assert_eq!(run.rows[0].in_place.unwrap().check, Check::NotChecked);

    // One process driving 8 GPUs: 16 device lines from 2 processes.
    let run = only_run(&read("15_h200_2node_allreduce_slurm_g8.txt")).clone();
    assert_eq!(run.header.as_ref().unwrap().n_gpus, 8);
    assert_eq!(run.devices.iter().filter(|d| d.pid == 7012).count(), 8);
}

#[test]
fn what_a_log_lacks_is_said() {
    // 02: the device list is cut; the rank count is only bounded by busbw/algbw.
    let run = only_run(&read("02_a100_coreweave_16node_allreduce_oldfmt.txt")).clone();
    assert!(run.devices_cut);
    assert_eq!(run.devices.len(), 5);
    assert_eq!(run.rank_range, Some((126, 128)));
    assert!(run.notes.iter().any(|n| n.contains("device list cut short")), "{:?}", run.notes);
    assert!(run.notes.iter().any(|n| n.contains("between 126 and 128")), "{:?}", run.notes);

    // 05: the command line names the test and the GPUs; there is no header, no devices, no footer.
    let run = only_run(&read("05_a100_8gpu_sendrecv_truncated.txt")).clone();
    let command = run.command.as_ref().unwrap();
    assert_eq!((command.op, command.gpus, command.launcher.as_deref()), (NcclOp::SendRecv, 8, None));
    assert!(run.ranks.as_ref().unwrap().from.contains("command line"));
    for lack in ["no `nThread", "no device lines", "no footer"] {
        assert!(run.notes.iter().any(|n| n.contains(lack)), "{lack}: {:?}", run.notes);
    }

    // 09: all_gather and alltoall print the same table; size/count still gives 16 ranks.
    let run = only_run(&read("09_h100_a3mega_2node_allgather_tcpxo_hash_stripped.txt")).clone();
    match &run.op {
        OpFinding::Ambiguous { candidates, .. } => assert_eq!(candidates, &[NcclOp::AllGather, NcclOp::AllToAll]),
        other => panic!("{other:?}"),
    }
    assert!(run.ranks.as_ref().unwrap().from.contains("size/count"));
    assert!(run.notes.iter().any(|n| n.contains("no device lines")));
    assert_eq!(run.header.as_ref().unwrap().iters, Some(200));

    // 16 and 18: ranks from the bus factor (1.75 = 2x7/8, 1.875 = 2x15/16).
    for (file, ranks) in [("16_h100_p5_1node_8gpu_allreduce_awsbatch_tagged_excerpt.txt", 8), ("18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt", 16)] {
        let run = only_run(&read(file)).clone();
        let r = run.ranks.as_ref().unwrap();
        assert_eq!(r.value, ranks);
        assert!(r.from.contains("busbw/algbw"), "{file}: {}", r.from);
        assert!(run.notes.iter().any(|n| n.contains("node count is not listed")), "{file}: {:?}", run.notes);
    }
}

/// A log in the newest format (version line, `Collective test starting`, a timestamp column),
/// with two runs: an alltoall and an all_gather, 4 ranks on 2 hosts.
const MODERN_TWO_RUNS: &str = "\
# nccl-tests version 2.17.6 nccl-headers=22803 nccl-library=22803
# Collective test starting: alltoall_perf
# nThread 1 nGpus 1 minBytes 1048576 maxBytes 4194304 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0 unalign: 0
#
# Using devices
#  Rank  0 Group  0 Pid   1000 on      nodeA device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   1001 on      nodeA device  1 [0000:2a:00] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid   2000 on      nodeB device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid   2001 on      nodeB device  1 [0000:2a:00] NVIDIA H100 80GB HBM3
#
#                                                              out-of-place                       in-place
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong           timestamp
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)         %Y-%m-%d %H:%M:%S
     1048576         65536     float    none      -1    50.00   20.97   15.73      0    49.00   21.40   16.05    N/A  2025-01-01 10:00:00
     2097152        131072     float    none      -1    80.00   26.21   19.66      0    79.00   26.55   19.91    N/A  2025-01-01 10:00:01
     4194304        262144     float    none      -1   140.00   29.96   22.47      0   139.00   30.18   22.63    N/A  2025-01-01 10:00:02
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 19.4083
#
# Collective test concluded: alltoall_perf
# nccl-tests version 2.17.6 nccl-headers=22803 nccl-library=22803
# Collective test starting: all_gather_perf
# nThread 1 nGpus 1 minBytes 1048576 maxBytes 2097152 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0 unalign: 0
#
# Using devices
#  Rank  0 Group  0 Pid   1000 on      nodeA device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   1001 on      nodeA device  1 [0000:2a:00] NVIDIA H100 80GB HBM3
#  Rank  2 Group  0 Pid   2000 on      nodeB device  0 [0000:18:00] NVIDIA H100 80GB HBM3
#  Rank  3 Group  0 Pid   2001 on      nodeB device  1 [0000:2a:00] NVIDIA H100 80GB HBM3
#
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
     1048576         65536     float    none      -1    40.00   26.21   19.66      0    40.00   26.21   19.66      0
     2097152        131072     float    none      -1    60.00   34.95   26.21      0    60.00   34.95   26.21      0
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 22.935
#
# Collective test concluded: all_gather_perf
";

#[test]
fn several_runs_in_the_newest_format() {
    let log = parse(MODERN_TWO_RUNS).unwrap();
    assert_eq!(log.runs.len(), 2);
    let (a, b) = (&log.runs[0], &log.runs[1]);
    assert_eq!(a.op, OpFinding::Known { op: NcclOp::AllToAll, from: "`Collective test starting: alltoall_perf` (line 2)".into(), inferred: false });
    assert_eq!(b.op.op(), Some(NcclOp::AllGather));
    assert_eq!(a.nccl_tests_version.as_deref(), Some("2.17.6 nccl-headers=22803 nccl-library=22803"));
    assert_eq!((a.rows.len(), b.rows.len()), (3, 2));
    assert_eq!((a.first_line, a.last_line), (1, 20));
    assert_eq!(b.first_line, 21);
    for run in [a, b] {
        assert_eq!(run.ranks.as_ref().map(|r| r.value), Some(4));
        assert_eq!(run.nodes.as_ref().map(|r| r.value), Some(2));
        assert_eq!(run.gpus_per_node.as_ref().map(|r| r.value), Some(2));
        assert!(run.notes.is_empty(), "{:?}", run.notes);
    }
    // The timestamp column is not mistaken for data; in-place N/A is read as unchecked.
    assert_eq!(a.rows[2].in_place.unwrap().time_us, 139.0);
    assert_eq!(a.rows[2].in_place.unwrap().check, Check::NotChecked);
    assert_eq!(a.rows[2].out_of_place.unwrap().check, Check::Wrong(0));
}

#[test]
fn logs_cut_and_pasted_together_split_into_runs() {
    let one = std::fs::read_to_string(Path::new(DATA).join("01_h100_a3mega_2node_allreduce.txt")).unwrap();
    let two = std::fs::read_to_string(Path::new(DATA).join("15_h200_2node_allreduce_slurm_g8.txt")).unwrap();
    let log = parse(&format!("{one}\nsome shell prompt $ ls\n{two}")).unwrap();
    assert_eq!(log.runs.len(), 2);
    assert_eq!((log.runs[0].rows.len(), log.runs[1].rows.len()), (31, 11));
    assert_eq!(log.runs[1].device_names(), vec!["NVIDIA H200"]);
    assert_eq!(log.runs[1].index, 2);

    // Two tables without any header between them: the second column header starts a run.
    let table = "#  size count type redop root time algbw busbw #wrong time algbw busbw #wrong\n\
                 1048576 262144 float sum -1 28.56 36.71 64.24 0 28.37 36.96 64.68 0\n";
    let log = parse(&format!("{table}{table}")).unwrap();
    assert_eq!(log.runs.len(), 2);
}

#[test]
fn a_header_less_old_table_is_read_by_its_width() {
    let text = std::fs::read_to_string(Path::new(DATA).join("18_a100_dgx_2node_8xhdr_k8s_allreduce_oldfmt.txt")).unwrap();
    let rows_only: String = text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    let log = parse(&rows_only).unwrap();
    let run = only_run(&log);
    assert_eq!(run.rows.len(), 30);
    assert_eq!(run.columns.as_ref().unwrap().line, 0);
    assert!(!run.columns.as_ref().unwrap().has_root);
    assert!(run.notes.iter().any(|n| n.contains("no column header")), "{:?}", run.notes);
    assert_eq!(run.ranks.as_ref().map(|r| r.value), Some(16));
}

#[test]
fn old_alltoall_with_an_empty_redop() {
    // Old alltoall printed nothing in the redop column, so rows are one column short.
    let text = "\
#       size         count    type   redop     time   algbw   busbw  error     time   algbw   busbw  error
     1048576         65536   float             50.00   20.97   15.73  0e+00    49.00   21.40   16.05  0e+00
     2097152        131072   float             80.00   26.21   19.66  0e+00    79.00   26.55   19.91  0e+00
";
    let run = only_run(&parse(text).unwrap()).clone();
    assert_eq!(run.rows[1].redop, "");
    assert_eq!(run.rows[1].out_of_place.unwrap().time_us, 80.0);
    assert_eq!(run.ranks.as_ref().map(|r| r.value), Some(4));
    assert!(matches!(run.op, OpFinding::Ambiguous { .. }), "{:?}", run.op);
}

#[test]
fn per_iteration_columns_are_skipped() {
    let text = "\
#       size         count      type   redop    root     time   algbw   busbw  #wrong    i_min    i_max    i_p99    i_cv%     time   algbw   busbw  #wrong    i_min    i_max    i_p99    i_cv%
     1048576        262144     float     sum      -1    28.56   36.71   64.24       0    27.10    30.20    30.00     2.10    28.37   36.96   64.68       0    27.00    29.90    29.80     2.00
";
    let run = only_run(&parse(text).unwrap()).clone();
    let r = &run.rows[0];
    assert_eq!((r.out_of_place.unwrap().time_us, r.in_place.unwrap().time_us), (28.56, 28.37));
    assert_eq!(r.in_place.unwrap().busbw_gb_per_s, 64.68);
    assert_eq!(run.op.op(), Some(NcclOp::AllReduce));
}

#[test]
fn several_series_in_one_table_use_the_first() {
    let text = "\
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
     1048576        262144     float     sum      -1    28.56   36.71   64.24      0    28.37   36.96   64.68      0
     2097152        524288     float     sum      -1    43.45   48.27   84.47      0    43.39   48.34   84.59      0
     1048576        524288      half     sum      -1    30.00   34.95   61.17      0    30.00   34.95   61.17      0
";
    let run = only_run(&parse(text).unwrap()).clone();
    assert_eq!(run.rows.len(), 3);
    assert_eq!(run.first_series().len(), 2);
    assert!(run.notes.iter().any(|n| n.contains("several type/redop series")), "{:?}", run.notes);
}

#[test]
fn a_stated_test_that_does_not_match_its_table_is_noted() {
    let text = "\
# Collective test starting: all_reduce_perf
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
     1048576         65536     float    none      -1    50.00   20.97   15.73      0    49.00   21.40   16.05      0
";
    let run = only_run(&parse(text).unwrap()).clone();
    assert_eq!(run.op.op(), Some(NcclOp::AllReduce));
    assert!(run.notes.iter().any(|n| n.contains("does not look like all_reduce")), "{:?}", run.notes);
}

// ---- broken input ----

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn a_file_that_is_not_a_log_is_an_error() {
    let err = error(&std::fs::read_to_string("Cargo.toml").unwrap());
    assert!(err.starts_with("synthetic.log: not an nccl-tests log"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    let err = error("");
    assert!(err.contains("not an nccl-tests log"), "{err}");
    // Lines that start with numbers but are not rows are not a table either.
    let err = error("2024 10 01 backup done\n3 files copied\n");
    assert!(err.contains("not an nccl-tests log"), "{err}");
}

#[test]
fn a_binary_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.bin");
    std::fs::write(&path, [0x7f, b'E', b'L', b'F', 0, 0, 1]).unwrap();
    let err = nccl_tests::read(&path).unwrap_err().to_string();
    assert!(err.contains("core.bin") && err.contains("binary file"), "{err}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = nccl_tests::read(Path::new("tests/data/nccl-tests/no_such_log.txt")).unwrap_err().to_string();
    assert!(err.contains("no_such_log.txt"), "{err}");
}

#[test]
fn a_header_without_rows_is_an_error_at_the_header() {
    let text = "\
# nThread 1 nGpus 8 minBytes 8 maxBytes 1024 step: 2(factor) warmup iters: 5 iters: 20 validation: 1
#
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
# Out of bounds values : 0 OK
";
    let err = error(text);
    assert!(err.starts_with("synthetic.log:3: the result table has a column header but no rows"), "{err}");
}

#[test]
fn a_run_that_printed_no_table_is_an_error() {
    let text = "\
# nThread 1 nGpus 8 minBytes 8 maxBytes 1024 step: 2(factor) warmup iters: 5 iters: 20 validation: 1
#
# Using devices
#  Rank  0 Group  0 Pid   7012 on host device  0 [0000:68:00] NVIDIA H200
node1: Test NCCL failure common.cu:1005 'unhandled system error'
";
    let err = error(text);
    assert!(err.starts_with("synthetic.log:1: the run starting here printed no result table"), "{err}");
}

#[test]
fn garbled_rows_are_errors_with_their_line() {
    let good = std::fs::read_to_string(Path::new(DATA).join("01_h100_a3mega_2node_allreduce.txt")).unwrap();
    // A time that is not a number, in the middle of the table (the 64 KiB row, line 37).
    let bad: String = good
        .lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == 37 { l.replace("159.4", "15x.4") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let err = error(&bad);
    assert!(err.starts_with("synthetic.log:37: result row: time '15x.4'"), "{err}");

    // A row missing columns in the middle of the table.
    let bad: String = good
        .lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == 31 { "     131072         32768     float     sum      -1    159.3" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let err = error(&bad);
    assert!(err.starts_with("synthetic.log:31: garbled result row: 6 columns where the table has 13"), "{err}");
    assert!(err.contains("column header at line 22"), "{err}");

    // A device line that is not one.
    let bad = good.replace("#  Rank  3 Group  0 Pid   6902 on", "#  Rank  x Group  0 Pid   6902 on");
    let err = error(&bad);
    assert!(err.starts_with("synthetic.log:7: device line not understood"), "{err}");

    // A run header with a non-number.
    let bad = good.replace("minBytes 8 ", "minBytes 8k ");
    let err = error(&bad);
    assert!(err.starts_with("synthetic.log:1: run header: minBytes = '8k'"), "{err}");
}

#[test]
fn a_run_cut_off_mid_row_keeps_its_complete_rows() {
    let good = std::fs::read_to_string(Path::new(DATA).join("05_a100_8gpu_sendrecv_truncated.txt")).unwrap();
    // The process died while printing the next row.
    let cut = format!("{}\n  2147483648     536870912     float     sum      -1   11013.", good.trim_end());
    let run = only_run(&parse(&cut).unwrap()).clone();
    assert_eq!(run.rows.len(), 4);
    assert_eq!(run.cut_row, Some(10));
    assert!(run.notes.iter().any(|n| n.contains("line 10") && n.contains("cut off")), "{:?}", run.notes);

    // Cut after the out-of-place half: the row is kept with one timing.
    let half = format!("{}\n  2147483648     536870912     float     sum      -1  11013.0  195.00  195.00      0", good.trim_end());
    let run = only_run(&parse(&half).unwrap()).clone();
    assert_eq!(run.rows.len(), 5);
    assert!(run.rows[4].in_place.is_none());
    assert!(run.notes.iter().any(|n| n.contains("single timing")), "{:?}", run.notes);

    // But a broken row followed by more rows is garbled, not cut off.
    let lines: Vec<&str> = good.lines().collect();
    let broken = format!("{}\n  1234  5678  float\n{}", lines[..6].join("\n"), lines[6..].join("\n"));
    let err = error(&broken);
    assert!(err.starts_with("synthetic.log:7: garbled result row"), "{err}");
}

#[test]
fn mpirun_tags_of_every_rank_and_stream_are_stripped() {
    // Tags from other ranks and stderr are stripped alike.
    let text = "\
[1,3]<stderr>:some warning
[1,0]<stdout>:#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
[1,0]<stdout>:     1048576        262144     float     sum      -1    28.56   36.71   64.24      0    28.37   36.96   64.68      0
[1,0]<stdout>:     2097152        524288     float     sum      -1    43.45   48.27   84.47      0    43.39   48.34   84.59      0
";
    let run = only_run(&parse(text).unwrap()).clone();
    assert_eq!(run.rows.len(), 2);
    assert_eq!(run.ranks.as_ref().map(|r| r.value), Some(8));
}

#[test]
fn launcher_labels_and_timestamps_leave_the_log_as_it_was() {
    // `srun --label` puts `0: ` before every line of rank 0, pdsh a host, kubectl --timestamps a
    // date: each log reads as the same runs as the plain log.
    for file in ["15_h200_2node_allreduce_slurm_g8.txt", "01_h100_a3mega_2node_allreduce.txt", "07_h100_2node_4gpu_roce_sendrecv_ncclinfo_linearstep.txt"] {
        let plain = read(file);
        let text = std::fs::read_to_string(Path::new(DATA).join(file)).unwrap();
        for prefix in ["0: ", "node17: 0: ", "2024-05-01T12:00:00.123456Z ", "[2024-05-01 12:00:00] 3: "] {
            let labelled: String = text.lines().map(|l| format!("{prefix}{l}\n")).collect();
            let log = parse(&labelled).unwrap_or_else(|e| panic!("{file} with '{prefix}': {e}"));
            assert_eq!(log.runs, plain.runs, "{file} with '{prefix}'");
        }
    }
}
