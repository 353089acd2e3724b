//! cuDNN's graph API (the `cudnnBackend*` descriptors) through cudarc's bindings: descriptors
//! that free themselves, and an operation graph built in typed steps (tensors, then operations
//! on them), finalized with errors naming the step and cuDNN's own message.
//!
//! Everything up to the finalized operation graph runs without a GPU (cuDNN 9 checks each
//! operation's shapes and types as it is finalized); engines, plans and execution need one.

use crate::error::{Error, Result};
use cudarc::cudnn::sys::{self, cudnnBackendAttributeName_t as Attr, cudnnBackendAttributeType_t as Ty, cudnnBackendDescriptorType_t as Kind};
use std::ffi::c_void;

pub use cudarc::cudnn::sys::cudnnDataType_t as DataType;
pub use cudarc::cudnn::sys::cudnnPointwiseMode_t as Pointwise;
pub use cudarc::cudnn::sys::cudnnReduceTensorOp_t as Reduce;

/// cuDNN's last error message (it keeps one per thread), or nothing.
fn last_error() -> String {
    let mut buf = [0 as std::ffi::c_char; 1024];
    // SAFETY: cuDNN writes at most `buf.len()` bytes, NUL-terminated.
    unsafe { sys::cudnnGetLastErrorString(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated above (the buffer was zeroed; cuDNN terminates what it writes).
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().trim().to_string();
    if s.is_empty() { String::new() } else { format!(": {s}") }
}

/// `Ok` for success, else an `Error::Gpu` naming `what` was being done.
pub fn check(status: sys::cudnnStatus_t, what: impl FnOnce() -> String) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    Err(Error::Gpu {
        what: format!("cuDNN {}: {status:?}{}", what(), last_error()),
        hint: "CUDNN_LOGERR_DBG=1 CUDNN_LOGDEST_DBG=stderr print cuDNN's own reasons; docs/calibration.md lists the cuDNN versions --kernels cudnn needs".into(),
    })
}

/// One backend descriptor, destroyed when dropped.
pub struct Desc {
    raw: sys::cudnnBackendDescriptor_t,
    kind: Kind,
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor and destroyed once. A failure here
        // leaks a descriptor, nothing worse.
        unsafe { sys::cudnnBackendDestroyDescriptor(self.raw) };
    }
}

impl Desc {
    pub fn new(kind: Kind) -> Result<Desc> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: cuDNN writes one descriptor handle.
        check(unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut raw) }, || format!("creating a {kind:?}"))?;
        Ok(Desc { raw, kind })
    }

    pub fn raw(&self) -> sys::cudnnBackendDescriptor_t {
        self.raw
    }

    fn set<T>(&self, name: Attr, ty: Ty, values: &[T]) -> Result<()> {
        // SAFETY: `values` holds `values.len()` elements of the C type `ty` names (each caller
        // below pairs them); cuDNN copies them.
        let status = unsafe { sys::cudnnBackendSetAttribute(self.raw, name, ty, values.len() as i64, values.as_ptr().cast::<c_void>()) };
        check(status, || format!("setting {name:?} of a {:?}", self.kind))
    }

    pub fn i64s(&self, name: Attr, v: &[i64]) -> Result<()> {
        self.set(name, Ty::CUDNN_TYPE_INT64, v)
    }
    pub fn f32(&self, name: Attr, v: f32) -> Result<()> {
        self.set(name, Ty::CUDNN_TYPE_FLOAT, &[v])
    }
    pub fn dtype(&self, name: Attr, v: DataType) -> Result<()> {
        self.set(name, Ty::CUDNN_TYPE_DATA_TYPE, &[v])
    }
    pub fn flag(&self, name: Attr, v: bool) -> Result<()> {
        self.set(name, Ty::CUDNN_TYPE_BOOLEAN, &[v])
    }
    pub fn descs(&self, name: Attr, v: &[&Desc]) -> Result<()> {
        let raws: Vec<sys::cudnnBackendDescriptor_t> = v.iter().map(|d| d.raw).collect();
        self.set(name, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raws)
    }
    pub fn handle(&self, name: Attr, h: sys::cudnnHandle_t) -> Result<()> {
        self.set(name, Ty::CUDNN_TYPE_HANDLE, &[h])
    }
    pub fn pointers(&self, name: Attr, v: &[*mut c_void]) -> Result<()> {
        self.set(name, Ty::CUDNN_TYPE_VOID_PTR, v)
    }
    pub fn pointwise_mode(&self, v: Pointwise) -> Result<()> {
        self.set(Attr::CUDNN_ATTR_POINTWISE_MODE, Ty::CUDNN_TYPE_POINTWISE_MODE, &[v])
    }
    pub fn reduce_op(&self, v: Reduce) -> Result<()> {
        self.set(Attr::CUDNN_ATTR_REDUCTION_OPERATOR, Ty::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, &[v])
    }
    pub fn heur_mode(&self, v: sys::cudnnBackendHeurMode_t) -> Result<()> {
        self.set(Attr::CUDNN_ATTR_ENGINEHEUR_MODE, Ty::CUDNN_TYPE_HEUR_MODE, &[v])
    }

    pub fn finalize(self, what: &str) -> Result<Desc> {
        // SAFETY: a descriptor of ours with its attributes set.
        check(unsafe { sys::cudnnBackendFinalize(self.raw) }, || format!("finalizing {what} ({:?})", self.kind))?;
        Ok(self)
    }

    /// One `i64` attribute of a finalized descriptor.
    pub fn get_i64(&self, name: Attr) -> Result<i64> {
        let (mut v, mut n) = (0i64, 0i64);
        // SAFETY: room for one element.
        let status = unsafe { sys::cudnnBackendGetAttribute(self.raw, name, Ty::CUDNN_TYPE_INT64, 1, &mut n, (&mut v as *mut i64).cast()) };
        check(status, || format!("reading {name:?}"))?;
        Ok(v)
    }
}

/// A tensor of a graph: its place in [`Graph::tensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor(usize);

/// What a graph's tensor is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub uid: i64,
    pub dims: Vec<i64>,
    pub strides: Vec<i64>,
    pub dtype: DataType,
    /// Intermediate (never in memory, cuDNN fuses it away).
    pub is_virtual: bool,
    /// A scalar passed by value at execution (scales, -inf).
    pub by_value: bool,
}

/// Packed strides of `dims` (the last dimension contiguous).
pub fn packed(dims: &[i64]) -> Vec<i64> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// An operation graph under construction: tensors are declared, operations connect them, and
/// [`Graph::finalize`] hands the operations to cuDNN.
#[derive(Default)]
pub struct Graph {
    specs: Vec<TensorSpec>,
    tensors: Vec<Desc>,
    ops: Vec<(String, Desc)>,
}

/// Compute precision of every operation: attention accumulates in f32.
const COMPUTE: DataType = DataType::CUDNN_DATA_FLOAT;

impl Graph {
    fn tensor(&mut self, spec: TensorSpec) -> Result<Tensor> {
        let d = Desc::new(Kind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
        d.dtype(Attr::CUDNN_ATTR_TENSOR_DATA_TYPE, spec.dtype)?;
        d.i64s(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, &spec.dims)?;
        d.i64s(Attr::CUDNN_ATTR_TENSOR_STRIDES, &spec.strides)?;
        d.i64s(Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[spec.uid])?;
        d.i64s(Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[16])?;
        d.flag(Attr::CUDNN_ATTR_TENSOR_IS_VIRTUAL, spec.is_virtual)?;
        if spec.by_value {
            d.flag(Attr::CUDNN_ATTR_TENSOR_IS_BY_VALUE, true)?;
        }
        let d = d.finalize(&format!("tensor {} {:?}", spec.uid, spec.dims))?;
        self.specs.push(spec);
        self.tensors.push(d);
        Ok(Tensor(self.tensors.len() - 1))
    }

    fn next_uid(&self) -> i64 {
        self.specs.len() as i64 + 1
    }

    /// A tensor in memory (inputs, outputs, workspace), `strides` as laid out.
    pub fn io(&mut self, dims: &[i64], strides: &[i64], dtype: DataType) -> Result<Tensor> {
        let uid = self.next_uid();
        self.tensor(TensorSpec { uid, dims: dims.to_vec(), strides: strides.to_vec(), dtype, is_virtual: false, by_value: false })
    }

    /// An intermediate of `dims` (packed).
    pub fn virt(&mut self, dims: &[i64], dtype: DataType) -> Result<Tensor> {
        self.virt_strided(dims, &packed(dims), dtype)
    }

    pub fn virt_strided(&mut self, dims: &[i64], strides: &[i64], dtype: DataType) -> Result<Tensor> {
        let uid = self.next_uid();
        self.tensor(TensorSpec { uid, dims: dims.to_vec(), strides: strides.to_vec(), dtype, is_virtual: true, by_value: false })
    }

    /// A scalar passed by value (its value goes in the variant pack).
    pub fn scalar(&mut self, dtype: DataType) -> Result<Tensor> {
        let uid = self.next_uid();
        self.tensor(TensorSpec { uid, dims: vec![1; 4], strides: vec![1; 4], dtype, is_virtual: false, by_value: true })
    }

    pub fn spec(&self, t: Tensor) -> &TensorSpec {
        &self.specs[t.0]
    }

    /// The tensors cuDNN reads or writes at execution (every non-virtual one).
    pub fn io_tensors(&self) -> impl Iterator<Item = (Tensor, &TensorSpec)> {
        self.specs.iter().enumerate().filter(|(_, s)| !s.is_virtual).map(|(i, s)| (Tensor(i), s))
    }

    fn push(&mut self, name: &str, op: Desc) -> Result<()> {
        let op = op.finalize(name)?;
        self.ops.push((name.to_string(), op));
        Ok(())
    }

    /// `c = a b` over the last two dimensions, batched over the others; `overrides` are the
    /// per-batch (m, n, k) of padded documents (int32 tensors of one value per batch).
    pub fn matmul(&mut self, name: &str, a: Tensor, b: Tensor, c: Tensor, overrides: [Option<Tensor>; 3], padding: Option<f32>) -> Result<()> {
        let mm = Desc::new(Kind::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
        mm.dtype(Attr::CUDNN_ATTR_MATMUL_COMP_TYPE, COMPUTE)?;
        if let Some(p) = padding {
            mm.f32(Attr::CUDNN_ATTR_MATMUL_PADDING_VALUE, p)?;
        }
        let mm = mm.finalize(name)?;
        let op = Desc::new(Kind::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR)?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_MATMUL_ADESC, &[&self.tensors[a.0]])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_MATMUL_BDESC, &[&self.tensors[b.0]])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_MATMUL_CDESC, &[&self.tensors[c.0]])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_MATMUL_DESC, &[&mm])?;
        let attrs = [
            Attr::CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC,
            Attr::CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC,
            Attr::CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC,
        ];
        for (attr, t) in attrs.into_iter().zip(overrides) {
            if let Some(t) = t {
                op.descs(attr, &[&self.tensors[t.0]])?;
            }
        }
        self.push(name, op)
    }

    /// `y = mode(x[, b[, t]])` element-wise with broadcasting; `axis` for `GEN_INDEX`; computed
    /// in `compute` (f32 unless the op works on indices or flags).
    #[allow(clippy::too_many_arguments)]
    pub fn pointwise(&mut self, name: &str, mode: Pointwise, x: Tensor, b: Option<Tensor>, t: Option<Tensor>, y: Tensor, axis: Option<i64>, compute: Option<DataType>) -> Result<()> {
        let pw = Desc::new(Kind::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        pw.pointwise_mode(mode)?;
        pw.dtype(Attr::CUDNN_ATTR_POINTWISE_MATH_PREC, compute.unwrap_or(COMPUTE))?;
        if let Some(axis) = axis {
            pw.i64s(Attr::CUDNN_ATTR_POINTWISE_AXIS, &[axis])?;
        }
        let pw = pw.finalize(name)?;
        let op = Desc::new(Kind::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR)?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &[&pw])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_POINTWISE_XDESC, &[&self.tensors[x.0]])?;
        if let Some(b) = b {
            op.descs(Attr::CUDNN_ATTR_OPERATION_POINTWISE_BDESC, &[&self.tensors[b.0]])?;
        }
        if let Some(t) = t {
            op.descs(Attr::CUDNN_ATTR_OPERATION_POINTWISE_TDESC, &[&self.tensors[t.0]])?;
        }
        op.descs(Attr::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, &[&self.tensors[y.0]])?;
        self.push(name, op)
    }

    /// `y = reduce(x)` over the dimensions where `y` is 1.
    pub fn reduction(&mut self, name: &str, mode: Reduce, x: Tensor, y: Tensor) -> Result<()> {
        let r = Desc::new(Kind::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
        r.reduce_op(mode)?;
        r.dtype(Attr::CUDNN_ATTR_REDUCTION_COMP_TYPE, COMPUTE)?;
        let r = r.finalize(name)?;
        let op = Desc::new(Kind::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR)?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_REDUCTION_XDESC, &[&self.tensors[x.0]])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_REDUCTION_YDESC, &[&self.tensors[y.0]])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_REDUCTION_DESC, &[&r])?;
        self.push(name, op)
    }

    /// `y`, the same elements as `x` seen through other dimensions and strides (a transpose).
    pub fn reshape(&mut self, name: &str, x: Tensor, y: Tensor) -> Result<()> {
        let op = Desc::new(Kind::CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR)?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_RESHAPE_XDESC, &[&self.tensors[x.0]])?;
        op.descs(Attr::CUDNN_ATTR_OPERATION_RESHAPE_YDESC, &[&self.tensors[y.0]])?;
        self.push(name, op)
    }

    /// The operations' names, in order.
    pub fn op_names(&self) -> Vec<&str> {
        self.ops.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The finalized operation graph, for `handle` where there is one (cuDNN before 9.28
    /// requires it; none checks the graph without a GPU).
    pub fn finalize(&self, handle: Option<sys::cudnnHandle_t>) -> Result<Desc> {
        let g = Desc::new(Kind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
        let ops: Vec<&Desc> = self.ops.iter().map(|(_, d)| d).collect();
        g.descs(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &ops)?;
        if let Some(h) = handle {
            g.handle(Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, h)?;
        }
        g.finalize("the operation graph")
    }
}

/// An execution plan for a finalized graph on `handle`: the first engine configuration of
/// cuDNN's heuristics (mode A, then its fallback list) that finalizes into a plan.
pub fn plan(graph: &Desc, handle: sys::cudnnHandle_t) -> Result<(Desc, i64)> {
    let mut reasons = Vec::new();
    for mode in [sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A, sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK] {
        let heur = Desc::new(Kind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
        heur.descs(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph])?;
        heur.heur_mode(mode)?;
        let heur = heur.finalize("the engine heuristics")?;
        let mut count = 0i64;
        // SAFETY: asks for the count only.
        let status = unsafe {
            sys::cudnnBackendGetAttribute(heur.raw(), Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &mut count, std::ptr::null_mut())
        };
        check(status, || "counting the heuristics' engine configurations".into())?;
        let configs: Vec<Desc> = (0..count).map(|_| Desc::new(Kind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR)).collect::<Result<_>>()?;
        let mut raws: Vec<sys::cudnnBackendDescriptor_t> = configs.iter().map(Desc::raw).collect();
        let mut got = 0i64;
        // SAFETY: `raws` holds `count` created descriptors for cuDNN to fill.
        let status = unsafe {
            sys::cudnnBackendGetAttribute(heur.raw(), Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &mut got, raws.as_mut_ptr().cast())
        };
        check(status, || "reading the heuristics' engine configurations".into())?;
        for config in configs.iter().take(got as usize) {
            let p = Desc::new(Kind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            p.handle(Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle)?;
            p.descs(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[config])?;
            match p.finalize("an execution plan") {
                Ok(p) => {
                    let workspace = p.get_i64(Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)?;
                    return Ok((p, workspace));
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
    }
    Err(Error::Gpu {
        what: format!(
            "cuDNN has no engine for this graph on this GPU{}",
            if reasons.is_empty() { String::new() } else { format!(" ({} configurations refused; the first: {})", reasons.len(), reasons[0]) }
        ),
        hint: "cuDNN's fused attention needs an Ampere or newer GPU, cuDNN 9 and head dims up to 128 (Ampere) or 256 (Hopper, Blackwell); CUDNN_LOGERR_DBG=1 CUDNN_LOGDEST_DBG=stderr say why".into(),
    })
}
