//! Who this process is in a multi-GPU launch, and the rendezvous that hands every rank the NCCL
//! unique id. One process per GPU, started by Slurm (`srun`), Open MPI (`mpirun`) or torchrun
//! (or anything that sets torchrun's variables).
//!
//! The rendezvous is a small TCP exchange at MASTER_ADDR:MASTER_PORT: rank 0 listens, every other
//! rank connects (retrying while rank 0 starts) and says who it is; once all have arrived, rank 0
//! sends each the payload (the NCCL id). If some rank does not arrive in time, every rank that
//! did gets an error naming the ones missing, rather than hanging in NCCL's initialisation. The
//! connections stay open so that rank 0 can gather every rank's measurements at the end.

use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// torchrun's default rendezvous port.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    OpenMpi,
    Slurm,
    /// No launcher variables: a single process.
    Single,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK)",
            Launcher::OpenMpi => "Open MPI (OMPI_COMM_WORLD_*)",
            Launcher::Slurm => "Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID)",
            Launcher::Single => "single process",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: u32,
    pub world: u32,
    /// Index of this process among those on its node: which GPU it uses.
    pub local_rank: u32,
    /// Processes on this node, when the launcher says.
    pub local_world: Option<u32>,
    pub master_addr: String,
    pub master_port: u16,
}

/// The variables of each launcher: rank, world size, local rank, local world size.
const TORCHRUN: [&str; 4] = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"];
const OPENMPI: [&str; 4] = ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"];
const SLURM: [&str; 4] = ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"];

const LAUNCH_HINT: &str = "start one process per GPU with srun, mpirun or torchrun-style variables (docs/validate.md)";

impl Launch {
    pub fn from_env() -> Result<Launch> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the launch from variables (`get` returns a variable's value). Torchrun-style
    /// variables win over Open MPI's, which win over Slurm's: a user who sets RANK means it, and
    /// `mpirun` inside a Slurm allocation inherits the allocation's SLURM_PROCID.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        let present = |names: &[&str; 4]| names[..3].iter().any(|n| get(n).is_some());
        let (launcher, names) = if present(&TORCHRUN) {
            (Launcher::Torchrun, TORCHRUN)
        } else if present(&OPENMPI) {
            (Launcher::OpenMpi, OPENMPI)
        } else if present(&SLURM) {
            (Launcher::Slurm, SLURM)
        } else {
            return Ok(Launch {
                launcher: Launcher::Single,
                rank: 0,
                world: 1,
                local_rank: 0,
                local_world: Some(1),
                master_addr: "127.0.0.1".into(),
                master_port: DEFAULT_MASTER_PORT,
            });
        };
        let missing: Vec<&str> = names[..3].iter().copied().filter(|n| get(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(Error::invalid(
                format!("{} launch: {} set, but {} missing", launcher.name(), names[..3].iter().filter(|n| get(n).is_some()).copied().collect::<Vec<_>>().join(", "), missing.join(", ")),
                LAUNCH_HINT,
            ));
        }
        let number = |name: &str| -> Result<Option<u32>> {
            let Some(v) = get(name) else { return Ok(None) };
            // Slurm writes per-node task counts like "8(x2)"; the count before "(" is this node's.
            let digits = if launcher == Launcher::Slurm { v.split(['(', ',']).next().unwrap_or("") } else { v.as_str() };
            digits.trim().parse().map(Some).map_err(|_| Error::invalid(format!("{name}={v} is not a non-negative integer"), LAUNCH_HINT))
        };
        let rank = number(names[0])?.unwrap_or(0);
        let world = number(names[1])?.unwrap_or(0);
        let local_rank = number(names[2])?.unwrap_or(0);
        let local_world = number(names[3])?;
        if world == 0 || rank >= world {
            return Err(Error::invalid(format!("{}={rank} with {}={world}: a rank must be below the world size", names[0], names[1]), LAUNCH_HINT));
        }
        if let Some(lw) = local_world.filter(|&lw| local_rank >= lw || lw > world) {
            return Err(Error::invalid(
                format!("{}={local_rank} with {}={lw} (world {world}): inconsistent local ranks", names[2], names[3]),
                LAUNCH_HINT,
            ));
        }
        let (master_addr, master_port) = master(launcher, world, &get)?;
        Ok(Launch {
            launcher,
            rank,
            world,
            local_rank,
            local_world,
            master_addr,
            master_port,
        })
    }
}

/// MASTER_ADDR and MASTER_PORT, or what the launcher implies: under Slurm rank 0 runs on the
/// first node of the step, and the port is derived from the job id so that jobs sharing a node
/// do not collide.
fn master(launcher: Launcher, world: u32, get: &impl Fn(&str) -> Option<String>) -> Result<(String, u16)> {
    let port = match get("MASTER_PORT") {
        Some(p) => p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| Error::invalid(format!("MASTER_PORT={p} is not a TCP port"), "use a free port between 1024 and 65535"))?,
        None => match (launcher, get("SLURM_JOB_ID").and_then(|j| j.trim().parse::<u32>().ok())) {
            (Launcher::Slurm, Some(job)) => DEFAULT_MASTER_PORT + (job % 1000) as u16,
            _ => DEFAULT_MASTER_PORT,
        },
    };
    if let Some(addr) = get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
        return Ok((addr.trim().to_string(), port));
    }
    if world == 1 {
        return Ok(("127.0.0.1".into(), port));
    }
    match launcher {
        Launcher::Slurm => {
            let list = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"].iter().find_map(|n| get(n));
            let first = list.as_deref().and_then(first_host).ok_or_else(|| {
                Error::invalid("Slurm launch without MASTER_ADDR or SLURM_JOB_NODELIST", "export MASTER_ADDR=<rank 0's host> before srun")
            })?;
            Ok((first, port))
        }
        _ => Err(Error::invalid(
            format!("{} launch of {world} ranks without MASTER_ADDR", launcher.name()),
            "set MASTER_ADDR to rank 0's host (and MASTER_PORT), e.g. mpirun -x MASTER_ADDR=$(hostname) -x MASTER_PORT=29500 ...",
        )),
    }
}

/// The first host of a Slurm host list: `gpu[07-09,12],login1` is gpu07, `r[1-2]-n[3-4]` is r1-n3.
pub fn first_host(list: &str) -> Option<String> {
    let mut entry = String::new();
    let mut depth = 0;
    for c in list.trim().chars() {
        match c {
            ',' if depth == 0 => break,
            '[' => depth += 1,
            ']' => depth -= 1,
            _ => {}
        }
        entry.push(c);
    }
    let mut host = String::new();
    let mut rest = entry.as_str();
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']')? + open;
        host.push_str(&rest[..open]);
        let first = rest[open + 1..close].split(',').next()?.split('-').next()?;
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    (!host.is_empty()).then_some(host)
}

const MAGIC: &[u8; 4] = b"HSAP";
const PROTOCOL: u32 = 1;
const OK: u8 = 0;
const ABORT: u8 = 1;
/// Longest message a rank accepts (payloads and gathered measurements).
const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// An open rendezvous: rank 0 holds a connection to every other rank, the others one to rank 0.
pub struct Session {
    pub rank: u32,
    pub world: u32,
    /// Rank 0: the stream of rank `i` at `i - 1`.
    peers: Vec<TcpStream>,
    /// Other ranks: the stream to rank 0.
    root: Option<TcpStream>,
}

fn gpu_err(what: String, hint: &str) -> Error {
    Error::Gpu { what, hint: hint.into() }
}

fn io_err(context: &str, e: std::io::Error) -> Error {
    gpu_err(format!("rendezvous: {context}: {e}"), "check that the nodes reach each other over TCP and MASTER_ADDR/MASTER_PORT are right")
}

fn write_message(s: &mut TcpStream, status: u8, body: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(body.len() + 9);
    msg.push(status);
    msg.extend_from_slice(&(body.len() as u64).to_le_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg)
}

fn read_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..9].try_into().unwrap_or([0; 8]));
    if len > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(ErrorKind::InvalidData, format!("a message of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// A rank's greeting: who it is and what it runs (`fingerprint` of the plan and options, so that
/// ranks started with different plans stop here instead of deadlocking later).
fn hello(rank: u32, world: u32, fingerprint: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&PROTOCOL.to_le_bytes());
    h.extend_from_slice(&rank.to_le_bytes());
    h.extend_from_slice(&world.to_le_bytes());
    h.extend_from_slice(&fingerprint.to_le_bytes());
    h
}

fn parse_hello(h: &[u8; 24]) -> Option<(u32, u32, u32, u64)> {
    if &h[..4] != MAGIC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or([0; 4]));
    Some((word(4), word(8), word(12), u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8]))))
}

/// FNV-1a: a stable fingerprint of what the ranks run.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn list(ranks: &[u32]) -> String {
    ranks.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

impl Session {
    /// Runs the rendezvous for `launch`: rank 0 listens on every interface at MASTER_PORT and
    /// hands out `payload()` (called once everyone has arrived); the others connect to
    /// MASTER_ADDR:MASTER_PORT and return what rank 0 sent.
    pub fn open(launch: &Launch, fingerprint: u64, timeout: Duration, payload: impl FnOnce() -> Result<Vec<u8>>) -> Result<(Session, Vec<u8>)> {
        if launch.rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", launch.master_port))
                .map_err(|e| io_err(&format!("rank 0 cannot listen on port {}", launch.master_port), e))?;
            Session::serve(listener, launch.world, fingerprint, timeout, payload)
        } else {
            Session::join(&launch.master_addr, launch.master_port, launch.rank, launch.world, fingerprint, timeout)
        }
    }

    /// Rank 0's side on an already bound listener.
    pub fn serve(listener: TcpListener, world: u32, fingerprint: u64, timeout: Duration, payload: impl FnOnce() -> Result<Vec<u8>>) -> Result<(Session, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        listener.set_nonblocking(true).map_err(|e| io_err("listener", e))?;
        let mut arrived: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        // Ranks that connected, accepted or refused: once all have, waiting longer is pointless.
        let mut seen = vec![false; arrived.len()];
        let mut problems: Vec<String> = Vec::new();
        // Connections that never greeted (a port scan, a rank that died): reported only if the
        // rendezvous fails.
        let mut notes: Vec<String> = Vec::new();
        while seen.iter().any(|s| !s) && Instant::now() < deadline {
            let (mut stream, from) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(io_err("accepting a rank", e)),
            };
            let greet = (|| -> std::io::Result<[u8; 24]> {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
                let mut h = [0u8; 24];
                stream.read_exact(&mut h)?;
                Ok(h)
            })();
            let Ok(h) = greet else {
                notes.push(format!("a connection from {from} said nothing"));
                continue;
            };
            let refuse = |mut s: TcpStream, why: String| {
                let _ = write_message(&mut s, ABORT, why.as_bytes());
                why
            };
            let (rank, why) = match parse_hello(&h) {
                Some((PROTOCOL, rank, w, fp)) if w == world && rank >= 1 && rank < world => {
                    let why = if seen[rank as usize - 1] {
                        Some(format!("rank {rank} arrived twice (again from {from})"))
                    } else if fp != fingerprint {
                        Some(format!("rank {rank} ({from}) runs a different plan or options than rank 0"))
                    } else {
                        None
                    };
                    (Some(rank), why)
                }
                Some((PROTOCOL, rank, w, _)) => (None, Some(format!("rank {rank} ({from}) says the world has {w} ranks; rank 0 says {world}"))),
                _ => (None, Some(format!("{from} does not speak this rendezvous (another hsap-tune version?)"))),
            };
            match (rank, why) {
                (Some(r), None) => {
                    seen[r as usize - 1] = true;
                    arrived[r as usize - 1] = Some(stream);
                }
                (r, Some(why)) => {
                    if let Some(r) = r {
                        seen[r as usize - 1] = true;
                    }
                    problems.push(refuse(stream, why));
                }
                (None, None) => {}
            }
        }
        let missing: Vec<u32> = arrived.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i as u32 + 1).collect();
        if !missing.is_empty() || !problems.is_empty() {
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!("ranks {} did not arrive within {} s", list(&missing), timeout.as_secs_f64()));
            }
            why.extend(problems);
            why.extend(notes);
            let why = why.join("; ");
            for mut s in arrived.into_iter().flatten() {
                let _ = write_message(&mut s, ABORT, why.as_bytes());
            }
            return Err(gpu_err(format!("rendezvous at rank 0: {why}"), "check that every rank was started (srun/mpirun task counts, one per GPU) with the same plan and options; raise --timeout if nodes start slowly"));
        }
        let body = match payload() {
            Ok(b) => b,
            Err(e) => {
                for mut s in arrived.into_iter().flatten() {
                    let _ = write_message(&mut s, ABORT, format!("rank 0 failed: {e}").as_bytes());
                }
                return Err(e);
            }
        };
        let mut peers = Vec::with_capacity(arrived.len());
        for (i, s) in arrived.into_iter().enumerate() {
            let mut s = s.ok_or_else(|| crate::Error::internal(format!("rank {} vanished", i + 1)))?;
            write_message(&mut s, OK, &body).map_err(|e| io_err(&format!("sending to rank {}", i + 1), e))?;
            peers.push(s);
        }
        Ok((Session { rank: 0, world, peers, root: None }, body))
    }

    /// A non-zero rank's side: connect (retrying while rank 0 is not up yet), greet, wait.
    pub fn join(addr: &str, port: u16, rank: u32, world: u32, fingerprint: u64, timeout: Duration) -> Result<(Session, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let where_ = format!("{addr}:{port}");
        let mut last_error = String::from("no attempt");
        let mut stream = loop {
            if Instant::now() >= deadline {
                return Err(gpu_err(
                    format!("rendezvous: rank {rank} could not reach rank 0 at {where_} within {} s ({last_error})", timeout.as_secs_f64()),
                    "check MASTER_ADDR/MASTER_PORT, that rank 0 was started, and that the port is open between nodes",
                ));
            }
            let addrs: Vec<SocketAddr> = match (addr, port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last_error = format!("cannot resolve {addr}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let step = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(2)).max(Duration::from_millis(1));
            match addrs.iter().find_map(|a| TcpStream::connect_timeout(a, step).map_err(|e| last_error = e.to_string()).ok()) {
                Some(s) => break s,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.write_all(&hello(rank, world, fingerprint)).map_err(|e| io_err("greeting rank 0", e))?;
        // Rank 0 answers once everyone has arrived, or when its own wait ends.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        stream.set_read_timeout(Some(wait)).map_err(|e| io_err("socket", e))?;
        let (status, body) = read_message(&mut stream).map_err(|e| {
            gpu_err(
                format!("rendezvous: rank {rank} got no answer from rank 0 at {where_}: {e}"),
                "rank 0 may have failed; see its error",
            )
        })?;
        if status != OK {
            return Err(gpu_err(format!("rendezvous: rank 0 says: {}", String::from_utf8_lossy(&body)), "see rank 0's error"));
        }
        stream.set_read_timeout(None).map_err(|e| io_err("socket", e))?;
        Ok((Session { rank, world, peers: Vec::new(), root: Some(stream) }, body))
    }

    /// Collects every rank's `bytes` at rank 0 (in rank order); the other ranks get `None`.
    /// A rank that fails sends its error instead, and rank 0 reports it.
    pub fn gather(&mut self, mine: std::result::Result<Vec<u8>, String>, timeout: Duration) -> Result<Option<Vec<Vec<u8>>>> {
        if let Some(root) = &mut self.root {
            let (status, body) = match mine {
                Ok(b) => (OK, b),
                Err(e) => (ABORT, e.into_bytes()),
            };
            write_message(root, status, &body).map_err(|e| io_err("sending results to rank 0", e))?;
            return Ok(None);
        }
        let mut all = vec![mine.map_err(|e| gpu_err(format!("rank 0: {e}"), "see the message"))?];
        let mut failures = Vec::new();
        for (i, s) in self.peers.iter_mut().enumerate() {
            s.set_read_timeout(Some(timeout)).map_err(|e| io_err("socket", e))?;
            match read_message(s) {
                Ok((OK, body)) => all.push(body),
                Ok((_, body)) => failures.push(format!("rank {}: {}", i + 1, String::from_utf8_lossy(&body))),
                Err(e) => failures.push(format!("rank {} sent nothing: {e}", i + 1)),
            }
        }
        if !failures.is_empty() {
            return Err(gpu_err(failures.join("\n  "), "each rank's own error output says more"));
        }
        Ok(Some(all))
    }
}
