//! The CUDA executor: runs a plan's per-rank schedules on GPUs with cudarc (CUDA driver, NVRTC,
//! cuBLAS, NCCL), op for op as [`super::schedule`] lists them, timing every op, phase,
//! micro-batch and step with CUDA events; and the microbenchmarks `calibrate --run` uses.
//!
//! Nothing here runs without a GPU. Every entry point first checks that libcuda, libnvrtc,
//! libcublas and libnccl can be loaded (cudarc panics on first use otherwise), and every CUDA,
//! cuBLAS and NCCL return code becomes an `Error::Gpu` naming the call. Before timing, the
//! attention kernels are checked against their CPU mirror on a small packed batch.
//!
//! Buffers are filled with random values once (never zeros) and reused by every layer; streams
//! are joined at the start and end of every block; an op waits for its waits' end events.

use super::attention::{self, HeadMap, Tiling};
use super::kernels::{compile_ptx, ATTENTION, ELEMENTWISE};
use super::launch::{fingerprint, Launch, Session};
use super::schedule::{A2aDir, Attn, AttnDims, Buf, MetaRef, OpKind, Phase, Schedule, Stream, Tensor, BF16_BYTES, F32_BYTES};
use super::varlen::{GroupVarlen, VarlenMeta};
use crate::formats::measurements::{self, MeasuredKind, Measurement};
use crate::cluster::{Cluster, Collective};
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::plan::Plan;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nccl::sys as nccl;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How `validate` runs a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub repeats: u32,
    pub warmup: u32,
    pub timeout: Duration,
    /// Recorded in every measurement row's `source`.
    pub source: String,
    pub out: PathBuf,
}

/// Whether libcuda (the NVIDIA driver's CUDA library) can be loaded; cudarc panics on first use
/// otherwise.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The error for a machine without the NVIDIA driver, saying how to run on GPUs instead.
pub fn missing_driver() -> Error {
    Error::Gpu {
        what: "libcuda.so (the CUDA library of the NVIDIA driver) cannot be loaded: this machine has no NVIDIA GPU driver".into(),
        hint: "run validate on GPU nodes, one process per GPU, e.g.\n    srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 hsap-tune validate --plan plan.json\n    mpirun -np 16 --npernode 8 -x MASTER_ADDR=node01 -x MASTER_PORT=29500 hsap-tune validate --plan plan.json\n  (the same launch runs `hsap-tune calibrate --run`; docs/validate.md); `validate --dry-run` prints every rank's schedule here without a GPU".into(),
    }
}

/// Every library the executor loads, checked before any of them is called.
/// Fails with a clear error, never a panic, when the CUDA driver, NVRTC, cuBLAS or NCCL cannot be
/// loaded: cudarc panics on first use of a missing library.
pub fn check_libraries() -> Result<()> {
    if !driver_present() {
        return Err(missing_driver());
    }
    // SAFETY: each only tries to dlopen its library.
    let present = unsafe {
        [
            ("libnvrtc.so (CUDA's run-time compiler)", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas.so", cudarc::cublas::sys::is_culib_present()),
            ("libnccl.so", cudarc::nccl::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Gpu {
        what: format!("{} cannot be loaded", missing.join(", ")),
        hint: "load the CUDA toolkit and NCCL (e.g. `module load cuda nccl`) or add their lib directories to LD_LIBRARY_PATH; \
               NCCL is looked up as libnccl.so: where only libnccl.so.2 exists (runtime packages, the nvidia-nccl-cu12 wheel), \
               link it as libnccl.so in a directory on LD_LIBRARY_PATH"
            .into(),
    })
}

/// Turns a cudarc error into an `Error::Gpu` naming what was being done.
pub(super) fn fail<E: std::fmt::Debug>(what: impl std::fmt::Display) -> impl FnOnce(E) -> Error {
    move |e| Error::Gpu {
        what: format!("{what}: {e:?}"),
        hint: "a CUDA, cuBLAS or NCCL call failed; NCCL_DEBUG=WARN and CUDA_LAUNCH_BLOCKING=1 say more".into(),
    }
}

fn nccl_check(r: nccl::ncclResult_t, what: impl std::fmt::Display) -> Result<()> {
    match r {
        nccl::ncclResult_t::ncclSuccess => Ok(()),
        other => Err(fail(what)(other)),
    }
}

/// A kernel argument.
enum Arg {
    Ptr(u64),
    U32(u32),
    F32(f32),
    I32(i32),
}

/// One process's GPU: context, the schedule's streams, cuBLAS and the compiled kernels.
struct Gpu {
    ctx: Arc<CudaContext>,
    streams: [Arc<CudaStream>; 4],
    blas: cudarc::cublas::CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    /// Allocations kept alive (addresses are used raw).
    memory: Vec<CudaSlice<u8>>,
    head_dim: u32,
}

/// Threads per block of the element-wise kernels.
const ELEMENTWISE_THREADS: u32 = 256;

impl Gpu {
    fn new(local_rank: u32, head_dim: u32) -> Result<Gpu> {
        let count = CudaContext::device_count().map_err(fail("counting GPUs"))?;
        if local_rank as i32 >= count {
            return Err(Error::Gpu {
                what: format!("local rank {local_rank} but this node has {count} GPUs"),
                hint: "start at most one process per GPU on each node".into(),
            });
        }
        let ctx = CudaContext::new(local_rank as usize).map_err(fail(format!("opening GPU {local_rank}")))?;
        // The schedule orders its streams itself with events; cudarc's own tracking would add
        // waits the schedule does not have.
        // SAFETY: no slice exists yet; every later use is ordered by the schedule's waits.
        unsafe { ctx.disable_event_tracking() };
        let stream = || ctx.new_stream().map_err(fail("creating a stream"));
        let streams = [stream()?, stream()?, stream()?, stream()?];
        let blas = cudarc::cublas::CudaBlas::new(streams[0].clone()).map_err(fail("creating a cuBLAS handle"))?;
        let (major, minor) = ctx.compute_capability().map_err(fail("reading the compute capability"))?;
        // NVRTC takes the architecture as a 'static string; one per process.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let mut functions = HashMap::new();
        for file in [ATTENTION, ELEMENTWISE] {
            let module = ctx.load_module(compile_ptx(&file, head_dim, &Tiling::default(), arch)?).map_err(fail(format!("loading {}", file.path)))?;
            for &name in file.functions {
                functions.insert(name, module.load_function(name).map_err(fail(format!("loading kernel {name}")))?);
            }
        }
        Ok(Gpu {
            ctx,
            streams,
            blas,
            functions,
            memory: Vec::new(),
            head_dim,
        })
    }

    fn stream(&self, s: Stream) -> &Arc<CudaStream> {
        &self.streams[Stream::ALL.iter().position(|&x| x == s).unwrap_or(0)]
    }

    /// `bytes` of device memory filled with random values (bf16 or f32), never zeros.
    fn alloc(&mut self, bytes: u64, f32_values: bool, seed: u64) -> Result<u64> {
        let bytes = bytes.max(16);
        let stream = self.streams[0].clone();
        // SAFETY: the memory is filled right below, before anything reads it.
        let slice = unsafe { stream.alloc::<u8>(bytes as usize) }.map_err(fail(format!("allocating {bytes} bytes")))?;
        let (ptr, _) = slice.device_ptr(&stream);
        self.memory.push(slice);
        let (name, n) = if f32_values { ("fill_random_f32", bytes / F32_BYTES) } else { ("fill_random_bf16", bytes / BF16_BYTES) };
        self.elementwise(Stream::Compute, name, n, &[Arg::Ptr(ptr), Arg::Ptr(n), Arg::Ptr(seed), Arg::F32(1.0)])?;
        Ok(ptr)
    }

    /// Copies 32-bit words (metadata, or pairs of bf16 values) to a new allocation.
    fn upload(&mut self, values: &[u32]) -> Result<u64> {
        let stream = self.streams[0].clone();
        let bytes: Vec<u8> = if values.is_empty() { vec![0; 4] } else { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let slice = stream.clone_htod(&bytes).map_err(fail("copying to the GPU"))?;
        let (ptr, _) = slice.device_ptr(&stream);
        self.memory.push(slice);
        Ok(ptr)
    }

    /// How many allocations exist, to release the ones made after with [`Gpu::release`].
    fn mark(&self) -> usize {
        self.memory.len()
    }

    fn release(&mut self, mark: usize) -> Result<()> {
        self.synchronize()?;
        self.memory.truncate(mark);
        Ok(())
    }

    fn launch(&self, name: &str, stream: Stream, grid: (u32, u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        let f = self.functions.get(name).ok_or_else(|| fail(format!("kernel {name}"))("not loaded"))?;
        let stream = self.stream(stream);
        let mut b = stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::U32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature in kernels/*.cu, and every pointer
        // is an allocation of this context large enough for the schedule's shapes.
        unsafe { b.launch(cfg) }.map_err(fail(format!("launching {name}")))?;
        Ok(())
    }

    /// A grid-stride element-wise kernel over `n` elements.
    fn elementwise(&self, stream: Stream, name: &str, n: u64, args: &[Arg]) -> Result<()> {
        let blocks = n.div_ceil(u64::from(ELEMENTWISE_THREADS)).clamp(1, 65_535) as u32;
        self.launch(name, stream, (blocks, 1, 1), ELEMENTWISE_THREADS, args)
    }

    fn event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(fail("creating an event"))
    }

    fn record(&self, e: &CudaEvent, s: Stream) -> Result<()> {
        e.record(self.stream(s)).map_err(fail("recording an event"))
    }

    fn wait(&self, s: Stream, e: &CudaEvent) -> Result<()> {
        self.stream(s).wait(e).map_err(fail("waiting for an event"))
    }

    /// Row-major `y[m, n] = x[m, k] w[k, n]` in bf16 with f32 accumulation (cuBLAS is
    /// column-major: this is `y^T = w^T x^T`).
    fn gemm(&self, m: u64, n: u64, k: u64, x: u64, w: u64, y: u64) -> Result<()> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
        let dim = |v: u64| i32::try_from(v).map_err(|_| fail("GEMM")(format!("dimension {v} exceeds cuBLAS's int")));
        let (m, n, k) = (dim(m)?, dim(n)?, dim(k)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: x, w and y are device allocations of at least m*k, k*n and m*n bf16 values.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_N,
                cublasOperation_t::CUBLAS_OP_N,
                n,
                m,
                k,
                (&alpha as *const f32).cast(),
                w as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                n,
                x as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                k,
                (&beta as *const f32).cast(),
                y as *mut std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                n,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(fail(format!("cuBLAS GEMM {m}x{n}x{k}")))
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.synchronize().map_err(fail("synchronizing the GPU"))
    }
}

/// CUDA's limit on a grid's y dimension: the segments of the attention kernels' buffers.
const MAX_GRID_Y: usize = 65_535;

fn check_grid(m: &VarlenMeta) -> Result<()> {
    if m.segments() > MAX_GRID_Y {
        return Err(Error::Gpu {
            what: format!("an attention buffer of {} segments exceeds CUDA's grid limit of {MAX_GRID_Y}", m.segments()),
            hint: "pack fewer documents per group in the plan".into(),
        });
    }
    Ok(())
}

/// A buffer's metadata on the GPU.
struct DevMeta {
    cu: u64,
    len: u64,
    doc: u64,
    pos: u64,
    rows: u32,
    segs: u32,
    max_len: u32,
}

impl DevMeta {
    /// The four metadata pointers, in the order every attention kernel takes them.
    fn ptrs(&self) -> [Arg; 4] {
        [Arg::Ptr(self.cu), Arg::Ptr(self.len), Arg::Ptr(self.doc), Arg::Ptr(self.pos)]
    }
}

/// The head mapping, in the order every attention kernel takes it.
fn head_args(h: &HeadMap) -> [Arg; 5] {
    [Arg::U32(h.q_heads), Arg::U32(h.kv_heads), Arg::U32(h.q_head0), Arg::U32(h.kv_head0), Arg::U32(h.group)]
}

impl DevMeta {
    fn upload(gpu: &mut Gpu, m: &VarlenMeta) -> Result<DevMeta> {
        check_grid(m)?;
        Ok(DevMeta {
            cu: gpu.upload(&m.cu_seqlens_padded)?,
            len: gpu.upload(&m.seqlens)?,
            doc: gpu.upload(&m.docs)?,
            pos: gpu.upload(&m.pos)?,
            rows: m.rows,
            segs: m.segments() as u32,
            max_len: m.max_seqlen(),
        })
    }
}

impl Gpu {
    /// The forward kernel over `q` against `k`/`v`, merged into `o`/`lse`.
    #[allow(clippy::too_many_arguments)]
    fn attn_fwd(&self, h: &HeadMap, qm: &DevMeta, km: &DevMeta, q: u64, k: u64, v: u64, o: u64, lse: u64, first: bool) -> Result<()> {
        if qm.segs == 0 || qm.max_len == 0 {
            return Ok(());
        }
        let grid = (qm.max_len.div_ceil(attention::BLOCK_M), qm.segs, h.q_heads);
        let mut args = vec![Arg::Ptr(q), Arg::Ptr(k), Arg::Ptr(v), Arg::Ptr(o), Arg::Ptr(lse)];
        args.extend(qm.ptrs());
        args.push(Arg::U32(qm.rows));
        args.extend(km.ptrs());
        args.push(Arg::U32(km.segs));
        args.extend(head_args(h));
        args.extend([Arg::F32(1.0 / (self.head_dim as f32).sqrt()), Arg::I32(i32::from(first))]);
        self.launch("attn_fwd_varlen", Stream::Compute, grid, attention::BLOCK_M * attention::THREADS_PER_ROW, &args)
    }

    /// The backward's dQ and dK/dV kernels.
    #[allow(clippy::too_many_arguments)]
    fn attn_bwd(&self, h: &HeadMap, qm: &DevMeta, km: &DevMeta, x: [u64; 3], g: [u64; 3], dq: u64, dkv: [u64; 2], first: bool, dkv_accumulate: bool) -> Result<()> {
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let threads = attention::BLOCK_M * attention::THREADS_PER_ROW;
        let [q, k, v] = x;
        let [d_o, lse, delta] = g;
        if qm.segs > 0 && qm.max_len > 0 {
            let mut args = vec![Arg::Ptr(q), Arg::Ptr(k), Arg::Ptr(v), Arg::Ptr(d_o), Arg::Ptr(lse), Arg::Ptr(delta), Arg::Ptr(dq)];
            args.extend(qm.ptrs());
            args.push(Arg::U32(qm.rows));
            args.extend(km.ptrs());
            args.push(Arg::U32(km.segs));
            args.extend(head_args(h));
            args.extend([Arg::F32(scale), Arg::I32(i32::from(!first))]);
            self.launch("attn_bwd_dq", Stream::Compute, (qm.max_len.div_ceil(attention::BLOCK_M), qm.segs, h.q_heads), threads, &args)?;
        }
        if km.segs > 0 && km.max_len > 0 {
            let mut args = vec![
                Arg::Ptr(q),
                Arg::Ptr(k),
                Arg::Ptr(v),
                Arg::Ptr(d_o),
                Arg::Ptr(lse),
                Arg::Ptr(delta),
                Arg::Ptr(dkv[0]),
                Arg::Ptr(dkv[1]),
            ];
            args.extend(qm.ptrs());
            args.extend([Arg::U32(qm.rows), Arg::U32(qm.segs)]);
            args.extend(km.ptrs());
            args.extend(head_args(h));
            args.extend([Arg::F32(scale), Arg::I32(i32::from(dkv_accumulate))]);
            self.launch("attn_bwd_dkdv", Stream::Compute, (km.max_len.div_ceil(attention::BLOCK_M), km.segs, h.kv_heads), threads, &args)?;
        }
        Ok(())
    }

    fn preprocess(&self, d_o: u64, o: u64, delta: u64, rows: u32, heads: u32) -> Result<()> {
        let n = u64::from(rows) * u64::from(heads);
        let blocks = n.div_ceil(u64::from(ELEMENTWISE_THREADS)).max(1) as u32;
        self.launch(
            "attn_bwd_preprocess",
            Stream::Compute,
            (blocks, 1, 1),
            ELEMENTWISE_THREADS,
            &[Arg::Ptr(d_o), Arg::Ptr(o), Arg::Ptr(delta), Arg::U32(rows), Arg::U32(heads)],
        )
    }
}

/// The shapes of one rank's buffers in one micro-batch.
#[derive(Debug, Clone)]
struct Geometry {
    shard: u64,
    slot: u64,
    block: u64,
    ring: u64,
    heads: HeadMap,
    dims: AttnDims,
    /// Key/value heads of every Ulysses peer.
    peer_kv: Vec<u64>,
}

impl Geometry {
    fn new(gv: &GroupVarlen, dims: AttnDims, local_rank: u32) -> Geometry {
        let u = gv.shape.ulysses;
        Geometry {
            shard: u64::from(gv.shard_rows),
            slot: u64::from(gv.slot_rows()),
            block: u64::from(gv.block_rows),
            ring: u64::from(gv.shape.ring),
            heads: HeadMap::ulysses(dims.heads, dims.kv_heads, dims.head_dim, u, local_rank % u),
            dims,
            peer_kv: (0..u).map(|i| u64::from(HeadMap::ulysses(dims.heads, dims.kv_heads, dims.head_dim, u, i).kv_heads)).collect(),
        }
    }

    /// (rows, heads, bytes per element, halves) of a buffer.
    fn shape(&self, b: Buf) -> (u64, u64, u64, u64) {
        let (h, hk) = (u64::from(self.dims.heads), u64::from(self.dims.kv_heads));
        let (hq, nkv) = (u64::from(self.heads.q_heads), u64::from(self.heads.kv_heads));
        let (elem, halves) = (if b.is_f32() { F32_BYTES } else { BF16_BYTES }, if b.is_pair() { 2 } else { 1 });
        let (rows, heads) = match b {
            Buf::Q | Buf::O | Buf::DO | Buf::DQ => (self.shard, h),
            Buf::Kv | Buf::DKv => (self.shard, hk),
            Buf::DKvRecv => (self.shard, self.peer_kv.iter().sum()),
            Buf::Qh | Buf::DOh | Buf::Oacc | Buf::Oh | Buf::DQh | Buf::DQhb => (self.slot, hq),
            Buf::Lse | Buf::Delta => (self.slot, hq),
            Buf::Kvh | Buf::DKvh | Buf::DKvhb => (self.slot, nkv),
            Buf::Ring(_) | Buf::Outer(_) | Buf::DkvScratch | Buf::DkvTravel(_) | Buf::OuterScratch | Buf::OuterTravel(_) => (self.block, nkv),
            Buf::Gathered | Buf::DKvGathered => (self.slot * self.ring, nkv),
        };
        let dim = if matches!(b, Buf::Lse | Buf::Delta) { 1 } else { u64::from(self.dims.head_dim) };
        (rows, heads * dim, elem, halves)
    }

    fn bytes(&self, b: Buf) -> u64 {
        let (rows, width, elem, halves) = self.shape(b);
        rows * width * elem * halves
    }

    /// Bytes of the first `rows` rows of one half of a buffer.
    fn half_bytes(&self, b: Buf, rows: u32) -> u64 {
        let (_, width, elem, _) = self.shape(b);
        u64::from(rows) * width * elem
    }

    /// Addresses of the two halves of a pair buffer at `base`.
    fn halves(&self, b: Buf, base: u64) -> [u64; 2] {
        let (rows, width, elem, _) = self.shape(b);
        [base, base + rows * width * elem]
    }
}


/// An NCCL communicator, destroyed on drop.
struct Comm {
    raw: nccl::ncclComm_t,
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by NCCL and is destroyed once; errors while
        // tearing down cannot be reported further.
        let _ = unsafe { cudarc::nccl::result::comm_destroy(self.raw) };
    }
}

/// NCCL's "not in any new communicator" colour for ncclCommSplit.
const NCCL_SPLIT_NOCOLOR: i32 = -1;

impl Comm {
    fn init(world: u32, rank: u32, id: &[u8]) -> Result<Comm> {
        let mut internal = [0 as std::ffi::c_char; 128];
        if id.len() != internal.len() {
            return Err(fail("the NCCL id from rank 0")(format!("{} bytes instead of 128", id.len())));
        }
        for (d, &s) in internal.iter_mut().zip(id) {
            *d = s as std::ffi::c_char;
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` receives a new communicator; the id came from ncclGetUniqueId on rank 0.
        unsafe { cudarc::nccl::result::comm_init_rank(&mut raw, world as i32, nccl::ncclUniqueId { internal }, rank as i32) }
            .map_err(|e| fail("ncclCommInitRank")(e.0))?;
        Ok(Comm { raw })
    }

    /// A communicator of the ranks that pass the same `color` (every rank of `self` calls this),
    /// ordered by `key`; `None` for `NCCL_SPLIT_NOCOLOR`.
    fn split(&self, color: i32, key: u32) -> Result<Option<Comm>> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: every rank of `self` calls this in the same order; a null config is NCCL's default.
        unsafe { cudarc::nccl::result::comm_split(self.raw, color, key as i32, &mut raw, std::ptr::null_mut()) }.map_err(|e| fail("ncclCommSplit")(e.0))?;
        Ok((!raw.is_null()).then_some(Comm { raw }))
    }
}

fn nccl_id() -> Result<Vec<u8>> {
    let id = cudarc::nccl::result::get_uniqueid().map_err(|e| fail("ncclGetUniqueId")(e.0))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn group<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    nccl_check(unsafe { nccl::ncclGroupStart() }, "ncclGroupStart")?;
    let r = f();
    let end = nccl_check(unsafe { nccl::ncclGroupEnd() }, "ncclGroupEnd");
    let r = r?;
    end.map(|_| r)
}

/// Point-to-point transfers in bytes (the data type does not matter to NCCL's send/recv).
fn send(comm: &Comm, stream: &CudaStream, ptr: u64, bytes: u64, peer: u32) -> Result<()> {
    // SAFETY: `ptr` holds `bytes` bytes on this rank's GPU; inside an NCCL group.
    let r = unsafe { nccl::ncclSend(ptr as *const _, bytes as usize, nccl::ncclDataType_t::ncclUint8, peer as i32, comm.raw, stream.cu_stream() as _) };
    nccl_check(r, format!("ncclSend of {bytes} bytes to rank {peer}"))
}

fn recv(comm: &Comm, stream: &CudaStream, ptr: u64, bytes: u64, peer: u32) -> Result<()> {
    // SAFETY: `ptr` has room for `bytes` bytes; inside an NCCL group.
    let r = unsafe { nccl::ncclRecv(ptr as *mut _, bytes as usize, nccl::ncclDataType_t::ncclUint8, peer as i32, comm.raw, stream.cu_stream() as _) };
    nccl_check(r, format!("ncclRecv of {bytes} bytes from rank {peer}"))
}

/// The communicators of one rank: world duplicates for each stream (so that concurrent streams
/// never interleave on one communicator), one for the gradient all-reduce, and per micro-batch
/// the ring groups that all-gather.
struct Comms {
    compute: Comm,
    ring: Comm,
    outer: Comm,
    grads: Comm,
    /// (schedule, micro-batch) -> this rank's ring-group communicator.
    gather: HashMap<(usize, usize), Comm>,
}

impl Comms {
    fn init(launch: &Launch, id: &[u8], schedules: &[Schedule]) -> Result<Comms> {
        let compute = Comm::init(launch.world, launch.rank, id)?;
        let dup = |c: &Comm| c.split(0, launch.rank).and_then(|c| c.ok_or_else(|| fail("ncclCommSplit")("no communicator")));
        let (ring, outer, grads) = (dup(&compute)?, dup(&compute)?, dup(&compute)?);
        let mut gather = HashMap::new();
        for (si, s) in schedules.iter().enumerate() {
            for mb in &s.microbatches {
                if !mb.groups.iter().any(|g| g.shape.scheme == crate::scheme::Scheme::Allgather && g.shape.ring > 1) {
                    continue;
                }
                // Every rank takes part in the split; ranks of an all-gather group get a colour per
                // (group, Ulysses index) and are ordered by slot.
                let rs = &s.ranks[launch.rank as usize];
                let mem = rs.membership[mb.index];
                let g = &mb.groups[mem.group];
                let (color, key) = if g.shape.scheme == crate::scheme::Scheme::Allgather {
                    ((mem.group as u32 * 1024 + mem.local_rank % g.shape.ulysses) as i32, mem.local_rank / g.shape.ulysses)
                } else {
                    (NCCL_SPLIT_NOCOLOR, 0)
                };
                if let Some(c) = compute.split(color, key)? {
                    gather.insert((si, mb.index), c);
                }
            }
        }
        Ok(Comms {
            compute,
            ring,
            outer,
            grads,
            gather,
        })
    }

    fn for_stream(&self, s: Stream) -> &Comm {
        match s {
            Stream::Compute => &self.compute,
            Stream::Ring => &self.ring,
            Stream::Outer => &self.outer,
            Stream::Data => &self.grads,
        }
    }
}

/// Largest GEMM operands of the schedules, for one shared workspace.
fn gemm_workspace(schedules: &[Schedule]) -> (u64, u64, u64) {
    let mut w = (1, 1, 1);
    for s in schedules {
        for rs in &s.ranks {
            for b in &rs.blocks {
                for op in &b.ops {
                    if let OpKind::Gemm { m, n, k, .. } = op.kind {
                        w = (w.0.max(m * k), w.1.max(k * n), w.2.max(m * n));
                    }
                }
            }
        }
    }
    w
}

/// Timings of one schedule on this rank, per repetition.
#[derive(Default)]
struct Samples {
    /// (block, op) -> durations of every call.
    ops: HashMap<(usize, usize), Vec<f64>>,
    blocks: HashMap<usize, Vec<f64>>,
    microbatches: HashMap<usize, Vec<f64>>,
    step: Vec<f64>,
}

/// The median of an op's timings (crate::stats); 0 s for one no repetition timed.
fn median(v: &[f64]) -> f64 {
    crate::stats::median(v).unwrap_or(0.0)
}

/// Most bytes one copy of a memory-bound op moves (its workspace is the gradient buckets').
const MEMORY_CHUNK_BYTES: u64 = 256 << 20;

/// Bytes per copy of a memory-bound op of `bytes` (read and written: half of them copied).
fn memory_chunk(bytes: u64) -> u64 {
    (bytes / 2).clamp(1, MEMORY_CHUNK_BYTES)
}

/// A data-parallel collective's call for a bucket of `n` bytes (nccl-tests' size: an
/// all-gather's output, a reduce-scatter's input, an all-reduce's buffer) over `ranks` ranks:
/// (bytes sent, bf16 elements NCCL is given (per rank for gathers and scatters), bytes received).
fn dp_elements(collective: Collective, n: u64, ranks: u64) -> (u64, usize, u64) {
    let share = n / ranks / BF16_BYTES * BF16_BYTES;
    match collective {
        Collective::AllGather => (share, (share / BF16_BYTES) as usize, share * ranks),
        Collective::ReduceScatter => (share * ranks, (share / BF16_BYTES) as usize, share),
        _ => (n, (n / BF16_BYTES) as usize, n),
    }
}

/// Bytes a Ulysses all-to-all sends to and receives from each peer (in peer order).
fn a2a_chunks(geo: &Geometry, tensor: Tensor, dir: A2aDir) -> Vec<(u64, u64)> {
    let row = geo.shard * u64::from(geo.dims.head_dim) * BF16_BYTES;
    let (hq, nkv) = (u64::from(geo.heads.q_heads), u64::from(geo.heads.kv_heads));
    geo.peer_kv
        .iter()
        .map(|&peer_kv| match (dir, tensor.half()) {
            (_, None) => (row * hq, row * hq),
            (A2aDir::ToHeads, Some(_)) => (row * peer_kv, row * nkv),
            (_, Some(_)) => (row * nkv, row * peer_kv),
        })
        .collect()
}

/// One rank running its schedules.
struct Executor<'a> {
    gpu: Gpu,
    comms: Comms,
    launch: &'a Launch,
    bufs: HashMap<Buf, u64>,
    gemm: (u64, u64, u64),
    grads: (u64, u64),
    grad_bucket: u64,
}

impl<'a> Executor<'a> {
    fn new(mut gpu: Gpu, comms: Comms, launch: &'a Launch, schedules: &[Schedule]) -> Result<Executor<'a>> {
        // Every buffer an op touches, at the largest size any micro-batch needs.
        let mut sizes: HashMap<Buf, u64> = HashMap::new();
        let mut bucket = 1;
        for s in schedules {
            let rs = &s.ranks[launch.rank as usize];
            for b in &rs.blocks {
                let geo = b.microbatch.map(|m| {
                    let mem = rs.membership[m];
                    Geometry::new(&s.microbatches[m].groups[mem.group].varlen, AttnDims::of(&s.model), mem.local_rank)
                });
                for op in &b.ops {
                    match op.kind {
                        OpKind::DataParallel { bucket_bytes, .. } => bucket = bucket.max(bucket_bytes),
                        OpKind::Memory { bytes, .. } => bucket = bucket.max(memory_chunk(bytes)),
                        _ => {}
                    }
                    let (reads, writes) = op.kind.access();
                    for (buf, geo) in reads.into_iter().chain(writes).zip(std::iter::repeat(&geo)) {
                        if let Some(geo) = geo {
                            let e = sizes.entry(buf).or_insert(0);
                            *e = (*e).max(geo.bytes(buf));
                        }
                    }
                }
            }
        }
        let mut bufs = HashMap::new();
        for (i, (b, bytes)) in sizes.into_iter().enumerate() {
            bufs.insert(b, gpu.alloc(bytes, b.is_f32(), u64::from(launch.rank) << 32 | i as u64)?);
        }
        let (a, w, c) = gemm_workspace(schedules);
        let seed = u64::from(launch.rank) << 32 | 1 << 20;
        let gemm = (gpu.alloc(a * BF16_BYTES, false, seed)?, gpu.alloc(w * BF16_BYTES, false, seed + 1)?, gpu.alloc(c * BF16_BYTES, false, seed + 2)?);
        let grads = (gpu.alloc(bucket, false, seed + 3)?, gpu.alloc(bucket, false, seed + 4)?);
        gpu.synchronize()?;
        Ok(Executor {
            gpu,
            comms,
            launch,
            bufs,
            gemm,
            grads,
            grad_bucket: bucket,
        })
    }

    fn buf(&self, b: Buf) -> u64 {
        self.bufs.get(&b).copied().unwrap_or(0)
    }

    /// Runs schedule `si` `warmup + repeats` times; times the last `repeats`.
    fn run(&mut self, si: usize, s: &Schedule, warmup: u32, repeats: u32) -> Result<Samples> {
        let rs = &s.ranks[self.launch.rank as usize];
        let dims = AttnDims::of(&s.model);
        let mark = self.gpu.mark();
        // Per micro-batch: geometry and the metadata of every buffer its attention reads.
        let mut geos = Vec::new();
        let mut metas: Vec<HashMap<String, DevMeta>> = Vec::new();
        for (m, mem) in rs.membership.iter().enumerate() {
            let gv = &s.microbatches[m].groups[mem.group].varlen;
            geos.push(Geometry::new(gv, dims, mem.local_rank));
            let gathered = gv.gathered();
            let mut table = HashMap::new();
            for b in rs.blocks.iter().filter(|b| b.microbatch == Some(m)) {
                for op in &b.ops {
                    if let OpKind::AttnFwd(a) | OpKind::AttnBwd(a) = &op.kind {
                        for r in [a.q_meta, a.k_meta] {
                            let key = format!("{r:?}");
                            if !table.contains_key(&key) {
                                table.insert(key, DevMeta::upload(&mut self.gpu, r.resolve(gv, &gathered))?);
                            }
                        }
                    }
                }
            }
            metas.push(table);
        }
        self.gpu.synchronize()?;
        // Events: per block a start and an end, per (block, op, layer) a start and an end.
        let ev = |n: usize| (0..n).map(|_| self.gpu.event()).collect::<Result<Vec<_>>>();
        let block_start = ev(rs.blocks.len())?;
        let block_end = ev(rs.blocks.len())?;
        let joins = ev(Stream::ALL.len())?;
        let mut op_events: Vec<Vec<(CudaEvent, CudaEvent)>> = Vec::new();
        for b in &rs.blocks {
            let n = b.ops.len() * b.repeat as usize;
            op_events.push(ev(n)?.into_iter().zip(ev(n)?).collect());
        }
        let mut samples = Samples::default();
        for rep in 0..warmup + repeats {
            for (bi, b) in rs.blocks.iter().enumerate() {
                // Join: every stream starts after everything before the block.
                self.gpu.record(&joins[0], Stream::Compute)?;
                for &other in &Stream::ALL[1..] {
                    self.gpu.wait(other, &joins[0])?;
                }
                self.gpu.record(&block_start[bi], Stream::Compute)?;
                let m = b.microbatch;
                for layer in 0..b.repeat as usize {
                    for (k, op) in b.ops.iter().enumerate() {
                        for &w in &op.waits {
                            self.gpu.wait(op.stream, &op_events[bi][layer * b.ops.len() + w].1)?;
                        }
                        let (start, end) = &op_events[bi][layer * b.ops.len() + k];
                        self.gpu.record(start, op.stream)?;
                        let geo = m.map(|m| &geos[m]);
                        let table = m.map(|m| &metas[m]);
                        self.exec(si, m, &op.kind, op.stream, geo, table)?;
                        self.gpu.record(end, op.stream)?;
                    }
                }
                for (i, &other) in Stream::ALL.iter().enumerate().skip(1) {
                    self.gpu.record(&joins[i], other)?;
                    self.gpu.wait(Stream::Compute, &joins[i])?;
                }
                self.gpu.record(&block_end[bi], Stream::Compute)?;
            }
            self.gpu.synchronize()?;
            if rep < warmup {
                continue;
            }
            let secs = |a: &CudaEvent, b: &CudaEvent| a.elapsed_ms(b).map(|ms| f64::from(ms) * 1e-3).map_err(fail("reading an event"));
            for (bi, b) in rs.blocks.iter().enumerate() {
                samples.blocks.entry(bi).or_default().push(secs(&block_start[bi], &block_end[bi])?);
                for (i, (start, end)) in op_events[bi].iter().enumerate() {
                    samples.ops.entry((bi, i % b.ops.len())).or_default().push(secs(start, end)?);
                }
            }
            for m in 0..rs.membership.len() {
                let idx: Vec<usize> = (0..rs.blocks.len()).filter(|&i| rs.blocks[i].microbatch == Some(m)).collect();
                if let (Some(&first), Some(&last)) = (idx.first(), idx.last()) {
                    samples.microbatches.entry(m).or_default().push(secs(&block_start[first], &block_end[last])?);
                }
            }
            if let Some(last) = rs.blocks.len().checked_sub(1) {
                samples.step.push(secs(&block_start[0], &block_end[last])?);
            }
        }
        drop(metas);
        self.gpu.release(mark)?;
        Ok(samples)
    }

    /// One op, on its stream, exactly as the schedule describes it.
    fn exec(&self, si: usize, mb: Option<usize>, op: &OpKind, stream: Stream, geo: Option<&Geometry>, metas: Option<&HashMap<String, DevMeta>>) -> Result<()> {
        let g = || geo.ok_or_else(|| fail(op.name())("an attention op outside a micro-batch"));
        let s = self.gpu.stream(stream).clone();
        match op {
            OpKind::Gemm { m, n, k, count, .. } => {
                for _ in 0..*count {
                    self.gpu.gemm(*m, *n, *k, self.gemm.0, self.gemm.1, self.gemm.2)?;
                }
                Ok(())
            }
            OpKind::AttnFwd(a) | OpKind::AttnBwd(a) if a.skip => Ok(()),
            OpKind::AttnFwd(a) => {
                let geo = g()?;
                let (qm, km) = self.metas(metas, a)?;
                let kv = geo.halves(a.kv, self.buf(a.kv));
                self.gpu.attn_fwd(&a.heads, qm, km, self.buf(a.q), kv[0], kv[1], self.buf(Buf::Oacc), self.buf(Buf::Lse), a.first)
            }
            OpKind::AttnBwd(a) => {
                let geo = g()?;
                let (qm, km) = self.metas(metas, a)?;
                let kv = geo.halves(a.kv, self.buf(a.kv));
                let d_o = if a.q == Buf::Q { Buf::DO } else { Buf::DOh };
                let target = a.dkv.ok_or_else(|| fail(op.name())("no key/value gradient target"))?;
                let dkv = geo.halves(target, self.buf(target));
                self.gpu.attn_bwd(
                    &a.heads,
                    qm,
                    km,
                    [self.buf(a.q), kv[0], kv[1]],
                    [self.buf(d_o), self.buf(Buf::Lse), self.buf(Buf::Delta)],
                    self.buf(Buf::DQh),
                    dkv,
                    a.first,
                    a.dkv_accumulate,
                )
            }
            OpKind::BwdPreprocess { d_o, rows, heads } => self.gpu.preprocess(self.buf(*d_o), self.buf(Buf::Oacc), self.buf(Buf::Delta), *rows, *heads),
            OpKind::Cast { src, dst, elems } => self.gpu.elementwise(stream, "cast_f32_bf16", *elems, &[Arg::Ptr(self.buf(*src)), Arg::Ptr(self.buf(*dst)), Arg::Ptr(*elems)]),
            OpKind::Add { dst, a, b, rows, .. } => {
                let geo = g()?;
                let (_, width, _, halves) = geo.shape(*dst);
                let n = u64::from(*rows) * width;
                let at = |x: Option<Buf>, h: usize| x.map_or(0, |x| geo.halves(x, self.buf(x))[h]);
                // `dst = a + b`; a missing operand is zeros (the kernel reads a null `a` as zeros).
                let (a, b) = match (a, b) {
                    (Some(a), None) => (None, Some(*a)),
                    (a, b) => (*a, *b),
                };
                for h in 0..halves as usize {
                    let d = geo.halves(*dst, self.buf(*dst))[h];
                    match b {
                        Some(_) => self.gpu.elementwise(stream, "add_f32", n, &[Arg::Ptr(d), Arg::Ptr(at(a, h)), Arg::Ptr(at(b, h)), Arg::Ptr(n)])?,
                        None => {
                            // SAFETY: `d` holds at least `n` f32 values of this context.
                            unsafe { cudarc::driver::result::memset_d8_async(d, 0, (n * F32_BYTES) as usize, s.cu_stream()) }.map_err(fail("clearing a buffer"))?
                        }
                    }
                }
                Ok(())
            }
            OpKind::SumReplicas { src, dst, .. } => self.sum_replicas(g()?, *src, *dst, &s),
            OpKind::AllToAll { tensor, dir, src, dst, peers, .. } => self.all_to_all(g()?, *tensor, *dir, *src, *dst, peers, stream),
            OpKind::SendRecv { src, dst, rows, send_to, recv_from, .. } => {
                let geo = g()?;
                let comm = self.comms.for_stream(stream);
                let bytes = geo.half_bytes(*src, *rows);
                let (from, to) = (geo.halves(*src, self.buf(*src)), geo.halves(*dst, self.buf(*dst)));
                group(|| {
                    for h in 0..2 {
                        send(comm, &s, from[h], bytes, *send_to)?;
                        recv(comm, &s, to[h], bytes, *recv_from)?;
                    }
                    Ok(())
                })
            }
            OpKind::AllGather { src, dst, .. } | OpKind::ReduceScatter { src, dst, .. } => {
                let geo = g()?;
                let comm = mb.and_then(|m| self.comms.gather.get(&(si, m))).ok_or_else(|| fail(op.name())("no communicator for this group"))?;
                let (from, to) = (geo.halves(*src, self.buf(*src)), geo.halves(*dst, self.buf(*dst)));
                let gather = matches!(op, OpKind::AllGather { .. });
                let (rows, width, _, _) = geo.shape(*if gather { src } else { dst });
                let count = (rows * width) as usize;
                group(|| {
                    for h in 0..2 {
                        // SAFETY: per half, `count` elements in and `count x ring` out (or the reverse).
                        let r = unsafe {
                            if gather {
                                nccl::ncclAllGather(from[h] as *const _, to[h] as *mut _, count, nccl::ncclDataType_t::ncclBfloat16, comm.raw, s.cu_stream() as _)
                            } else {
                                nccl::ncclReduceScatter(from[h] as *const _, to[h] as *mut _, count, nccl::ncclDataType_t::ncclFloat32, nccl::ncclRedOp_t::ncclSum, comm.raw, s.cu_stream() as _)
                            }
                        };
                        nccl_check(r, op.name())?;
                    }
                    Ok(())
                })
            }
            OpKind::DataParallel { collective, peers, bytes, bucket_bytes, .. } => {
                let bucket = (*bucket_bytes).min(self.grad_bucket).max(BF16_BYTES);
                let ranks = peers.len().max(1) as u64;
                let mut left = *bytes;
                while left > 0 {
                    let n = left.min(bucket);
                    let (_, elements, _) = dp_elements(*collective, n, ranks);
                    let (send, recv) = (self.grads.0 as *const _, self.grads.1 as *mut _);
                    let (comm, bf16, sum) = (self.comms.grads.raw, nccl::ncclDataType_t::ncclBfloat16, nccl::ncclRedOp_t::ncclSum);
                    // SAFETY: both workspaces hold `bucket` bytes: the larger side of every call
                    // below is `n` bytes at most (`dp_elements`).
                    let r = unsafe {
                        match collective {
                            Collective::AllGather => nccl::ncclAllGather(send, recv, elements, bf16, comm, s.cu_stream() as _),
                            Collective::ReduceScatter => nccl::ncclReduceScatter(send, recv, elements, bf16, sum, comm, s.cu_stream() as _),
                            _ => nccl::ncclAllReduce(send, recv, elements, bf16, sum, comm, s.cu_stream() as _),
                        }
                    };
                    nccl_check(r, op.name())?;
                    left -= n;
                }
                Ok(())
            }
            OpKind::Memory { bytes, .. } => {
                // A pass that reads and writes `bytes` in all: copies of half of them.
                let chunk = memory_chunk(*bytes).min(self.grad_bucket);
                let mut left = bytes / 2;
                while left > 0 {
                    let n = left.min(chunk);
                    // SAFETY: both workspaces hold at least `chunk` bytes.
                    unsafe { cudarc::driver::result::memcpy_dtod_async(self.grads.1, self.grads.0, n as usize, s.cu_stream()) }
                        .map_err(fail(op.name()))?;
                    left -= n;
                }
                Ok(())
            }
        }
    }

    fn metas<'m>(&self, metas: Option<&'m HashMap<String, DevMeta>>, a: &Attn) -> Result<(&'m DevMeta, &'m DevMeta)> {
        let get = |r: MetaRef| metas.and_then(|t| t.get(&format!("{r:?}"))).ok_or_else(|| fail("attention")(format!("no metadata for {r:?}")));
        Ok((get(a.q_meta)?, get(a.k_meta)?))
    }

    /// A Ulysses all-to-all as grouped send/recv of one contiguous chunk per peer: the send
    /// buffer taken as packed per destination (the transposes frameworks do around it are not
    /// part of the timed op).
    #[allow(clippy::too_many_arguments)]
    fn all_to_all(&self, geo: &Geometry, tensor: Tensor, dir: A2aDir, src: Buf, dst: Buf, peers: &[u32], stream: Stream) -> Result<()> {
        let s = self.gpu.stream(stream).clone();
        let comm = self.comms.for_stream(stream);
        let half = tensor.half().unwrap_or(0);
        let chunks = a2a_chunks(geo, tensor, dir);
        let chunk = |p: usize| chunks[p];
        let src_base = if src.is_pair() { geo.halves(src, self.buf(src))[half] } else { self.buf(src) };
        let dst_base = if dst.is_pair() && dir != A2aDir::ToSeqReplicas { geo.halves(dst, self.buf(dst))[half] } else { self.buf(dst) };
        // Received replicas are laid out [half][peer][rows][heads][dim].
        let dst_base = if dir == A2aDir::ToSeqReplicas { dst_base + half as u64 * (0..peers.len()).map(|p| chunk(p).1).sum::<u64>() } else { dst_base };
        group(|| {
            let (mut so, mut ro) = (0, 0);
            for (p, &peer) in peers.iter().enumerate() {
                let (sb, rb) = chunk(p);
                send(comm, &s, src_base + so, sb, peer)?;
                recv(comm, &s, dst_base + ro, rb, peer)?;
                so += sb;
                ro += rb;
            }
            Ok(())
        })
    }

    /// Sums the replicated key/value heads' gradients received from every Ulysses peer.
    fn sum_replicas(&self, geo: &Geometry, src: Buf, dst: Buf, s: &CudaStream) -> Result<()> {
        let d = u64::from(geo.dims.head_dim);
        let hk = u64::from(geo.dims.kv_heads);
        let u = geo.peer_kv.len() as u32;
        let half_bytes = geo.shard * hk * d * BF16_BYTES;
        // SAFETY: `dst` holds both halves of shard x kv_heads x head_dim bf16 values.
        unsafe { cudarc::driver::result::memset_d8_async(self.buf(dst), 0, (2 * half_bytes) as usize, s.cu_stream()) }.map_err(fail("clearing the key/value gradients"))?;
        let total: u64 = geo.peer_kv.iter().map(|&k| geo.shard * k * d * BF16_BYTES).sum();
        for h in 0..2u64 {
            let mut at = self.buf(src) + h * total;
            for p in 0..u {
                let m = HeadMap::ulysses(geo.dims.heads, geo.dims.kv_heads, geo.dims.head_dim, u, p);
                let n = geo.shard * u64::from(m.kv_heads) * d;
                self.gpu.elementwise(
                    Stream::Compute,
                    "add_heads_bf16",
                    n,
                    &[
                        Arg::Ptr(self.buf(dst) + h * half_bytes),
                        Arg::Ptr(at),
                        Arg::Ptr(geo.shard),
                        Arg::U32(geo.dims.kv_heads),
                        Arg::U32(m.kv_head0),
                        Arg::U32(m.kv_heads),
                        Arg::U32(geo.dims.head_dim),
                    ],
                )?;
                at += n * BF16_BYTES;
            }
        }
        Ok(())
    }
}

/// Runs the attention kernels on a small packed batch and compares them with their CPU mirror
/// (same bf16 inputs): the GPU-side check of the kernels the reference executor cannot make.
/// Two steps of a zigzag ring over two slots, as slot 0 sees them: its own keys, then slot 1's,
/// merged; padding rows hold random values the kernels must not read.
fn self_check(gpu: &mut Gpu, dims: AttnDims) -> Result<f64> {
    use crate::scheme::{GroupShape, HsapParams, RingVariant, Scheme};
    let shape = GroupShape { scheme: Scheme::Ring, ulysses: 1, ring: 2, variant: RingVariant::Zigzag };
    // Documents shorter and longer than a tile, one of a single token.
    let docs = [37u32, 5, 130, 1];
    let l = crate::scheme::layout(&shape, &docs, &HsapParams::default());
    let gv = GroupVarlen::from_rank_layouts(&shape, &docs, &crate::plan::RankLayout::from_layout(&l, &[0, 1]))?;
    let (qm, km0, km1) = (&gv.slots[0], &gv.slots[0], &gv.blocks[1]);
    // Grouped-query heads: 4 query heads reading 2 key/value heads.
    let h = HeadMap {
        q_heads: 4,
        kv_heads: 2,
        q_head0: 0,
        kv_head0: 0,
        group: 2,
        head_dim: dims.head_dim,
    };
    let (hq, hk, d) = (h.q_heads as usize, h.kv_heads as usize, h.head_dim as usize);
    let n = qm.rows as usize;
    let mut seed = 0x5eed_u64;
    let mut draw = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let x = ((seed >> 40) as f32 / 16_777_216.0) * 2.0 - 1.0;
                f32::from_bits(x.to_bits() & 0xffff_0000)
            })
            .collect()
    };
    let (q, d_o) = (draw(n * hq * d), draw(n * hq * d));
    let (k0, v0, k1, v1) = (draw(n * hk * d), draw(n * hk * d), draw(n * hk * d), draw(n * hk * d));
    let bf16 = |x: &[f32]| -> Vec<u32> { x.chunks(2).map(|c| (c[0].to_bits() >> 16) | (c.get(1).map_or(0, |y| y.to_bits() >> 16) << 16)).collect() };
    let mut up = |x: &[f32]| gpu.upload(&bf16(x));
    let (gq, gdo, gk0, gv0, gk1, gv1) = (up(&q)?, up(&d_o)?, up(&k0)?, up(&v0)?, up(&k1)?, up(&v1)?);
    let mut zeros = |len: usize| gpu.upload(&vec![0u32; len]);
    let (o, lse, delta, dq) = (zeros(n * hq * d)?, zeros(n * hq)?, zeros(n * hq)?, zeros(n * hq * d)?);
    let (dk0, dv0, dk1, dv1) = (zeros(n * hk * d)?, zeros(n * hk * d)?, zeros(n * hk * d)?, zeros(n * hk * d)?);
    let (mq, m0, m1) = (DevMeta::upload(gpu, qm)?, DevMeta::upload(gpu, km0)?, DevMeta::upload(gpu, km1)?);
    gpu.attn_fwd(&h, &mq, &m0, gq, gk0, gv0, o, lse, true)?;
    gpu.attn_fwd(&h, &mq, &m1, gq, gk1, gv1, o, lse, false)?;
    gpu.preprocess(gdo, o, delta, qm.rows, h.q_heads)?;
    gpu.attn_bwd(&h, &mq, &m0, [gq, gk0, gv0], [gdo, lse, delta], dq, [dk0, dv0], true, false)?;
    gpu.attn_bwd(&h, &mq, &m1, [gq, gk1, gv1], [gdo, lse, delta], dq, [dk1, dv1], false, false)?;
    gpu.synchronize()?;
    let down = |ptr: u64, len: usize| -> Result<Vec<f32>> {
        let mut host = vec![0f32; len];
        // SAFETY: `ptr` holds `len` f32 values written by the kernels above, which have finished.
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut host, ptr) }.map_err(fail("copying results back"))?;
        Ok(host)
    };
    let t = Tiling::default();
    let scale = 1.0 / (d as f32).sqrt();
    let (x0, x1) = (attention::Tensors { q: &q, k: &k0, v: &v0 }, attention::Tensors { q: &q, k: &k1, v: &v1 });
    let (mut co, mut clse) = (vec![0f32; n * hq * d], vec![0f32; n * hq]);
    attention::fwd(&t, &h, scale, qm, km0, &x0, &mut co, &mut clse, true);
    attention::fwd(&t, &h, scale, qm, km1, &x1, &mut co, &mut clse, false);
    let mut cdelta = vec![0f32; n * hq];
    attention::bwd_preprocess(&h, n, &d_o, &co, &mut cdelta);
    let g = attention::Grads { d_o: &d_o, lse: &clse, delta: &cdelta };
    let (mut cq, mut ck0, mut cv0, mut ck1, mut cv1) = (vec![0f32; n * hq * d], vec![0f32; n * hk * d], vec![0f32; n * hk * d], vec![0f32; n * hk * d], vec![0f32; n * hk * d]);
    attention::bwd_dq(&t, &h, scale, qm, km0, &x0, &g, &mut cq, false);
    attention::bwd_dq(&t, &h, scale, qm, km1, &x1, &g, &mut cq, true);
    attention::bwd_dkdv(&t, &h, scale, qm, km0, &x0, &g, &mut ck0, &mut cv0, false);
    attention::bwd_dkdv(&t, &h, scale, qm, km1, &x1, &g, &mut ck1, &mut cv1, false);
    // Only real rows are defined (padding rows are never written).
    let real = |m: &VarlenMeta, heads: usize| -> Vec<usize> {
        m.row_tokens().iter().enumerate().filter(|(_, t)| t.is_some()).flat_map(|(r, _)| (r * heads * d)..((r + 1) * heads * d)).collect()
    };
    let rel = |a: &[f32], b: &[f32], idx: &[usize]| {
        let scale = idx.iter().fold(0f32, |m, &i| m.max(b[i].abs())).max(f32::MIN_POSITIVE);
        idx.iter().fold(0f32, |m, &i| m.max((a[i] - b[i]).abs())) / scale
    };
    let (rq, r0, r1) = (real(qm, hq), real(km0, hk), real(km1, hk));
    let errors = [
        rel(&down(o, n * hq * d)?, &co, &rq),
        rel(&down(dq, n * hq * d)?, &cq, &rq),
        rel(&down(dk0, n * hk * d)?, &ck0, &r0),
        rel(&down(dv0, n * hk * d)?, &cv0, &r0),
        rel(&down(dk1, n * hk * d)?, &ck1, &r1),
        rel(&down(dv1, n * hk * d)?, &cv1, &r1),
    ];
    Ok(f64::from(errors.into_iter().fold(0f32, f32::max)))
}

/// Largest relative difference tolerated between the kernels and their CPU mirror (f32 sums in
/// a different order, fused multiply-adds).
const SELF_CHECK_TOLERANCE: f64 = 1e-4;

/// Runs `schedules` on this process's GPU as one rank of the launch; rank 0 writes the
/// measurements and prints the comparison.
pub fn validate(plan: &Plan, schedules: &[Schedule], options: &RunOptions, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    check_libraries()?;
    let launch = Launch::from_env()?;
    let world = plan.cluster.gpus();
    if launch.world != world {
        return Err(Error::invalid(
            format!("the plan runs on {world} GPUs ({} nodes of {}); this launch has {} processes ({})", plan.cluster.nodes, plan.cluster.gpus_per_node, launch.world, launch.launcher.name()),
            "start one process per GPU of the plan's cluster",
        ));
    }
    let dims = AttnDims::of(&plan.model);
    let mut gpu = Gpu::new(launch.local_rank, dims.head_dim)?;
    let device = gpu.ctx.name().map_err(fail("reading the GPU's name"))?;
    let check = self_check(&mut gpu, dims)?;
    if check > SELF_CHECK_TOLERANCE {
        return Err(Error::Gpu {
            what: format!("the attention kernels differ from their CPU mirror by {check:.2e} (tolerance {SELF_CHECK_TOLERANCE:e}) on this GPU"),
            hint: "report this with the GPU model and driver version; the kernels are kernels/attention.cu".into(),
        });
    }
    let plan_json = serde_json::to_vec(plan).map_err(|e| Error::internal(format!("cannot encode the plan: {e}")))?;
    let fp = fingerprint(&[plan_json, format!("{:?}{}{}", schedules.iter().map(|s| s.batch).collect::<Vec<_>>(), options.repeats, options.warmup).into_bytes()].concat());
    let (mut session, id) = Session::open(&launch, fp, options.timeout, nccl_id)?;
    let mine = (|| -> Result<Vec<Measurement>> {
        let comms = Comms::init(&launch, &id, schedules)?;
        let mut exec = Executor::new(gpu, comms, &launch, schedules)?;
        let mut rows = Vec::new();
        for (si, s) in schedules.iter().enumerate() {
            let samples = exec.run(si, s, options.warmup, options.repeats)?;
            rows.extend(measurements_of(s, launch.rank, &samples, options, check, &device));
        }
        Ok(rows)
    })();
    let encoded = mine.and_then(|rows| serde_json::to_vec(&rows).map_err(|e| Error::internal(format!("cannot encode measurements: {e}"))));
    // A rank that failed tells rank 0 (which reports every failure) and fails itself too.
    let (sent, failure) = match encoded {
        Ok(bytes) => (Ok(bytes), None),
        Err(e) => (Err(e.to_string()), Some(e)),
    };
    let gathered = session.gather(sent, options.timeout)?;
    if let Some(e) = failure {
        return Err(e);
    }
    let Some(all) = gathered else {
        writeln!(err, "rank {}: done; rank 0 writes the measurements", launch.rank).map_err(crate::output::io_out)?;
        return Ok(());
    };
    let mut rows: Vec<Measurement> = Vec::new();
    for (r, bytes) in all.iter().enumerate() {
        let part: Vec<Measurement> = serde_json::from_slice(bytes).map_err(|e| fail(format!("measurements of rank {r}"))(e))?;
        rows.extend(part);
    }
    measurements::write(&options.out, &rows)?;
    let svg = options.out.with_extension("svg");
    if let Err(e) = super::report::plot(&rows, &svg) {
        writeln!(err, "warning: no plot: {e}").map_err(crate::output::io_out)?;
    }
    let w = crate::output::io_out;
    writeln!(out, "kernel self-check: max relative difference to the CPU mirror {check:.2e}").map_err(w)?;
    writeln!(out, "{} rows written to {} (plot {})", rows.len(), options.out.display(), svg.display()).map_err(w)?;
    super::report::write_table(&super::report::compare(&rows), out).map_err(w)
}

/// The measurement rows of one rank for one schedule.
fn measurements_of(s: &Schedule, rank: u32, samples: &Samples, options: &RunOptions, check: f64, device: &str) -> Vec<Measurement> {
    let rs = &s.ranks[rank as usize];
    let gpn = s.cluster.gpus_per_node.max(1);
    let base = |mb: Option<usize>| {
        let mut tags = vec![("batch", s.batch.to_string()), ("rank", rank.to_string())];
        if let Some(m) = mb {
            tags.push(("mb", m.to_string()));
            tags.push(("group", rs.membership[m].group.to_string()));
        }
        tags
    };
    let row = |kind, op: String, time_s: f64, predicted_s, repeats: usize, tags: Vec<(&str, String)>| Measurement {
        time_s,
        predicted_s,
        repeats: repeats as u32,
        source: super::report::source(&options.source, &tags),
        device: device.to_string(),
        ..Measurement::new(kind, op)
    };
    let mut rows = Vec::new();
    rows.push(row(MeasuredKind::Step, "step".into(), median(&samples.step), Some(s.predicted_step_s), samples.step.len(), base(None)));
    for (m, t) in &samples.microbatches {
        let predicted = s.microbatches[*m].groups[rs.membership[*m].group].predicted_s;
        rows.push(row(MeasuredKind::Phase, super::report::MICRO_BATCH.into(), median(t), Some(predicted), t.len(), base(Some(*m))));
    }
    for (bi, b) in rs.blocks.iter().enumerate() {
        let Some(t) = samples.blocks.get(&bi) else { continue };
        let mut tags = base(b.microbatch);
        tags.push(("self_check", format!("{check:.1e}")));
        rows.push(row(MeasuredKind::Phase, b.phase.name().into(), median(t), b.predicted_serial_s(), t.len(), tags));
        for (k, op) in b.ops.iter().enumerate() {
            let Some(t) = samples.ops.get(&(bi, k)) else { continue };
            if let Some(mut r) = op_row(s, &op.kind, rank, gpn, pair_flops(&s.model)) {
                let calls = u64::from(b.repeat) * op_count(&op.kind);
                let mut tags = base(b.microbatch);
                tags.push(("calls", calls.to_string()));
                if b.phase == Phase::GradSync {
                    tags.push(("phase", "grad_sync".into()));
                }
                r.time_s = median(t).max(f64::MIN_POSITIVE);
                r.predicted_s = op.predicted_s;
                r.repeats = t.len() as u32;
                r.overlapped = op.stream != Stream::Compute;
                r.source = super::report::source(&options.source, &tags);
                r.device = device.to_string();
                rows.push(r);
            }
        }
    }
    rows.retain(|r| r.time_s > 0.0);
    rows
}

fn op_count(op: &OpKind) -> u64 {
    match op {
        OpKind::Gemm { count, .. } => *count,
        _ => 1,
    }
}

/// FLOPs of attention per (query, key) pair and head: two matrix products of `head_dim`
/// multiply-adds each.
fn pair_flops(model: &ModelShape) -> f64 {
    4.0 * f64::from(model.head_dim)
}

/// A measurement row for an op (`None` for the small element-wise ops and skipped calls).
fn op_row(s: &Schedule, op: &OpKind, rank: u32, gpn: u32, pair_flops: f64) -> Option<Measurement> {
    let mut members = op.peers(rank);
    members.push(rank);
    members.sort_unstable();
    members.dedup();
    let mut nodes: Vec<u32> = members.iter().map(|r| r / gpn).collect();
    nodes.dedup();
    let mut r = Measurement { ranks: members.len() as u32, nodes: nodes.len() as u32, ..Measurement::new(MeasuredKind::Collective, "") };
    match op {
        OpKind::Gemm { m, n, k, .. } => {
            r.kind = MeasuredKind::Gemm;
            r.op = "gemm".into();
            r.flops = Some(2.0 * (*m * *n * *k) as f64);
            r.shape = format!("m={m};n={n};k={k}");
            set_kernel(&mut r, CUBLAS_GEMM);
        }
        OpKind::AttnFwd(a) | OpKind::AttnBwd(a) if !a.skip => {
            let fwd = matches!(op, OpKind::AttnFwd(_));
            r.kind = if fwd { MeasuredKind::AttentionFwd } else { MeasuredKind::AttentionBwd };
            r.op = if fwd { "attn_fwd_varlen".into() } else { "attn_bwd_varlen".into() };
            // FlashAttention's convention: the backward does 2.5 times the forward's work.
            let f = a.pairs as f64 * f64::from(a.heads.q_heads) * pair_flops;
            r.flops = Some(if fwd { f } else { 2.5 * f });
            r.shape = format!(
                "seqlen={};seqlen_k={};heads={};kv_heads={};head_dim={};causal=1;pairs={}",
                a.rows_q, a.rows_k, a.heads.q_heads, a.heads.kv_heads, s.model.head_dim, a.pairs
            );
            set_kernel(&mut r, HSAP_REFERENCE);
        }
        _ => {
            let (c, bytes, _) = op.collective()?;
            r.op = c.name().into();
            r.bytes = Some(bytes as f64);
            set_kernel(&mut r, NCCL);
        }
    }
    Some(r)
}

/// What ran an op of this executor: (kernel, library, dtype). Attention runs hsap's own CUDA-core
/// kernels, which calibration refuses as attention efficiency (docs/measurements.md).
type Ran = (&'static str, &'static str, &'static str);
const HSAP_REFERENCE: Ran = (measurements::REFERENCE_KERNEL, "hsap", "bf16");
pub(super) const CUBLAS_GEMM: Ran = ("cublas_gemm", "cublas", "bf16");
const NCCL: Ran = ("nccl", "nccl", "bf16");

fn set_kernel(r: &mut Measurement, (kernel, library, dtype): Ran) {
    r.kernel = kernel.into();
    r.library = library.into();
    if library == "hsap" {
        r.version = env!("CARGO_PKG_VERSION").into();
    }
    r.dtype = dtype.into();
}

/// What `calibrate --run` measures: collectives over message sizes on every group shape the
/// cluster allows, and attention and GEMM shapes of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct MicrobenchPlan {
    /// Rank sets to run collectives on (every rank takes part in building their communicators).
    pub groups: Vec<Vec<u32>>,
    pub collectives: Vec<Collective>,
    pub sizes: Vec<u64>,
    /// (tokens of one causal document, query heads, key/value heads).
    pub attention: Vec<(u32, u32, u32)>,
    /// (m, n, k).
    pub gemms: Vec<(u64, u64, u64)>,
    pub head_dim: u32,
}

impl MicrobenchPlan {
    /// Group shapes: 2, 4, ... GPUs inside a node; whole nodes 2, 4, ...; and one GPU on each of
    /// 2, 4, ... nodes (the rings of hierarchical schemes). Messages from 1 KiB to 1 GiB by
    /// factors of 4. Attention on one causal document of 1K to 64K tokens; the model's GEMMs
    /// (the workload's layer GEMMs, forward, input and weight gradients) for 1K to 32K tokens.
    pub fn for_cluster(cluster: &Cluster, model: &ModelShape) -> MicrobenchPlan {
        let (gpn, nodes) = (cluster.gpus_per_node, cluster.nodes);
        let mut groups: Vec<Vec<u32>> = Vec::new();
        let mut n = 2;
        while n <= gpn {
            groups.push((0..n).collect());
            n *= 2;
        }
        let mut k = 2;
        while k <= nodes {
            groups.push((0..k * gpn).collect());
            groups.push((0..k).map(|i| i * gpn).collect());
            k *= 2;
        }
        let sizes = (0..).map(|i| 1024u64 << (2 * i)).take_while(|&b| b <= 1 << 30).collect();
        // The workload's own shapes, forward and both backward GEMMs, without repeats.
        let mut gemms: Vec<(u64, u64, u64)> = Vec::new();
        for tokens in (10..=15).map(|i| f64::from(1u32 << i)) {
            for g in crate::workload::layer_gemms(model, crate::model::LayerKind::Softmax, tokens, 1.0) {
                for (m, n, k) in crate::workload::pass_shapes(g) {
                    let shape = (m as u64, n as u64, k as u64);
                    if !gemms.contains(&shape) {
                        gemms.push(shape);
                    }
                }
            }
        }
        let attention = (10..=16)
            .flat_map(|i| {
                let mut u = 1;
                let mut v = Vec::new();
                while u <= model.heads && u <= gpn {
                    if model.heads % u == 0 {
                        v.push((1u32 << i, model.heads / u, (model.kv_heads / u).max(1)));
                    }
                    u *= 2;
                }
                v
            })
            .collect();
        MicrobenchPlan {
            groups,
            collectives: Collective::ALL.to_vec(),
            sizes,
            attention,
            gemms,
            head_dim: model.head_dim,
        }
    }
}

/// Runs `plan` as one rank of the launch (every GPU of the cluster takes part); rank 0 returns
/// every rank's rows, the others `None`.
/// `reference_gemms`: also time the model's GEMMs with cuBLAS (`--kernels reference`).
#[allow(clippy::too_many_arguments)]
pub fn microbenchmarks(
    cluster: &Cluster,
    plan: &MicrobenchPlan,
    repeats: u32,
    warmup: u32,
    timeout: Duration,
    source: &str,
    reference_gemms: bool,
) -> Result<Option<Vec<Measurement>>> {
    check_libraries()?;
    let launch = Launch::from_env()?;
    if launch.world != cluster.gpus() {
        return Err(Error::invalid(format!("the cluster has {} GPUs; this launch has {} processes", cluster.gpus(), launch.world), "start one process per GPU"));
    }
    let mut gpu = Gpu::new(launch.local_rank, plan.head_dim)?;
    let device = gpu.ctx.name().map_err(fail("reading the GPU's name"))?;
    let fp = fingerprint(format!("{plan:?}{repeats}{warmup}{reference_gemms}").as_bytes());
    let (mut session, id) = Session::open(&launch, fp, timeout, nccl_id)?;
    let mine = (|| -> Result<Vec<Measurement>> {
        let world = Comm::init(launch.world, launch.rank, &id)?;
        let mut rows = Vec::new();
        let largest = plan.sizes.iter().copied().max().unwrap_or(1);
        let n_max = plan.groups.iter().map(Vec::len).max().unwrap_or(1) as u64;
        let (a, b) = (gpu.alloc(largest * n_max, false, 1)?, gpu.alloc(largest * n_max, false, 2)?);
        let tag = |what: &str| super::report::source(source, &[("rank", launch.rank.to_string()), ("bench", what.to_string())]);
        let s = gpu.stream(Stream::Compute).clone();
        let time = |gpu: &Gpu, f: &dyn Fn() -> Result<()>| time_events(&gpu.ctx, &s, warmup, repeats, &mut || f());
        for members in &plan.groups {
            let inside = members.iter().position(|&r| r == launch.rank);
            let comm = world.split(inside.map_or(NCCL_SPLIT_NOCOLOR, |_| 1), inside.unwrap_or(0) as u32)?;
            let (Some(comm), Some(me)) = (comm, inside) else { continue };
            let n = members.len() as u64;
            let mut nodes: Vec<u32> = members.iter().map(|r| r / cluster.gpus_per_node.max(1)).collect();
            nodes.dedup();
            for &c in &plan.collectives {
                for &bytes in &plan.sizes {
                    let elems = (bytes / BF16_BYTES) as usize;
                    let op = || -> Result<()> {
                        let stream = s.cu_stream() as nccl::cudaStream_t;
                        // SAFETY (all three): `a` and `b` hold `largest x n` bytes; counts stay within them.
                        match c {
                            Collective::AllReduce => nccl_check(
                                unsafe { nccl::ncclAllReduce(a as *const _, b as *mut _, elems, nccl::ncclDataType_t::ncclBfloat16, nccl::ncclRedOp_t::ncclSum, comm.raw, stream) },
                                c.name(),
                            ),
                            Collective::AllGather => nccl_check(
                                unsafe { nccl::ncclAllGather(a as *const _, b as *mut _, elems / n as usize, nccl::ncclDataType_t::ncclBfloat16, comm.raw, stream) },
                                c.name(),
                            ),
                            Collective::ReduceScatter => nccl_check(
                                unsafe { nccl::ncclReduceScatter(a as *const _, b as *mut _, elems / n as usize, nccl::ncclDataType_t::ncclBfloat16, nccl::ncclRedOp_t::ncclSum, comm.raw, stream) },
                                c.name(),
                            ),
                            Collective::AllToAll => group(|| {
                                let per = bytes / n;
                                for p in 0..n {
                                    send(&comm, &s, a + p * per, per, p as u32)?;
                                    recv(&comm, &s, b + p * per, per, p as u32)?;
                                }
                                Ok(())
                            }),
                            // A ring exchange: every member sends to the next and receives from the previous.
                            Collective::SendRecv => group(|| {
                                send(&comm, &s, a, bytes, ((me as u64 + 1) % n) as u32)?;
                                recv(&comm, &s, b, bytes, ((me as u64 + n - 1) % n) as u32)
                            }),
                        }
                    };
                    let t = time(&gpu, &op)?;
                    let mut r = Measurement {
                        ranks: n as u32,
                        nodes: nodes.len() as u32,
                        bytes: Some(bytes as f64),
                        time_s: median(&t),
                        repeats: t.len() as u32,
                        source: tag(&format!("group={}", members.iter().map(u32::to_string).collect::<Vec<_>>().join(","))),
                        device: device.clone(),
                        ..Measurement::new(MeasuredKind::Collective, c.name())
                    };
                    set_kernel(&mut r, NCCL);
                    rows.push(r);
                }
            }
        }
        // The reference set times GEMMs with cuBLAS here; the torch set times them (and
        // attention) with the harness instead. Attention never runs here: the reference kernels'
        // times are not a training kernel's, and calibration refuses them.
        let gemms: &[(u64, u64, u64)] = if reference_gemms { &plan.gemms } else { &[] };
        for &(m, n, k) in gemms {
            let mark = gpu.mark();
            let (x, w, y) = (gpu.alloc(m * k * BF16_BYTES, false, 3)?, gpu.alloc(k * n * BF16_BYTES, false, 4)?, gpu.alloc(m * n * BF16_BYTES, false, 5)?);
            let t = time(&gpu, &|| gpu.gemm(m, n, k, x, w, y))?;
            let mut r = Measurement {
                flops: Some(2.0 * (m * n * k) as f64),
                shape: format!("m={m};n={n};k={k}"),
                time_s: median(&t),
                repeats: t.len() as u32,
                source: tag("gemm"),
                device: device.clone(),
                ..Measurement::new(MeasuredKind::Gemm, "gemm")
            };
            set_kernel(&mut r, CUBLAS_GEMM);
            rows.push(r);
            gpu.release(mark)?;
        }
        Ok(rows)
    })();
    let encoded = mine.and_then(|rows| serde_json::to_vec(&rows).map_err(|e| Error::internal(format!("cannot encode measurements: {e}"))));
    let (sent, failure) = match encoded {
        Ok(bytes) => (Ok(bytes), None),
        Err(e) => (Err(e.to_string()), Some(e)),
    };
    let gathered = session.gather(sent, timeout)?;
    if let Some(e) = failure {
        return Err(e);
    }
    let Some(all) = gathered else { return Ok(None) };
    let mut rows = Vec::new();
    for (r, bytes) in all.iter().enumerate() {
        let part: Vec<Measurement> = serde_json::from_slice(bytes).map_err(|e| fail(format!("measurements of rank {r}"))(e))?;
        rows.extend(part);
    }
    Ok(Some(rows))
}

/// Seconds of each of `repeats` runs of `f` after `warmup` untimed ones, each between two events
/// recorded on `stream`, waiting for the whole context after each run.
pub(super) fn time_events(ctx: &Arc<CudaContext>, stream: &CudaStream, warmup: u32, repeats: u32, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let event = || ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(fail("creating an event"));
    let (start, end) = (event()?, event()?);
    let mut t = Vec::with_capacity(repeats as usize);
    for i in 0..warmup + repeats {
        start.record(stream).map_err(fail("recording an event"))?;
        f()?;
        end.record(stream).map_err(fail("recording an event"))?;
        ctx.synchronize().map_err(fail("synchronizing the GPU"))?;
        if i >= warmup {
            t.push(f64::from(start.elapsed_ms(&end).map_err(fail("reading an event"))?) * 1e-3);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BatchPlan, GroupPlan, MicroBatch, RankLayout, PLAN_FORMAT_VERSION};
    use crate::scheme::{layout, GroupShape, HsapParams, RingVariant, Scheme};

    fn group(scheme: Scheme, u: u32, r: u32, ranks: std::ops::Range<u32>, docs: &[u32]) -> GroupPlan {
        let shape = GroupShape { scheme, ulysses: u, ring: r, variant: RingVariant::Zigzag };
        let ranks: Vec<u32> = ranks.collect();
        GroupPlan {
            rank_layouts: RankLayout::from_layout(&layout(&shape, docs, &HsapParams::default()), &ranks),
            ranks,
            ulysses: u,
            ring: r,
            scheme,
            ring_variant: RingVariant::Zigzag,
            sequences: (0..docs.len() as u32).collect(),
            docs: docs.iter().enumerate().map(|(i, &len)| crate::trace::Doc { index: i as u32, offset: 0, len }).collect(),
            predicted_time_s: 0.01,
            predicted_memory_bytes: 1e9,
        }
    }

    /// Every scheme on 16 GPUs, for llama3-8b (8 KV heads: one per Ulysses rank at degree 8)
    /// and a variant with 2 KV heads (each replicated on 4 of 8 Ulysses ranks).
    fn schedules(kv_heads: u32) -> Vec<Schedule> {
        let mut model = ModelShape::resolve("llama3-8b").unwrap();
        model.layers = 2;
        model.kv_heads = kv_heads;
        let groups = vec![
            MicroBatch {
                groups: vec![
                    group(Scheme::Ulysses, 8, 1, 0..8, &[3000, 1000, 17]),
                    group(Scheme::Allgather, 1, 4, 8..12, &[2000, 300]),
                    group(Scheme::Ring, 1, 2, 12..14, &[999]),
                    group(Scheme::Hsap, 2, 1, 14..16, &[5, 7]),
                ],
                predicted_time_s: 0.01,
            },
            MicroBatch {
                groups: vec![group(Scheme::DoubleRing, 2, 8, 0..16, &[40000, 300, 20]), ],
                predicted_time_s: 0.02,
            },
            MicroBatch {
                groups: vec![group(Scheme::Usp, 8, 2, 0..16, &[9000, 7000])],
                predicted_time_s: 0.02,
            },
        ];
        let plan = Plan {
            format_version: PLAN_FORMAT_VERSION,
            strategy: "test".into(),
            trace: "test".into(),
            model,
            cluster: Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(2).unwrap(),
            train: Default::default(),
            memory_limit_bytes: 0.0,
            batches: vec![BatchPlan {
                index: 0,
                docs: groups.iter().flat_map(|m| m.groups.iter().flat_map(|g| g.docs.iter().copied())).collect(),
                microbatches: groups,
                predicted_step_s: 0.05,
                predicted_peak_memory_bytes: 1e10,
                grad_sync_exposed_s: 0.0,
                source: String::new(),
            }],
        };
        Schedule::for_plan(&plan, None, Tiling::default()).unwrap()
    }

    /// A data-parallel collective's buckets hand NCCL the bytes the schedule declares (nccl-tests'
    /// size: a gather's output, a scatter's input), short by less than one bf16 element per rank
    /// and bucket where a bucket does not split evenly over the ranks; no side exceeds the bucket.
    #[test]
    fn data_parallel_buckets_move_the_declared_bytes() {
        for collective in [Collective::AllReduce, Collective::AllGather, Collective::ReduceScatter] {
            for (bytes, bucket, ranks) in [(1_000_000u64, 80_000_000u64, 16u64), (200_000_000, 80_000_000, 16), (7_000_006, 1_000_000, 3)] {
                let (mut left, mut size, mut calls) = (bytes, 0, 0);
                while left > 0 {
                    let n = left.min(bucket);
                    let (sent, elements, received) = dp_elements(collective, n, ranks);
                    assert!(sent <= n && received <= n, "{collective:?}: {sent} / {received} of a {n}-byte bucket");
                    let given = match collective {
                        Collective::AllGather => sent,
                        Collective::ReduceScatter => received,
                        _ => n,
                    };
                    assert_eq!(elements as u64 * BF16_BYTES, given, "{collective:?}");
                    size += if collective == Collective::ReduceScatter { sent } else { received };
                    left -= n;
                    calls += 1;
                }
                assert!(size <= bytes && bytes - size < calls * ranks * BF16_BYTES, "{collective:?}: {size} of {bytes}");
            }
        }
    }

    /// What the executor hands NCCL is what the schedule declares, for every rank and op.
    #[test]
    fn transfers_move_the_bytes_the_schedule_declares() {
        for kv in [8, 2] {
            for s in schedules(kv) {
                for rs in &s.ranks {
                    for b in &rs.blocks {
                        let Some(m) = b.microbatch else { continue };
                        let mem = rs.membership[m];
                        let geo = Geometry::new(&s.microbatches[m].groups[mem.group].varlen, AttnDims::of(&s.model), mem.local_rank);
                        for op in &b.ops {
                            let sent = match &op.kind {
                                OpKind::SendRecv { src, dst, rows, .. } => {
                                    assert_eq!(geo.half_bytes(*src, *rows), geo.half_bytes(*dst, *rows) * if src.is_f32() == dst.is_f32() { 1 } else { 0 });
                                    2 * geo.half_bytes(*src, *rows)
                                }
                                OpKind::AllToAll { tensor, dir, peers, .. } => {
                                    let chunks = a2a_chunks(&geo, *tensor, *dir);
                                    assert_eq!(chunks.len(), peers.len());
                                    chunks.iter().map(|c| c.0).sum()
                                }
                                OpKind::AllGather { src, .. } => 2 * geo.half_bytes(*src, geo.shape(*src).0 as u32) * geo.ring,
                                OpKind::ReduceScatter { dst, .. } => 2 * geo.half_bytes(*dst, geo.shape(*dst).0 as u32) * geo.ring,
                                _ => continue,
                            };
                            let (_, declared, _) = op.kind.collective().unwrap();
                            assert_eq!(sent, declared, "{kv} KV heads, rank {} {}", rs.rank, op.kind.name());
                        }
                    }
                }
            }
        }
    }

    /// Every buffer an op reads or writes fits the rows its metadata and transfers use.
    #[test]
    fn buffers_hold_what_the_ops_touch() {
        for s in schedules(2) {
            for rs in &s.ranks {
                for b in rs.blocks.iter().filter(|b| b.microbatch.is_some()) {
                    let m = b.microbatch.unwrap();
                    let mem = rs.membership[m];
                    let gv = &s.microbatches[m].groups[mem.group].varlen;
                    let geo = Geometry::new(gv, AttnDims::of(&s.model), mem.local_rank);
                    for op in &b.ops {
                        if let OpKind::AttnFwd(a) | OpKind::AttnBwd(a) = &op.kind {
                            let gathered = gv.gathered();
                            let k_rows = u64::from(a.k_meta.resolve(gv, &gathered).rows);
                            assert_eq!(u64::from(a.q_meta.resolve(gv, &gathered).rows), geo.shape(a.q).0, "{}", op.kind.name());
                            assert_eq!(k_rows, geo.shape(a.kv).0, "{}", op.kind.name());
                            // The dK/dV kernel writes the values' half at the keys' row count.
                            if let Some(target) = a.dkv {
                                assert_eq!(k_rows, geo.shape(target).0, "{} into {target:?}", op.kind.name());
                            }
                            assert_eq!(u64::from(a.heads.kv_heads) * u64::from(s.model.head_dim), geo.shape(a.kv).1);
                        }
                        if let OpKind::Add { dst, rows, elems, .. } = &op.kind {
                            let (_, width, _, halves) = geo.shape(*dst);
                            assert_eq!(u64::from(*rows) * width * halves, *elems);
                            assert!(u64::from(*rows) <= geo.shape(*dst).0);
                        }
                        if let OpKind::Cast { src, dst, elems } = &op.kind {
                            let (rows, width, _, halves) = geo.shape(*src);
                            assert_eq!(rows * width * halves, *elems);
                            assert_eq!(geo.bytes(*dst), elems * BF16_BYTES);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn measurement_rows_can_be_read_back() {
        let s = &schedules(8)[0];
        let rs = &s.ranks[3];
        let mut samples = Samples { step: vec![0.5, 0.7, 0.6], ..Samples::default() };
        for (bi, b) in rs.blocks.iter().enumerate() {
            samples.blocks.insert(bi, vec![0.1, 0.2]);
            for k in 0..b.ops.len() {
                samples.ops.insert((bi, k), vec![1e-4, 3e-4, 2e-4]);
            }
        }
        samples.microbatches.insert(0, vec![0.2]);
        let options = RunOptions { repeats: 3, warmup: 1, timeout: Duration::from_secs(1), source: "validate plan.json".into(), out: "m.csv".into() };
        let rows = measurements_of(s, 3, &samples, &options, 1e-7, "NVIDIA A100-SXM4-80GB");
        let step = rows.iter().find(|r| r.kind == MeasuredKind::Step).unwrap();
        assert_eq!((step.time_s, step.predicted_s, step.repeats), (0.6, Some(0.05), 3));
        let attn = rows.iter().find(|r| r.kind == MeasuredKind::AttentionFwd).unwrap();
        // Forward FLOPs: 4 x pairs x heads x head_dim (rank 3 is in the Ulysses group: 4 heads).
        let OpKind::AttnFwd(a) = &rs.blocks[0].ops.iter().find(|o| matches!(o.kind, OpKind::AttnFwd(_))).unwrap().kind else { panic!() };
        assert_eq!(attn.flops, Some(4.0 * a.pairs as f64 * 4.0 * 128.0));
        assert!(attn.source.contains("batch=0 rank=3 mb=0 group=0 calls=2"), "{}", attn.source);
        let a2a = rows.iter().find(|r| r.op == "all_to_all").unwrap();
        assert_eq!((a2a.ranks, a2a.nodes, a2a.time_s), (8, 1, 2e-4));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        measurements::write(&path, &rows).unwrap();
        assert_eq!(measurements::read(&path).unwrap(), rows);
    }

    #[test]
    fn microbenchmarks_cover_every_group_shape_of_the_cluster() {
        let cluster = Cluster::resolve("dgx-a100-80g").unwrap().with_nodes(4).unwrap();
        let model = ModelShape::resolve("llama3-8b").unwrap();
        let p = MicrobenchPlan::for_cluster(&cluster, &model);
        let sizes: Vec<usize> = p.groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 4, 8, 16, 2, 32, 4]);
        assert_eq!(p.groups[4], vec![0, 8]);
        assert_eq!(p.groups[6], vec![0, 8, 16, 24]);
        assert_eq!((p.sizes[0], *p.sizes.last().unwrap(), p.sizes.len()), (1024, 1 << 30, 11));
        assert!(p.gemms.contains(&(4096, 6144, 4096)) && p.gemms.contains(&(32768, 4096, 14336)));
        // Backward shapes: the QKV projection's input gradient and weight gradient.
        assert!(p.gemms.contains(&(4096, 4096, 6144)) && p.gemms.contains(&(4096, 6144, 4096)) && p.gemms.contains(&(4096, 6144, 1024)));
        let mut unique = p.gemms.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), p.gemms.len(), "no shape twice");
        // Attention per Ulysses degree: 32 heads / u, 8 KV heads / u (at least one).
        assert!(p.attention.contains(&(65536, 4, 1)) && p.attention.contains(&(1024, 32, 8)));
    }
}
