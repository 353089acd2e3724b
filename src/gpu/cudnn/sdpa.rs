//! cuDNN's fused attention (its flash-attention engines) as operation graphs: the forward and
//! backward passes of one attention call, built from matmul, pointwise and reduction operations
//! in the pattern cuDNN's SDPA engines take, as NVIDIA's cudnn-frontend lowers its composite
//! `sdpa` and `sdpa_backward` nodes (include/cudnn_frontend/node/scaled_dot_product_flash_attention.h,
//! softmax.h, diagonal_band_mask.h and utils/attn_score_modifiers.h: the composite causal and
//! padding masks every cuDNN 9 takes). Transformer Engine's and PyTorch's cuDNN attention are
//! those graphs.
//!
//! Documents are a batch of rows `[documents, heads, tokens, head_dim]` (BHSD): the longest
//! document sets the tokens, shorter ones are padded and masked with per-document lengths
//! (cuDNN skips the padding's tiles). A causal document with more keys than queries aligns its
//! last query with its last key (FlashAttention's convention, as the calls of `validate` mean).

use super::graph::{packed, DataType, Graph, Pointwise, Reduce, Tensor};
use crate::error::Result;
use crate::gpu::harness::AttentionCall;

/// The largest head dim cuDNN's fused attention takes (Hopper and Blackwell; Ampere: 128).
pub const MAX_HEAD_DIM: u32 = 256;

/// One call as cuDNN sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Documents (the batch).
    pub b: i64,
    pub h: i64,
    pub hk: i64,
    /// Longest query and key document.
    pub s_q: i64,
    pub s_kv: i64,
    pub d: i64,
    pub causal: bool,
    /// Per-document lengths are passed: some document is shorter than the longest (the lengths
    /// mask the rest), or the diagonal is bottom-right (it is placed by them).
    pub padded: bool,
    /// Some causal document has more keys than queries (the diagonal ends at the last key).
    pub bottom_right: bool,
}

impl Shape {
    /// The call's shape, or why cuDNN's fused attention does not take it.
    pub fn of(call: &AttentionCall) -> std::result::Result<Shape, String> {
        if call.head_dim > MAX_HEAD_DIM || call.head_dim % 8 != 0 {
            return Err(format!("head dim {} (cuDNN's fused attention takes multiples of 8 up to {MAX_HEAD_DIM})", call.head_dim));
        }
        if call.kv_heads == 0 || call.heads % call.kv_heads != 0 {
            return Err(format!("{} query heads over {} key/value heads", call.heads, call.kv_heads));
        }
        if call.pairs.is_some() {
            return Err("a mask that is neither causal nor full per document".into());
        }
        let (s_q, s_kv) = (call.seqlens_q.iter().copied().max().unwrap_or(0), call.seqlens_k.iter().copied().max().unwrap_or(0));
        if s_q == 0 || s_kv == 0 {
            return Err("an empty document".into());
        }
        if call.causal && call.seqlens_q.iter().zip(&call.seqlens_k).any(|(q, k)| k < q) {
            return Err("a causal document with fewer keys than queries".into());
        }
        let bottom_right = call.causal && call.seqlens_q.iter().zip(&call.seqlens_k).any(|(q, k)| q != k);
        // The bottom-right diagonal reads the lengths, so such a call has them even unpadded.
        let padded = bottom_right || call.seqlens_q.iter().any(|&l| l != s_q) || call.seqlens_k.iter().any(|&l| l != s_kv);
        Ok(Shape {
            b: call.seqlens_q.len() as i64,
            h: i64::from(call.heads),
            hk: i64::from(call.kv_heads),
            s_q: i64::from(s_q),
            s_kv: i64::from(s_kv),
            d: i64::from(call.head_dim),
            causal: call.causal,
            padded,
            bottom_right,
        })
    }

    /// `[b, heads, tokens, d]` in BHSD order.
    fn bhsd(&self, heads: i64, tokens: i64) -> [i64; 4] {
        [self.b, heads, tokens, self.d]
    }

    /// The same rows seen as `[b, heads, d, tokens]` (a transpose, as the matmuls read them).
    fn transposed(&self, heads: i64, tokens: i64) -> ([i64; 4], [i64; 4]) {
        let s = packed(&self.bhsd(heads, tokens));
        ([self.b, heads, self.d, tokens], [s[0], s[1], s[3], s[2]])
    }

    fn scores(&self) -> [i64; 4] {
        [self.b, self.h, self.s_q, self.s_kv]
    }

    fn rows(&self) -> [i64; 4] {
        [self.b, self.h, self.s_q, 1]
    }
}

/// What a tensor of an attention graph holds, for the variant pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Q,
    K,
    V,
    O,
    /// Per row: max + log(sum of exp), f32 (the forward's output the backward reads).
    Stats,
    DO,
    DQ,
    DK,
    DV,
    /// Workspace of the backward: per row sum(dO o O), f32.
    SoftmaxSum,
    /// Workspace of the backward: dQ accumulated in f32.
    DqAccum,
    /// Per-document query and key lengths, int32 `[b, 1, 1, 1]`.
    SeqQ,
    SeqKv,
    /// Scalars by value (f32): 1/sqrt(d), -inf, 1.
    Scale,
    NegInf,
    One,
}

/// An attention pass as an operation graph, and which of its tensors is what.
pub struct Sdpa {
    pub graph: Graph,
    pub tensors: Vec<(Role, Tensor)>,
}

const BF16: DataType = DataType::CUDNN_DATA_BFLOAT16;
const F32: DataType = DataType::CUDNN_DATA_FLOAT;
const I32: DataType = DataType::CUDNN_DATA_INT32;
const BOOL: DataType = DataType::CUDNN_DATA_BOOLEAN;

/// Building state: the graph and the tensors it has named.
struct Build {
    g: Graph,
    tensors: Vec<(Role, Tensor)>,
    shape: Shape,
}

impl Build {
    fn new(shape: Shape) -> Build {
        Build { g: Graph::default(), tensors: Vec::new(), shape }
    }

    fn named(&mut self, role: Role, t: Tensor) -> Tensor {
        self.tensors.push((role, t));
        t
    }

    fn io(&mut self, role: Role, dims: &[i64], strides: &[i64], dtype: DataType) -> Result<Tensor> {
        let t = self.g.io(dims, strides, dtype)?;
        Ok(self.named(role, t))
    }

    fn packed_io(&mut self, role: Role, dims: &[i64], dtype: DataType) -> Result<Tensor> {
        self.io(role, dims, &packed(dims), dtype)
    }

    fn scalar(&mut self, role: Role) -> Result<Tensor> {
        let t = self.g.scalar(F32)?;
        Ok(self.named(role, t))
    }

    /// Per-document lengths where documents are padded.
    fn lengths(&mut self) -> Result<Option<(Tensor, Tensor)>> {
        if !self.shape.padded {
            return Ok(None);
        }
        let dims = [self.shape.b, 1, 1, 1];
        Ok(Some((self.packed_io(Role::SeqQ, &dims, I32)?, self.packed_io(Role::SeqKv, &dims, I32)?)))
    }

    fn pw(&mut self, name: &str, mode: Pointwise, x: Tensor, b: Option<Tensor>, dims: &[i64], dtype: DataType) -> Result<Tensor> {
        let y = self.g.virt(dims, dtype)?;
        let compute = matches!(dtype, DataType::CUDNN_DATA_INT32 | DataType::CUDNN_DATA_BOOLEAN).then_some(dtype);
        self.g.pointwise(name, mode, x, b, None, y, None, compute)?;
        Ok(y)
    }

    /// Row (axis 2) or column (axis 3) indices of the scores, computed in `compute` (cudnn-frontend's
    /// padding mask asks for int32, its causal mask leaves the graph's f32).
    fn index(&mut self, name: &str, scores: Tensor, axis: i64, compute: Option<DataType>) -> Result<Tensor> {
        let y = self.g.virt(&self.shape.scores(), I32)?;
        self.g.pointwise(name, Pointwise::CUDNN_POINTWISE_GEN_INDEX, scores, None, None, y, Some(axis), compute)?;
        Ok(y)
    }

    /// `keep ? x : -inf` over the scores.
    fn select(&mut self, name: &str, x: Tensor, keep: Tensor, neg_inf: Tensor) -> Result<Tensor> {
        let y = self.g.virt(&self.shape.scores(), F32)?;
        self.g.pointwise(name, Pointwise::CUDNN_POINTWISE_BINARY_SELECT, x, Some(neg_inf), Some(keep), y, None, None)?;
        Ok(y)
    }

    /// Scores of padding rows and columns set to -inf.
    fn padding_mask(&mut self, s: Tensor, (seq_q, seq_kv): (Tensor, Tensor), neg_inf: Tensor) -> Result<Tensor> {
        let scores = self.shape.scores();
        let row = self.index("gen_row_idx_padding", s, 2, Some(I32))?;
        let col = self.index("gen_col_idx_padding", s, 3, Some(I32))?;
        let row_in = self.pw("lt_row_sq_padding", Pointwise::CUDNN_POINTWISE_CMP_LT, row, Some(seq_q), &scores, BOOL)?;
        let col_in = self.pw("lt_col_skv_padding", Pointwise::CUDNN_POINTWISE_CMP_LT, col, Some(seq_kv), &scores, BOOL)?;
        let keep = self.pw("and_row_col_padding", Pointwise::CUDNN_POINTWISE_LOGICAL_AND, row_in, Some(col_in), &scores, BOOL)?;
        self.select("select_padding", s, keep, neg_inf)
    }

    /// Scores above the diagonal set to -inf: keep row (+ keys - queries) >= column.
    fn causal_mask(&mut self, s: Tensor, lengths: Option<(Tensor, Tensor)>, neg_inf: Tensor) -> Result<Tensor> {
        let scores = self.shape.scores();
        let mut row = self.index("gen_row_index", s, 2, None)?;
        let col = self.index("gen_col_index", s, 3, None)?;
        if self.shape.bottom_right {
            // `Shape::of` passes the lengths of every bottom-right call.
            let Some((seq_q, seq_kv)) = lengths else {
                return Err(crate::error::Error::internal("a bottom-right causal attention graph without document lengths"));
            };
            let y = self.g.virt(&scores, I32)?;
            self.g.pointwise("row+skv", Pointwise::CUDNN_POINTWISE_ADD, row, Some(seq_kv), None, y, Some(3), Some(I32))?;
            let z = self.g.virt(&scores, I32)?;
            self.g.pointwise("row+skv-sq", Pointwise::CUDNN_POINTWISE_SUB, y, Some(seq_q), None, z, Some(3), Some(I32))?;
            row = z;
        }
        let keep = self.pw("row>=col", Pointwise::CUDNN_POINTWISE_CMP_GE, row, Some(col), &scores, BOOL)?;
        self.select("binary_select", s, keep, neg_inf)
    }

    /// `scale (q k^T)` with the padding masked; the forward's matmul also zeroes the padding
    /// (cudnn-frontend sets that padding value on the forward's first matmul only).
    #[allow(clippy::too_many_arguments)]
    fn scores(&mut self, name: &str, q: Tensor, kt: Tensor, scale: Tensor, lengths: Option<(Tensor, Tensor)>, neg_inf: Tensor, zero_padding: bool) -> Result<Tensor> {
        let dims = self.shape.scores();
        let s = self.g.virt(&dims, F32)?;
        let overrides = [lengths.map(|l| l.0), lengths.map(|l| l.1), None];
        self.g.matmul(name, q, kt, s, overrides, lengths.filter(|_| zero_padding).map(|_| 0.0))?;
        let s = self.pw("attn_scale", Pointwise::CUDNN_POINTWISE_MUL, s, Some(scale), &dims, F32)?;
        match lengths {
            Some(l) => self.padding_mask(s, l, neg_inf),
            None => Ok(s),
        }
    }

    fn done(self) -> Sdpa {
        Sdpa { graph: self.g, tensors: self.tensors }
    }
}

/// The forward pass: O and the softmax statistics the backward reads.
pub fn forward(shape: Shape) -> Result<Sdpa> {
    let mut b = Build::new(shape);
    let sh = shape;
    let q = b.packed_io(Role::Q, &sh.bhsd(sh.h, sh.s_q), BF16)?;
    let (kt_dims, kt_strides) = sh.transposed(sh.hk, sh.s_kv);
    let kt = b.io(Role::K, &kt_dims, &kt_strides, BF16)?;
    let v = b.packed_io(Role::V, &sh.bhsd(sh.hk, sh.s_kv), BF16)?;
    let scale = b.scalar(Role::Scale)?;
    let neg_inf = b.scalar(Role::NegInf)?;
    let lengths = b.lengths()?;
    let mut s = b.scores("bmm1", q, kt, scale, lengths, neg_inf, true)?;
    if sh.causal {
        s = b.causal_mask(s, lengths, neg_inf)?;
    }
    // Softmax with its statistics: max, exp(s - max), their sum, stats = max + log(sum).
    let (scores, rows) = (sh.scores(), sh.rows());
    let max = b.g.virt(&rows, F32)?;
    b.g.reduction("max", Reduce::CUDNN_REDUCE_TENSOR_MAX, s, max)?;
    let sub = b.pw("sub", Pointwise::CUDNN_POINTWISE_SUB, s, Some(max), &scores, F32)?;
    let exp = b.pw("exp", Pointwise::CUDNN_POINTWISE_EXP, sub, None, &scores, F32)?;
    let sum = b.g.virt(&rows, F32)?;
    b.g.reduction("sum", Reduce::CUDNN_REDUCE_TENSOR_ADD, exp, sum)?;
    let log = b.pw("log", Pointwise::CUDNN_POINTWISE_LOG, sum, None, &rows, F32)?;
    let stats = b.packed_io(Role::Stats, &rows, F32)?;
    b.g.pointwise("stats", Pointwise::CUDNN_POINTWISE_ADD, max, Some(log), None, stats, None, None)?;
    let p = b.g.virt(&scores, BF16)?;
    b.g.pointwise("div", Pointwise::CUDNN_POINTWISE_DIV, exp, Some(sum), None, p, None, None)?;
    let o = b.packed_io(Role::O, &sh.bhsd(sh.h, sh.s_q), BF16)?;
    b.g.matmul("bmm2", p, v, o, [lengths.map(|l| l.0), None, lengths.map(|l| l.1)], None)?;
    Ok(b.done())
}

/// The backward pass: dQ, dK and dV from Q, K, V, O, dO and the forward's statistics, with the
/// probabilities recomputed (FlashAttention-2's backward).
pub fn backward(shape: Shape) -> Result<Sdpa> {
    let mut b = Build::new(shape);
    let sh = shape;
    let (scores, rows) = (sh.scores(), sh.rows());
    let q_dims = sh.bhsd(sh.h, sh.s_q);
    let q = b.packed_io(Role::Q, &q_dims, BF16)?;
    let (kt_dims, kt_strides) = sh.transposed(sh.hk, sh.s_kv);
    let kt = b.io(Role::K, &kt_dims, &kt_strides, BF16)?;
    let vt = b.io(Role::V, &kt_dims, &kt_strides, BF16)?;
    let o = b.packed_io(Role::O, &q_dims, BF16)?;
    let d_o = b.packed_io(Role::DO, &q_dims, BF16)?;
    let stats = b.packed_io(Role::Stats, &rows, F32)?;
    let scale = b.scalar(Role::Scale)?;
    let neg_inf = b.scalar(Role::NegInf)?;
    let one = b.scalar(Role::One)?;
    let lengths = b.lengths()?;
    let (seq_q, seq_kv) = (lengths.map(|l| l.0), lengths.map(|l| l.1));

    // softmax_sum = rowsum(dO o O), kept in memory for the dS step.
    let dims_do = [sh.b, sh.h, sh.s_q, sh.d];
    let prod = b.g.virt_strided(&dims_do, &[sh.h * sh.s_q * sh.d, sh.s_q * sh.d, sh.h * sh.d, 1], F32)?;
    b.g.pointwise("mul_dO_O", Pointwise::CUDNN_POINTWISE_MUL, d_o, Some(o), None, prod, None, None)?;
    let rowsum = b.g.virt(&rows, F32)?;
    b.g.reduction("reduce_dO_o", Reduce::CUDNN_REDUCE_TENSOR_ADD, prod, rowsum)?;
    let softmax_sum = b.packed_io(Role::SoftmaxSum, &rows, F32)?;
    b.g.pointwise("scale_dropout_inv", Pointwise::CUDNN_POINTWISE_MUL, rowsum, Some(one), None, softmax_sum, None, None)?;

    // P recomputed: exp(scale q k^T - stats), masked.
    let s = b.scores("matmul_Q_KT", q, kt, scale, lengths, neg_inf, false)?;
    let mut s = b.pw("sub_s_m", Pointwise::CUDNN_POINTWISE_SUB, s, Some(stats), &scores, F32)?;
    if sh.causal {
        s = b.causal_mask(s, lengths, neg_inf)?;
    }
    let p = b.pw("exp_s", Pointwise::CUDNN_POINTWISE_EXP, s, None, &scores, F32)?;
    let t_dims = [sh.b, sh.h, sh.s_kv, sh.s_q];
    let t_strides = [sh.h * sh.s_q * sh.s_kv, sh.s_q * sh.s_kv, 1, sh.s_kv];
    let pt = b.g.virt_strided(&t_dims, &t_strides, BF16)?;
    b.g.reshape("reshape_p", p, pt)?;
    let kv_dims = sh.bhsd(sh.hk, sh.s_kv);
    let dv = b.packed_io(Role::DV, &kv_dims, BF16)?;
    b.head_gradient("matmul_pT_dO", pt, d_o, dv, [seq_kv, None, seq_q])?;

    // dS = scale P o (dO V^T - softmax_sum).
    let dp = b.g.virt(&scores, F32)?;
    b.g.matmul("matmul_dO_VT", d_o, vt, dp, [seq_q, seq_kv, None], None)?;
    let ds = b.pw("sub_dP_softmax_sum", Pointwise::CUDNN_POINTWISE_SUB, dp, Some(softmax_sum), &scores, F32)?;
    let ds = b.pw("mul_dP_exp_s", Pointwise::CUDNN_POINTWISE_MUL, ds, Some(p), &scores, F32)?;
    let ds = b.pw("mul_dS_attn_scale", Pointwise::CUDNN_POINTWISE_MUL, ds, Some(scale), &scores, F32)?;
    let dst = b.g.virt_strided(&t_dims, &t_strides, BF16)?;
    b.g.reshape("reshape_dS", ds, dst)?;
    let dk = b.packed_io(Role::DK, &kv_dims, BF16)?;
    b.head_gradient("matmul_dST_Q", dst, q, dk, [seq_kv, None, seq_q])?;

    // dQ = dS K, accumulated in f32 then converted.
    let k = b.g.virt_strided(&kv_dims, &packed(&kv_dims), BF16)?;
    b.g.reshape("reshape_k", kt, k)?;
    let dq_accum = b.packed_io(Role::DqAccum, &q_dims, F32)?;
    b.g.matmul("matmul_dS_K", ds, k, dq_accum, [seq_q, None, seq_kv], None)?;
    let dq = b.packed_io(Role::DQ, &q_dims, BF16)?;
    b.g.pointwise("identity_dQ", Pointwise::CUDNN_POINTWISE_IDENTITY, dq_accum, None, None, dq, None, None)?;
    Ok(b.done())
}

impl Build {
    /// `out = a b` for a key/value gradient: with fewer key/value heads than query heads, per
    /// query head and then summed over each key/value head's group.
    fn head_gradient(&mut self, name: &str, a: Tensor, b: Tensor, out: Tensor, overrides: [Option<Tensor>; 3]) -> Result<()> {
        let sh = self.shape;
        if sh.h == sh.hk {
            return self.g.matmul(name, a, b, out, overrides, None);
        }
        let full = self.g.virt(&[sh.b, sh.h, sh.s_kv, sh.d], BF16)?;
        self.g.matmul(name, a, b, full, overrides, None)?;
        self.g.reduction(&format!("{name}_head_sum"), Reduce::CUDNN_REDUCE_TENSOR_ADD, full, out)
    }
}
