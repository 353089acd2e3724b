//! `--kernels cudnn`: the harness's calls timed without Python, attention by cuDNN's fused
//! attention (the engines Transformer Engine and PyTorch's cuDNN backend run, through cuDNN's
//! graph API: [`sdpa`] on [`graph`]) and GEMMs by cuBLASLt, both loaded at run time through
//! cudarc. The rows are the harness's (same kinds, shapes, FLOPs and `source`), named
//! `cudnn_sdpa` (priced as the stack's `cudnn` kernel) and `cublaslt_matmul`.
//!
//! Every call is timed alone with CUDA events around it, after warm-up calls, on random inputs;
//! the backward pass reads the forward's own output and statistics.

pub mod graph;
pub mod sdpa;

use super::cuda::fail;
use super::harness::{AttentionCall, GemmCall, HarnessPlan};
use crate::cost::Pass;
use crate::error::{Error, Result};
use crate::formats::measurements::{MeasuredKind, Measurement};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use graph::{check, Desc};
use sdpa::{Role, Sdpa, Shape};
use std::collections::HashMap;
use std::ffi::c_void;
use std::io::Write;
use std::sync::Arc;

/// The attention kernel's name in the rows (`AttentionKernel::Cudnn` prices it).
pub const ATTENTION_KERNEL: &str = "cudnn_sdpa";
/// The GEMM kernel's name in the rows.
pub const GEMM_KERNEL: &str = "cublaslt_matmul";
/// The oldest cuDNN whose graphs these are (9.1: the composite masks without the 9.0 workaround).
pub const MIN_CUDNN_VERSION: usize = 90100;

/// cuDNN's version as `cudnnGetVersion` gives it (9.1.0 is 90100).
pub fn cudnn_version() -> usize {
    // SAFETY: only called where libcudnn loads (`harness::require` checked it).
    unsafe { cudarc::cudnn::sys::cudnnGetVersion() }
}

/// "9.1.0" for 90100.
fn version_text(v: usize) -> String {
    format!("{}.{}.{}", v / 10_000, v / 100 % 100, v % 100)
}

/// One GPU's handles and memory for the timing.
struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cudnn: cudarc::cudnn::sys::cudnnHandle_t,
    lt: cudarc::cublaslt::sys::cublasLtHandle_t,
    name: String,
    compute_capability: (i32, i32),
    /// Random bf16 values shared by every read-only input (their values do not change a kernel's
    /// time; zeros would, through power and clocks).
    pool: Option<CudaSlice<u16>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: created in `Device::open`, destroyed once; failures leak a handle at exit.
        unsafe {
            cudarc::cudnn::sys::cudnnDestroy(self.cudnn);
            let _ = cudarc::cublaslt::result::destroy_handle(self.lt);
        }
    }
}

impl Device {
    fn open(device: u32) -> Result<Device> {
        let count = CudaContext::device_count().map_err(fail("counting GPUs"))?;
        if device as i32 >= count {
            return Err(Error::Gpu { what: format!("GPU {device} but this node has {count}"), hint: "start at most one process per GPU".into() });
        }
        let ctx = CudaContext::new(device as usize).map_err(fail(format!("opening GPU {device}")))?;
        let stream = ctx.default_stream();
        let name = ctx.name().map_err(fail("reading the GPU's name"))?;
        let compute_capability = ctx.compute_capability().map_err(fail("reading the compute capability"))?;
        let mut cudnn = std::ptr::null_mut();
        // SAFETY: cuDNN writes one handle.
        check(unsafe { cudarc::cudnn::sys::cudnnCreate(&mut cudnn) }, || "creating a handle".into())?;
        // SAFETY: the handle and the stream are alive; the stream outlives the handle (Device).
        check(unsafe { cudarc::cudnn::sys::cudnnSetStream(cudnn, stream.cu_stream() as _) }, || "setting the stream".into())?;
        let lt = cudarc::cublaslt::result::create_handle().map_err(fail("creating a cuBLASLt handle"))?;
        Ok(Device { ctx, stream, cudnn, lt, name, compute_capability, pool: None })
    }

    /// `bytes` of device memory, zeroed.
    fn zeros(&self, bytes: i64) -> Result<CudaSlice<u8>> {
        self.stream.alloc_zeros::<u8>(bytes.max(16) as usize).map_err(fail(format!("allocating {bytes} bytes")))
    }

    /// The random pool's address, grown to at least `bytes`.
    fn random(&mut self, bytes: i64) -> Result<u64> {
        let have = self.pool.as_ref().map_or(0, |p| 2 * p.len() as i64);
        if have < bytes {
            self.pool = None;
            let values = random_bf16(bytes as usize / 2 + 1);
            self.pool = Some(self.stream.clone_htod(&values).map_err(fail("copying random inputs to the GPU"))?);
        }
        let pool = self.pool.as_ref().expect("the pool was filled above");
        Ok(pool.device_ptr(&self.stream).0)
    }

    fn time(&self, warmup: u32, repeats: u32, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
        super::cuda::time_events(&self.ctx, &self.stream, warmup, repeats, f)
    }
}

/// `n` bf16 values in [-1, 1] (xorshift; the same every run).
fn random_bf16(n: usize) -> Vec<u16> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % 2001) as f32 / 1000.0 - 1.0;
            (v.to_bits() >> 16) as u16
        })
        .collect()
}

/// Bytes a tensor of `dims` and `strides` spans in memory (the graphs' tensors in memory are
/// f32, int32 or bf16).
fn span_bytes(spec: &graph::TensorSpec) -> i64 {
    use super::schedule::{BF16_BYTES, F32_BYTES};
    let elems = 1 + spec.dims.iter().zip(&spec.strides).map(|(d, s)| (d - 1) * s).sum::<i64>();
    let size = match spec.dtype {
        graph::DataType::CUDNN_DATA_FLOAT | graph::DataType::CUDNN_DATA_INT32 => F32_BYTES,
        _ => BF16_BYTES,
    };
    elems * size as i64
}

/// A built and planned attention pass, ready to run.
struct Planned {
    sdpa: Sdpa,
    plan: Desc,
    workspace: CudaSlice<u8>,
}

impl Planned {
    fn new(dev: &Device, sdpa: Sdpa) -> Result<Planned> {
        let g = sdpa.graph.finalize(Some(dev.cudnn))?;
        let (plan, workspace) = graph::plan(&g, dev.cudnn)?;
        let workspace = dev.zeros(workspace)?;
        Ok(Planned { sdpa, plan, workspace })
    }

    /// The variant pack binding the pass's tensors to `pointers` (memory) and `scalars` (by
    /// value, read when the pass is launched: they must outlive every launch with the pack).
    fn pack(&self, dev: &Device, pointers: &HashMap<Role, u64>, scalars: &HashMap<Role, f32>) -> Result<Desc> {
        let mut uids = Vec::new();
        let mut ptrs: Vec<*mut c_void> = Vec::new();
        for &(role, t) in &self.sdpa.tensors {
            let spec = self.sdpa.graph.spec(t);
            let ptr = if spec.by_value {
                scalars.get(&role).map(|v| v as *const f32 as *mut c_void)
            } else {
                pointers.get(&role).map(|&p| p as *mut c_void)
            };
            let ptr = ptr.ok_or_else(|| Error::internal(format!("no memory for the cuDNN graph's {role:?}")))?;
            uids.push(spec.uid);
            ptrs.push(ptr);
        }
        use cudarc::cudnn::sys::{cudnnBackendAttributeName_t as A, cudnnBackendDescriptorType_t as K};
        let pack = Desc::new(K::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
        pack.i64s(A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &uids)?;
        pack.pointers(A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, &ptrs)?;
        let ws = self.workspace.device_ptr(&dev.stream).0 as *mut c_void;
        pack.pointers(A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE, &[ws])?;
        pack.finalize("the variant pack")
    }

    /// Launches the pass once on the device's stream.
    fn run(&self, dev: &Device, pack: &Desc) -> Result<()> {
        // SAFETY: the plan was made for this handle; `pack` is this pass's (`Planned::pack`),
        // every pointer in it a live allocation of at least its tensor's span or a live host
        // scalar, its workspace as large as the plan asked.
        check(unsafe { cudarc::cudnn::sys::cudnnBackendExecute(dev.cudnn, self.plan.raw(), pack.raw()) }, || "executing the attention graph".into())
    }
}

/// Seconds of each timed repeat of a pass, where it was timed.
type Samples = Option<Vec<f64>>;

/// Times `call`'s passes: (forward, backward) seconds per repeat, each pass when asked for.
fn time_attention(dev: &mut Device, call: &AttentionCall, warmup: u32, repeats: u32) -> Result<(Samples, Samples)> {
    let shape = Shape::of(call).map_err(|why| Error::internal(format!("an attention call cuDNN does not take was timed: {why}")))?;
    let fwd = Planned::new(dev, sdpa::forward(shape)?)?;
    let bwd = if call.wants("bwd") { Some(Planned::new(dev, sdpa::backward(shape)?)?) } else { None };
    let passes: Vec<&Planned> = [Some(&fwd), bwd.as_ref()].into_iter().flatten().collect();
    let scalars: HashMap<Role, f32> = [(Role::Scale, 1.0 / (shape.d as f32).sqrt()), (Role::NegInf, f32::NEG_INFINITY), (Role::One, 1.0)].into();
    // Memory: inputs from the random pool, every other tensor its own.
    let mut owned: Vec<CudaSlice<u8>> = Vec::new();
    let mut lengths_owned: Vec<CudaSlice<i32>> = Vec::new();
    let mut pointers: HashMap<Role, u64> = HashMap::new();
    let read_only = [Role::Q, Role::K, Role::V, Role::DO];
    let largest = passes
        .iter()
        .flat_map(|p| p.sdpa.tensors.iter().map(|&(r, t)| (r, span_bytes(p.sdpa.graph.spec(t)))))
        .filter(|(r, _)| read_only.contains(r))
        .map(|(_, b)| b)
        .max()
        .unwrap_or(16);
    let pool = dev.random(largest)?;
    for &r in &read_only {
        pointers.insert(r, pool);
    }
    let lengths = |l: &[u32]| -> Vec<i32> { l.iter().map(|&v| v as i32).collect() };
    for (role, values) in [(Role::SeqQ, lengths(&call.seqlens_q)), (Role::SeqKv, lengths(&call.seqlens_k))] {
        let s = dev.stream.clone_htod(&values).map_err(fail("copying document lengths"))?;
        pointers.insert(role, s.device_ptr(&dev.stream).0);
        lengths_owned.push(s);
    }
    for p in &passes {
        for &(role, t) in &p.sdpa.tensors {
            let spec = p.sdpa.graph.spec(t);
            if spec.by_value || pointers.contains_key(&role) {
                continue;
            }
            let m = dev.zeros(span_bytes(spec))?;
            pointers.insert(role, m.device_ptr(&dev.stream).0);
            owned.push(m);
        }
    }
    // Packs are made before timing: only launches are timed.
    let fwd_pack = fwd.pack(dev, &pointers, &scalars)?;
    // The forward runs at least once, so that the backward reads real output and statistics.
    fwd.run(dev, &fwd_pack)?;
    let f = if call.wants("fwd") { Some(dev.time(warmup, repeats, &mut || fwd.run(dev, &fwd_pack))?) } else { None };
    let b = match &bwd {
        Some(bwd) => {
            let pack = bwd.pack(dev, &pointers, &scalars)?;
            Some(dev.time(warmup, repeats, &mut || bwd.run(dev, &pack))?)
        }
        None => None,
    };
    dev.stream.synchronize().map_err(fail("waiting for the GPU"))?;
    drop((owned, lengths_owned));
    Ok((f, b))
}

/// A cuBLASLt GEMM of one shape, ready to run: `y[m, n] = x[m, k] w[n, k]^T` in row-major terms
/// (nn.Linear's layout; the TN form cuBLASLt's FP8 kernels require), bf16 or FP8 E4M3 in, bf16
/// out, f32 accumulation.
struct Gemm {
    desc: cudarc::cublaslt::sys::cublasLtMatmulDesc_t,
    layouts: [cudarc::cublaslt::sys::cublasLtMatrixLayout_t; 3],
    algo: cudarc::cublaslt::sys::cublasLtMatmulAlgo_t,
    memory: [CudaSlice<u8>; 3],
    workspace: CudaSlice<u8>,
    what: String,
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: created in `Gemm::new`, destroyed once.
        unsafe {
            let _ = cudarc::cublaslt::result::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = cudarc::cublaslt::result::destroy_matrix_layout(l);
            }
        }
    }
}

/// cuBLASLt's workspace: what cudarc gives it on Hopper and later (32 MiB).
const GEMM_WORKSPACE_BYTES: usize = 32 << 20;

impl Gemm {
    fn new(dev: &Device, call: &GemmCall) -> Result<Gemm> {
        use cudarc::cublaslt::{result as lt, sys};
        let (input, bytes) = match call.dtype {
            "fp8" => (sys::cudaDataType_t::CUDA_R_8F_E4M3, 1u64),
            _ => (sys::cudaDataType_t::CUDA_R_16BF, 2u64),
        };
        let (m, n, k) = (call.m, call.n, call.k);
        let what = || format!("cuBLASLt GEMM m={m} n={n} k={k} {}", call.dtype);
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F).map_err(fail(what()))?;
        // cublasOperation_t's CUBLAS_OP_T (cuBLAS's enum; cublasLt takes it as a 32-bit value).
        let t: i32 = 1;
        // Column-major: y^T (n x m) = w (n x k, stored k x n and transposed) x^T (k x m).
        // SAFETY: one 32-bit value, as the attribute takes.
        unsafe { lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, (&t as *const i32).cast(), std::mem::size_of::<i32>()) }
            .map_err(fail(what()))?;
        let layouts = [
            lt::create_matrix_layout(input, k, n, k as i64).map_err(fail(what()))?,
            lt::create_matrix_layout(input, k, m, k as i64).map_err(fail(what()))?,
            lt::create_matrix_layout(sys::cudaDataType_t::CUDA_R_16BF, n, m, n as i64).map_err(fail(what()))?,
        ];
        let pref = lt::create_matmul_pref().map_err(fail(what()))?;
        let ws = GEMM_WORKSPACE_BYTES;
        // SAFETY: one usize, as the attribute takes; the preference is destroyed right after.
        let algo = unsafe {
            let found = lt::set_matmul_pref_attribute(pref, sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (&ws as *const usize).cast(), std::mem::size_of::<usize>())
                .and_then(|()| lt::get_matmul_algo_heuristic(dev.lt, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref));
            let _ = lt::destroy_matmul_pref(pref);
            found
        }
        .map_err(fail(format!("{}: no algorithm", what())))?
        .algo;
        let memory = [dev.zeros((k * n * bytes) as i64)?, dev.zeros((k * m * bytes) as i64)?, dev.zeros((n * m * 2) as i64)?];
        Ok(Gemm { desc, layouts, algo, memory, workspace: dev.zeros(ws as i64)?, what: what() })
    }

    fn run(&self, dev: &Device) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let p = |s: &CudaSlice<u8>| s.device_ptr(&dev.stream).0 as *mut c_void;
        // SAFETY: descriptors and layouts of this GEMM, allocations of their sizes, the algorithm
        // cuBLASLt chose for them with this workspace.
        unsafe {
            cudarc::cublaslt::result::matmul(
                dev.lt,
                self.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                p(&self.memory[0]),
                self.layouts[0],
                p(&self.memory[1]),
                self.layouts[1],
                p(&self.memory[2]),
                self.layouts[2],
                p(&self.memory[2]),
                self.layouts[2],
                &self.algo,
                p(&self.workspace),
                GEMM_WORKSPACE_BYTES,
                dev.stream.cu_stream() as _,
            )
        }
        .map_err(fail(&self.what))
    }
}

/// Why cuBLASLt does not take `call` on a GPU of `compute_capability`, if it does not.
fn gemm_unsupported(call: &GemmCall, (major, minor): (i32, i32)) -> Option<String> {
    (call.dtype == "fp8" && (major, minor) < (8, 9)).then(|| format!("FP8 GEMMs need compute capability 8.9 or later; this GPU has {major}.{minor}"))
}

/// Whether `plan` asks for the kernel `names` (every kernel when it names none).
fn asked(plan: &HarnessPlan, names: &[&str]) -> bool {
    plan.kernels.as_ref().is_none_or(|k| k.iter().any(|n| names.contains(&n.as_str())))
}

/// What times the calls: the GPU (cuDNN and cuBLASLt), or a stand-in in tests.
pub trait Timer {
    /// The device's name, as the rows give it.
    fn device(&self) -> String;
    /// (library, version) of the attention and of the GEMM kernel.
    fn versions(&self) -> [(String, String); 2];
    /// Why the GEMM kernel does not take `call` on this device, if it does not.
    fn gemm_unsupported(&self, call: &GemmCall) -> Option<String>;
    /// Seconds per repeat of `call`'s forward and backward passes (each where asked for).
    fn attention(&mut self, call: &AttentionCall, warmup: u32, repeats: u32) -> Result<(Samples, Samples)>;
    fn gemm(&mut self, call: &GemmCall, warmup: u32, repeats: u32) -> Result<Vec<f64>>;
}

impl Timer for Device {
    fn device(&self) -> String {
        self.name.clone()
    }
    fn versions(&self) -> [(String, String); 2] {
        // SAFETY: cuBLASLt loads (checked by `harness::require`).
        let lt = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
        [("cudnn".into(), version_text(cudnn_version())), ("cublaslt".into(), lt.to_string())]
    }
    fn gemm_unsupported(&self, call: &GemmCall) -> Option<String> {
        gemm_unsupported(call, self.compute_capability)
    }
    fn attention(&mut self, call: &AttentionCall, warmup: u32, repeats: u32) -> Result<(Samples, Samples)> {
        time_attention(self, call, warmup, repeats)
    }
    fn gemm(&mut self, call: &GemmCall, warmup: u32, repeats: u32) -> Result<Vec<f64>> {
        let gemm = Gemm::new(self, call)?;
        self.time(warmup, repeats, &mut || gemm.run(self))
    }
}

/// Times `plan`'s calls on CUDA device `device` with cuDNN's fused attention and cuBLASLt (the
/// contract of `harness::run`, without Python); progress and skipped calls go to `log`.
pub fn run(plan: &HarnessPlan, device: u32, log: &mut dyn Write) -> Result<Vec<Measurement>> {
    let version = cudnn_version();
    if version < MIN_CUDNN_VERSION {
        return Err(Error::Gpu {
            what: format!("cuDNN {} is loaded; --kernels cudnn builds the graphs of cuDNN {} and later", version_text(version), version_text(MIN_CUDNN_VERSION)),
            hint: "put a newer libcudnn.so.9 on LD_LIBRARY_PATH (the nvidia-cudnn-cu12 wheel has one), or use --kernels torch".into(),
        });
    }
    measure(plan, &mut Device::open(device)?, log)
}

/// The measurement rows of `plan`'s calls timed by `timer`: the calls of the kernels the plan
/// asks for (all where it names none), those the kernels do not take skipped and named in `log`.
pub fn measure(plan: &HarnessPlan, timer: &mut dyn Timer, log: &mut dyn Write) -> Result<Vec<Measurement>> {
    let io = crate::output::io_out;
    let cudnn_names: Vec<&str> = crate::cost::AttentionKernel::Cudnn.measured_names().to_vec();
    let (attention, gemms) = (asked(plan, &cudnn_names), asked(plan, &[GEMM_KERNEL]));
    let [(attn_lib, attn_version), (gemm_lib, gemm_version)] = timer.versions();
    let base = |kernel: &str, library: String, version: String| Measurement {
        kernel: kernel.into(),
        library,
        version,
        dtype: "bf16".into(),
        device: timer.device(),
        ..Measurement::new(MeasuredKind::AttentionFwd, "")
    };
    let attn_row = base(ATTENTION_KERNEL, attn_lib, attn_version);
    let gemm_row = base(GEMM_KERNEL, gemm_lib, gemm_version);
    let source = |tag: &str| if tag.is_empty() { plan.source.clone() } else { format!("{} {tag}", plan.source) };
    let total = plan.attention.len() * usize::from(attention) + plan.gemms.len() * usize::from(gemms);
    let mut rows = Vec::new();
    let mut done = 0;
    for call in plan.attention.iter().filter(|_| attention) {
        done += 1;
        writeln!(log, "[{done}/{total}] {ATTENTION_KERNEL} {}", call.shape()).map_err(io)?;
        if let Err(why) = Shape::of(call) {
            writeln!(log, "skipped: {ATTENTION_KERNEL} {}: {why}", call.shape()).map_err(io)?;
            continue;
        }
        let (fwd, bwd) = timer.attention(call, plan.warmup, plan.repeats)?;
        let by_kernel = cudnn_names.iter().find_map(|n| call.predicted_by_kernel.get(n)).copied();
        for (times, kind, op, pass, predicted) in [
            (fwd, MeasuredKind::AttentionFwd, "attn_fwd", Pass::Fwd, call.predicted_fwd_s.or(by_kernel.map(|p| p.0))),
            (bwd, MeasuredKind::AttentionBwd, "attn_bwd", Pass::Bwd, call.predicted_bwd_s.or(by_kernel.map(|p| p.1))),
        ] {
            let Some(t) = times else { continue };
            rows.push(Measurement {
                kind,
                op: op.into(),
                flops: Some(call.flops(pass)),
                shape: call.shape(),
                time_s: crate::stats::median(&t).unwrap_or(f64::NAN),
                predicted_s: predicted,
                repeats: t.len() as u32,
                source: source(&call.tag),
                ..attn_row.clone()
            });
        }
    }
    for call in plan.gemms.iter().filter(|_| gemms) {
        done += 1;
        writeln!(log, "[{done}/{total}] {GEMM_KERNEL} {} {}", call.shape(), call.dtype).map_err(io)?;
        if let Some(why) = timer.gemm_unsupported(call) {
            writeln!(log, "skipped: {GEMM_KERNEL} {}: {why}", call.shape()).map_err(io)?;
            continue;
        }
        let t = timer.gemm(call, plan.warmup, plan.repeats)?;
        rows.push(Measurement {
            kind: MeasuredKind::Gemm,
            op: "gemm".into(),
            flops: Some(call.flops()),
            shape: call.shape(),
            time_s: crate::stats::median(&t).unwrap_or(f64::NAN),
            predicted_s: call.predicted_s,
            repeats: t.len() as u32,
            source: source(&call.tag),
            dtype: call.dtype.into(),
            ..gemm_row.clone()
        });
    }
    if !attention {
        writeln!(log, "not timed: attention (the plan names no cuDNN kernel: {:?})", plan.kernels.as_deref().unwrap_or_default()).map_err(io)?;
    }
    if !gemms {
        writeln!(log, "not timed: GEMMs (the plan names no GEMM kernel of this set)").map_err(io)?;
    }
    Ok(rows)
}
