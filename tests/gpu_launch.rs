//! Launch detection from the launchers' variables, and the TCP rendezvous with real sockets on
//! localhost (one thread per rank), including ranks that never arrive.

use hsap::gpu::launch::{first_host, Launch, Launcher, Session, DEFAULT_MASTER_PORT};
use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

fn launch(vars: &[(&str, &str)]) -> hsap::Result<Launch> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Launch::from_vars(|k| map.get(k).cloned())
}

#[test]
fn torchrun_variables() {
    let l = launch(&[("RANK", "5"), ("WORLD_SIZE", "16"), ("LOCAL_RANK", "5"), ("LOCAL_WORLD_SIZE", "8"), ("MASTER_ADDR", "node01"), ("MASTER_PORT", "29400")]).unwrap();
    assert_eq!(
        l,
        Launch {
            launcher: Launcher::Torchrun,
            rank: 5,
            world: 16,
            local_rank: 5,
            local_world: Some(8),
            master_addr: "node01".into(),
            master_port: 29400
        }
    );
}

#[test]
fn open_mpi_variables_need_a_master_address() {
    let vars = [("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "8"), ("OMPI_COMM_WORLD_LOCAL_RANK", "3"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "4")];
    let err = launch(&vars).unwrap_err().to_string();
    assert!(err.contains("without MASTER_ADDR") && err.contains("mpirun -x MASTER_ADDR"), "{err}");
    let mut with = vars.to_vec();
    with.push(("MASTER_ADDR", "10.0.0.1"));
    let l = launch(&with).unwrap();
    assert_eq!((l.launcher, l.rank, l.world, l.local_rank, l.master_port), (Launcher::OpenMpi, 3, 8, 3, DEFAULT_MASTER_PORT));
}

#[test]
fn slurm_finds_rank_zero_on_the_first_node_of_the_step() {
    let l = launch(&[
        ("SLURM_PROCID", "9"),
        ("SLURM_NTASKS", "16"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS_PER_NODE", "8(x2)"),
        ("SLURM_JOB_ID", "123456"),
        ("SLURM_JOB_NODELIST", "gpu[07-08,12],login1"),
    ])
    .unwrap();
    assert_eq!((l.launcher, l.rank, l.world, l.local_rank, l.local_world), (Launcher::Slurm, 9, 16, 1, Some(8)));
    assert_eq!(l.master_addr, "gpu07");
    assert_eq!(l.master_port, DEFAULT_MASTER_PORT + 456);
    assert_eq!(first_host("r[1-2]-n[03-04]"), Some("r1-n03".into()));
    assert_eq!(first_host("node5"), Some("node5".into()));
}

#[test]
fn torchrun_variables_win_over_an_enclosing_allocation() {
    let l = launch(&[("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "2"), ("MASTER_ADDR", "a"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_LOCALID", "0")]).unwrap();
    assert_eq!((l.launcher, l.rank), (Launcher::Torchrun, 2));
}

#[test]
fn no_launcher_is_a_single_process() {
    let l = launch(&[]).unwrap();
    assert_eq!((l.launcher, l.rank, l.world), (Launcher::Single, 0, 1));
}

#[test]
fn inconsistent_or_missing_variables_are_errors_that_name_them() {
    let err = launch(&[("RANK", "1"), ("MASTER_ADDR", "x")]).unwrap_err().to_string();
    assert!(err.contains("WORLD_SIZE, LOCAL_RANK missing"), "{err}");
    let err = launch(&[("RANK", "4"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "x")]).unwrap_err().to_string();
    assert!(err.contains("RANK=4 with WORLD_SIZE=4"), "{err}");
    let err = launch(&[("RANK", "one"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "x")]).unwrap_err().to_string();
    assert!(err.contains("RANK=one"), "{err}");
    let err = launch(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "9"), ("SLURM_NTASKS_PER_NODE", "4")]).unwrap_err().to_string();
    assert!(err.contains("SLURM_LOCALID=9 with SLURM_NTASKS_PER_NODE=4"), "{err}");
    let err = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "99999")]).unwrap_err().to_string();
    assert!(err.contains("MASTER_PORT=99999"), "{err}");
    let err = launch(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1")]).unwrap_err().to_string();
    assert!(err.contains("SLURM_JOB_NODELIST"), "{err}");
}

/// Starts rank 0 on a free local port and ranks in `others` as threads.
fn rendezvous(world: u32, others: &[u32], fp: impl Fn(u32) -> u64, timeout: Duration) -> (hsap::Result<(Session, Vec<u8>)>, Vec<(u32, hsap::Result<(Session, Vec<u8>)>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handles: Vec<_> = others
        .iter()
        .map(|&r| {
            let f = fp(r);
            (r, std::thread::spawn(move || Session::join("127.0.0.1", port, r, world, f, timeout)))
        })
        .collect();
    let root = Session::serve(listener, world, fp(0), timeout, || Ok(b"the nccl unique id".to_vec()));
    let rest = handles.into_iter().map(|(r, h)| (r, h.join().unwrap())).collect();
    (root, rest)
}

#[test]
fn every_rank_gets_the_id_and_rank_zero_gathers_their_results() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let world = 4;
    let handles: Vec<_> = (1..world)
        .map(|r| {
            std::thread::spawn(move || {
                let (mut s, id) = Session::join("localhost", port, r, world, 42, Duration::from_secs(20)).unwrap();
                assert_eq!(id, b"id-bytes");
                assert!(s.gather(Ok(format!("rows of rank {r}").into_bytes()), Duration::from_secs(20)).unwrap().is_none());
            })
        })
        .collect();
    let (mut root, id) = Session::serve(listener, world, 42, Duration::from_secs(20), || Ok(b"id-bytes".to_vec())).unwrap();
    assert_eq!(id, b"id-bytes");
    let all = root.gather(Ok(b"rows of rank 0".to_vec()), Duration::from_secs(20)).unwrap().unwrap();
    let all: Vec<String> = all.into_iter().map(|b| String::from_utf8(b).unwrap()).collect();
    assert_eq!(all, (0..world).map(|r| format!("rows of rank {r}")).collect::<Vec<_>>());
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_rank_that_never_arrives_is_named_by_everyone_who_did() {
    let (root, rest) = rendezvous(4, &[1, 3], |_| 7, Duration::from_millis(1500));
    let err = root.err().unwrap().to_string();
    assert!(err.contains("ranks 2 did not arrive"), "{err}");
    for (r, res) in rest {
        let err = res.err().unwrap().to_string();
        assert!(err.contains("ranks 2 did not arrive"), "rank {r}: {err}");
    }
}

#[test]
fn without_rank_zero_a_rank_gives_up_naming_the_address() {
    // A port nobody listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = Session::join("127.0.0.1", port, 1, 2, 0, Duration::from_millis(800)).err().unwrap().to_string();
    assert!(err.contains(&format!("rank 1 could not reach rank 0 at 127.0.0.1:{port}")), "{err}");
}

#[test]
fn ranks_running_another_plan_are_refused() {
    let (root, rest) = rendezvous(3, &[1, 2], |r| if r == 2 { 8 } else { 7 }, Duration::from_secs(20));
    let err = root.err().unwrap().to_string();
    assert!(err.contains("rank 2") && err.contains("different plan"), "{err}");
    for (_, res) in rest {
        assert!(res.err().unwrap().to_string().contains("different plan"));
    }
}

#[test]
fn a_failing_rank_reports_through_the_gather() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = Session::join("127.0.0.1", port, 1, 2, 1, Duration::from_secs(20)).unwrap();
        s.gather(Err("CUDA error 700 in attn_fwd_varlen".into()), Duration::from_secs(20)).unwrap();
    });
    let (mut root, _) = Session::serve(listener, 2, 1, Duration::from_secs(20), || Ok(vec![])).unwrap();
    let err = root.gather(Ok(vec![]), Duration::from_secs(20)).err().unwrap().to_string();
    assert!(err.contains("rank 1: CUDA error 700"), "{err}");
    h.join().unwrap();
}

/// A duplicate is seen while rank 0 still waits (here for rank 2, which never comes); one that
/// connects after everyone arrived finds no listener and fails at its own timeout.
#[test]
fn a_rank_started_twice_is_refused() {
    let (root, rest) = rendezvous(3, &[1, 1], |_| 7, Duration::from_millis(2500));
    let err = root.err().unwrap().to_string();
    assert!(err.contains("rank 1 arrived twice") && err.contains("ranks 2 did not arrive"), "{err}");
    for (_, res) in rest {
        assert!(res.err().unwrap().to_string().contains("arrived twice"));
    }
}
