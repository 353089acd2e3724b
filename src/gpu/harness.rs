//! The kernels timed for calibration and validation (docs/calibration.md, "Which kernels"):
//! the kernel sets `--kernels torch|cudnn|reference`, and the production-kernel harness
//! (`harness/hsap_kernels.py`), embedded in the binary, written out at run time and run with the
//! Python that has PyTorch, fed a shape plan ([`HarnessPlan`]) and read back as measurement rows.
//!
//! Every path checks what it needs before it starts and fails with `Error::Gpu` (exit 4) naming
//! what is missing, never a panic: the NVIDIA driver (cudarc panics on first use of a missing
//! library, so its presence is probed first), Python, PyTorch with CUDA, cuDNN and cuBLASLt.

use super::cuda::MicrobenchPlan;
use super::schedule::{Attn, MetaRef, OpKind, Schedule};
use super::varlen::{GroupVarlen, VarlenMeta};
use crate::cluster::Cluster;
use crate::cost::{AttentionKernel, AttentionModel};
use crate::error::{Error, Result};
use crate::formats::measurements::{self, Measurement};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The harness, as shipped with this binary.
pub const SCRIPT: &str = include_str!("../../harness/hsap_kernels.py");
/// The name it is written out under.
pub const SCRIPT_NAME: &str = "hsap_kernels.py";
/// The environment variable naming the Python to run it with (default `python3`).
pub const PYTHON_VAR: &str = "HSAP_PYTHON";

/// Which kernels time attention and GEMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelSet {
    /// What training runs, through PyTorch: SDPA's backends, flash_attn 2 and 3, Transformer
    /// Engine; torch.matmul and torch._scaled_mm (the harness).
    Torch,
    /// cuDNN's fused attention and cuBLASLt through cudarc, for nodes without Python.
    Cudnn,
    /// hsap's own CUDA-core attention kernels (kernels/attention.cu) and cuBLAS: correctness,
    /// not speed.
    Reference,
}

impl KernelSet {
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Torch => "torch",
            KernelSet::Cudnn => "cudnn",
            KernelSet::Reference => "reference",
        }
    }

    /// The name of the kernel that times GEMMs in the rows.
    pub fn gemm_kernel(self) -> &'static str {
        match self {
            KernelSet::Torch => "matmul",
            KernelSet::Cudnn => super::cudnn::GEMM_KERNEL,
            KernelSet::Reference => super::cuda::CUBLAS_GEMM.0,
        }
    }
}

/// Documents packed into one varlen call of the calibration plan: as many documents of the
/// measured length as fill this many tokens (one document from this length up), so that the
/// varlen curve, whose size is the document length, covers the dense curve's lengths.
pub const VARLEN_PACK_TOKENS: u32 = 16_384;

/// What the harness times (the JSON it reads; `Plan` in harness/hsap_kernels.py).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HarnessPlan {
    pub attention: Vec<AttentionCall>,
    pub gemms: Vec<GemmCall>,
    pub repeats: u32,
    pub warmup: u32,
    /// Recorded in every row's `source`.
    pub source: String,
    /// The kernels to time, in order of preference (every importable one when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Vec<String>>,
    /// Time each call with the first of `kernels` that takes it only.
    pub first_only: bool,
}

/// One attention call: documents of `seqlens_q` query and `seqlens_k` key tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionCall {
    pub seqlens_q: Vec<u32>,
    pub seqlens_k: Vec<u32>,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub causal: bool,
    pub varlen: bool,
    /// The (query, key) pairs computed, where the mask is not a plain causal or full one per
    /// document; the harness counts them otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_fwd_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_bwd_s: Option<f64>,
    /// Calibration: the cost model's (forward, backward) time of this call for each kernel name
    /// it prices on this GPU before calibration, for the rows' `predicted_s`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub predicted_by_kernel: BTreeMap<&'static str, (f64, f64)>,
    /// `key=value` words added to the rows' `source`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// The passes to time (`fwd`, `bwd`); both when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<&'static str>,
}

/// One GEMM `(m x k) (k x n)` in `dtype` (`bf16` or `fp8`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GemmCall {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub dtype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

impl AttentionCall {
    fn dense(tokens: u32, heads: u32, kv_heads: u32, head_dim: u32, causal: bool) -> AttentionCall {
        AttentionCall {
            seqlens_q: vec![tokens],
            seqlens_k: vec![tokens],
            heads,
            kv_heads,
            head_dim,
            causal,
            varlen: false,
            pairs: None,
            predicted_fwd_s: None,
            predicted_bwd_s: None,
            predicted_by_kernel: BTreeMap::new(),
            tag: String::new(),
            passes: Vec::new(),
        }
    }

    /// Whether `pass` (`fwd`, `bwd`) is to be timed: every pass where `passes` names none.
    pub fn wants(&self, pass: &str) -> bool {
        self.passes.is_empty() || self.passes.contains(&pass)
    }

    /// The (query, key) pairs the call computes, as the harness counts them: a causal document
    /// aligns its last query with its last key (FlashAttention's convention for unequal lengths).
    pub fn pairs(&self) -> u64 {
        if let Some(p) = self.pairs {
            return p;
        }
        self.seqlens_q.iter().zip(&self.seqlens_k).map(|(&lq, &lk)| document_pairs(u64::from(lq), u64::from(lk), self.causal)).sum()
    }

    /// The call's FLOPs in `pass` (FlashAttention's convention, `cost::attention::flops_per_pair`).
    pub fn flops(&self, pass: crate::cost::Pass) -> f64 {
        self.pairs() as f64 * f64::from(self.heads) * crate::cost::attention::flops_per_pair(pass, f64::from(self.head_dim))
    }

    /// The measurement rows' `shape` of the call, as the harness writes it.
    pub fn shape(&self) -> String {
        let (tq, tk): (u64, u64) = (self.seqlens_q.iter().map(|&l| u64::from(l)).sum(), self.seqlens_k.iter().map(|&l| u64::from(l)).sum());
        let mut parts = vec![format!("seqlen={tq}")];
        if tk != tq {
            parts.push(format!("seqlen_k={tk}"));
        }
        parts.push(format!(
            "heads={};kv_heads={};head_dim={};causal={};docs={};varlen={}",
            self.heads,
            self.kv_heads,
            self.head_dim,
            u8::from(self.causal),
            self.seqlens_q.len(),
            u8::from(self.varlen)
        ));
        parts.join(";")
    }

    /// The cost model's tiles of the call (the tile model of `cost::attention`): per document of
    /// `t` tiles a side, t (t + 1) / 2 tiles causal or t^2 full, and t thread blocks.
    fn tiles(&self) -> (f64, f64) {
        let tile = f64::from(crate::cost::pairs::ATTENTION_TILE_TOKENS);
        self.seqlens_q.iter().zip(&self.seqlens_k).fold((0.0, 0.0), |(tiles, lead), (&lq, &lk)| {
            let (tq, tk) = ((f64::from(lq) / tile).ceil(), (f64::from(lk) / tile).ceil());
            let live = if self.causal { tq * (tq + 1.0) / 2.0 + tq * (tk - tq).max(0.0) } else { tq * tk };
            (tiles + live, lead + tq)
        })
    }
}

/// The (query, key) pairs of one document of `lq` queries and `lk` keys: all of them, or causal
/// with the last query aligned with the last key (FlashAttention's convention).
fn document_pairs(lq: u64, lk: u64, causal: bool) -> u64 {
    match (causal, lk >= lq) {
        (false, _) => lq * lk,
        // Query i (0-based) sees keys up to lk - lq + i.
        (true, true) => lq * (lk - lq + 1) + lq * (lq - 1) / 2,
        // The last lk queries see 1..lk keys, the earlier ones none.
        (true, false) => lk * (lk + 1) / 2,
    }
}

impl GemmCall {
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    pub fn shape(&self) -> String {
        format!("m={};n={};k={}", self.m, self.n, self.k)
    }
}

impl HarnessPlan {
    /// Calibration's kernels over `plan`'s shapes (the cost model's: `MicrobenchPlan`): every
    /// attention shape as one dense causal document, one dense non-causal one (a ring step
    /// between different chunks) and causal documents of that length packed into a varlen call
    /// of [`VARLEN_PACK_TOKENS`]; every GEMM in bf16 and in FP8.
    ///
    /// Each row is predicted by `cluster`'s cost model for the kernel it names (where the cost
    /// model has that kernel on this GPU), so that measured and predicted stand side by side.
    pub fn for_calibration(plan: &MicrobenchPlan, cluster: &Cluster, repeats: u32, warmup: u32, source: &str) -> HarnessPlan {
        let d = plan.head_dim;
        use crate::cost::{compute, Dtype, Pass};
        let models: Vec<AttentionModel> = [AttentionKernel::Fa2, AttentionKernel::Fa3, AttentionKernel::Cudnn, AttentionKernel::Unfused]
            .into_iter()
            .filter_map(|k| AttentionModel::for_cluster(cluster, Some(k)).ok())
            .collect();
        let predict = |mut call: AttentionCall| {
            let (tiles, lead) = call.tiles();
            let floor = compute::launch_s(cluster);
            for m in &models {
                let t = |pass| m.pass(pass).time_s(f64::from(d), f64::from(call.heads), tiles, lead, call.causal).max(floor);
                for &name in m.kernel.measured_names() {
                    call.predicted_by_kernel.insert(name, (t(Pass::Fwd), t(Pass::Bwd)));
                }
            }
            call
        };
        let attention = plan
            .attention
            .iter()
            .flat_map(|&(tokens, hq, hk)| {
                let docs = (VARLEN_PACK_TOKENS / tokens).max(1);
                let packed = AttentionCall {
                    seqlens_q: vec![tokens; docs as usize],
                    seqlens_k: vec![tokens; docs as usize],
                    varlen: true,
                    ..AttentionCall::dense(tokens, hq, hk, d, true)
                };
                [AttentionCall::dense(tokens, hq, hk, d, true), AttentionCall::dense(tokens, hq, hk, d, false), packed]
            })
            .map(predict)
            .collect();
        let gemms = [Dtype::Bf16, Dtype::Fp8]
            .iter()
            .flat_map(|&dtype| {
                plan.gemms.iter().map(move |&(m, n, k)| GemmCall {
                    m,
                    n,
                    k,
                    dtype: dtype.name(),
                    predicted_s: Some(compute::gemm_time_s(cluster, dtype, m as f64, n as f64, k as f64)),
                    tag: String::new(),
                })
            })
            .collect();
        HarnessPlan { attention, gemms, repeats, warmup, source: source.to_string(), kernels: None, first_only: false }
    }

    /// `validate`'s kernels: every attention call and GEMM of the schedules' programs, each
    /// distinct call once per batch with how often the step makes it (`calls=` in `source`) and
    /// the cost model's prediction of one call, timed by the stack's attention kernel (the first
    /// of its names the harness can run, [`AttentionKernel::measured_names`]) and `set`'s GEMMs
    /// (torch.matmul; cuBLASLt for `cudnn`).
    /// Also returns the attention calls no production kernel can make as one call (a mask that is
    /// neither causal nor full on the documents both sides share), one line per batch.
    pub fn for_schedules(schedules: &[Schedule], kernel: AttentionKernel, set: KernelSet, repeats: u32, warmup: u32, source: &str) -> (HarnessPlan, Vec<String>) {
        let mut attention: Vec<(AttentionCall, u64)> = Vec::new();
        let mut gemms: Vec<(GemmCall, u64)> = Vec::new();
        let mut notes = Vec::new();
        for s in schedules {
            let (first_attention, first_gemm) = (attention.len(), gemms.len());
            let mut inexpressible = 0u64;
            for rs in &s.ranks {
                for b in &rs.blocks {
                    let repeat = u64::from(b.repeat);
                    for op in &b.ops {
                        match &op.kind {
                            OpKind::Gemm { m, n, k, count, .. } => {
                                let predicted_s = op.predicted_s.map(|p| p / (*count).max(1) as f64);
                                let call = GemmCall { m: *m, n: *n, k: *k, dtype: "bf16", predicted_s, tag: String::new() };
                                if let Some(new) = count_call(&mut gemms[first_gemm..], call, repeat * count, |a, b| (a.m, a.n, a.k) == (b.m, b.n, b.k)) {
                                    gemms.push(new);
                                }
                            }
                            OpKind::AttnFwd(a) | OpKind::AttnBwd(a) if !a.skip => {
                                let Some(m) = b.microbatch else { continue };
                                let gv = &s.microbatches[m].groups[rs.membership[m].group].varlen;
                                let fwd = matches!(op.kind, OpKind::AttnFwd(_));
                                let Some(calls) = attention_calls(a, gv, s.model.head_dim, fwd, op.predicted_s) else {
                                    inexpressible += repeat;
                                    continue;
                                };
                                let same = |x: &AttentionCall, y: &AttentionCall| {
                                    (&x.seqlens_q, &x.seqlens_k, x.heads, x.kv_heads, x.causal, &x.passes)
                                        == (&y.seqlens_q, &y.seqlens_k, y.heads, y.kv_heads, y.causal, &y.passes)
                                };
                                for call in calls {
                                    if let Some(new) = count_call(&mut attention[first_attention..], call, repeat, same) {
                                        attention.push(new);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            for (c, n) in &mut attention[first_attention..] {
                c.tag = format!("batch={} calls={n}", s.batch);
            }
            for (c, n) in &mut gemms[first_gemm..] {
                c.tag = format!("batch={} calls={n}", s.batch);
            }
            if inexpressible > 0 {
                notes.push(format!(
                    "batch {}: {inexpressible} attention calls per step have a mask no kernel call makes (a document's keys neither all visible, causal with the ends aligned nor hidden); not timed",
                    s.batch
                ));
            }
        }
        let mut names: Vec<String> = kernel.measured_names().iter().map(|n| n.to_string()).collect();
        names.push(set.gemm_kernel().into());
        let plan = HarnessPlan {
            attention: attention.into_iter().map(|(c, _)| c).collect(),
            gemms: gemms.into_iter().map(|(c, _)| c).collect(),
            repeats,
            warmup,
            source: source.to_string(),
            kernels: Some(names),
            first_only: true,
        };
        (plan, notes)
    }
}

/// Adds `n` calls to the entry `same` as `call`, or returns the new entry for it.
fn count_call<T>(seen: &mut [(T, u64)], call: T, n: u64, same: impl Fn(&T, &T) -> bool) -> Option<(T, u64)> {
    match seen.iter_mut().find(|(c, _)| same(c, &call)) {
        Some((_, count)) => {
            *count += n;
            None
        }
        None => Some((call, n)),
    }
}

/// One attention op of a schedule as production-kernel calls. Each side's rows are cut into
/// contiguous ranges of document positions (a Ulysses slot's pieces of one chunk merged back);
/// every (query range, key range) of a document is then a block the mask sees in full (every key
/// at or before every query), causally with the ends aligned (FlashAttention's bottom-right
/// convention for unequal lengths) or not at all. The causal blocks make one varlen call, the full
/// blocks another (as ring-flash-attention splits a zigzag step), each predicted in proportion to
/// its pairs. None when a block is neither (a mask no single call of any kernel makes) or the
/// blocks miss the op's own count of pairs.
fn attention_calls(a: &Attn, gv: &GroupVarlen, head_dim: u32, fwd: bool, predicted_s: Option<f64>) -> Option<Vec<AttentionCall>> {
    let gathered = if a.k_meta == MetaRef::Gathered { gv.gathered() } else { VarlenMeta::concat(&[]) };
    let (q, k) = (position_ranges(a.q_meta.resolve(gv, &gathered)), position_ranges(a.k_meta.resolve(gv, &gathered)));
    // (query lengths, key lengths, pairs) of the causal and of the full blocks.
    let mut parts: [(Vec<u32>, Vec<u32>, u64); 2] = Default::default();
    for &(doc, q0, q1) in &q {
        for &(_, k0, k1) in k.iter().filter(|r| r.0 == doc) {
            let (lq, lk) = (u64::from(q1 - q0), u64::from(k1 - k0));
            let (part, pairs) = if k1 <= q0 + 1 {
                (1, lq * lk)
            } else if k0 >= q1 {
                continue;
            } else if q1 == k1 && k0 <= q0 {
                (0, document_pairs(lq, lk, true))
            } else {
                return None;
            };
            parts[part].0.push(q1 - q0);
            parts[part].1.push(k1 - k0);
            parts[part].2 += pairs;
        }
    }
    let total = parts[0].2 + parts[1].2;
    if total != a.pairs || total == 0 {
        return None;
    }
    let calls = parts
        .into_iter()
        .zip([true, false])
        .filter(|((lq, _, _), _)| !lq.is_empty())
        .map(|((seqlens_q, seqlens_k, pairs), causal)| {
            let share = predicted_s.map(|p| p * pairs as f64 / total as f64);
            AttentionCall {
                // One document runs as a dense call, which every kernel takes.
                varlen: seqlens_q.len() > 1,
                seqlens_q,
                seqlens_k,
                heads: a.heads.q_heads,
                kv_heads: a.heads.kv_heads,
                head_dim,
                causal,
                pairs: None,
                predicted_fwd_s: if fwd { share } else { None },
                predicted_bwd_s: if fwd { None } else { share },
                predicted_by_kernel: BTreeMap::new(),
                tag: String::new(),
                passes: vec![if fwd { "fwd" } else { "bwd" }],
            }
        })
        .collect();
    Some(calls)
}

/// A buffer's real rows as (document, first position, end position) ranges, in row order: a
/// segment is cut where its positions jump (a zigzag shard holds two chunks of a document) and
/// joined to the previous range where it continues it (a Ulysses slot's pieces of one chunk).
fn position_ranges(m: &VarlenMeta) -> Vec<(u32, u32, u32)> {
    let mut out: Vec<(u32, u32, u32)> = Vec::new();
    for seg in 0..m.segments() {
        let start = m.cu_seqlens_padded[seg] as usize;
        let doc = m.docs[seg];
        for &p in &m.pos[start..start + m.seqlens[seg] as usize] {
            match out.last_mut() {
                Some(last) if last.0 == doc && last.2 == p => last.2 = p + 1,
                _ => out.push((doc, p, p + 1)),
            }
        }
    }
    out
}

/// The Python the harness runs with: `$HSAP_PYTHON`, else `python3` on the PATH.
pub fn python() -> PathBuf {
    std::env::var_os(PYTHON_VAR).filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// What the harness needs and this machine lacks: runs it with `--check` (PyTorch importable, a
/// CUDA build, a visible GPU) from a scratch folder it removes. `None` when it can run.
pub fn missing_for_harness() -> Result<Option<String>> {
    let dir = std::env::temp_dir().join(format!("hsap-harness-check-{}", std::process::id()));
    let script = write_script(&dir)?;
    let ran = run_python(&script, &["--check".to_string()]);
    // Best effort: a scratch folder left behind is harmless.
    let _ = std::fs::remove_dir_all(&dir);
    Ok(match ran? {
        Ran::Done(_) => None,
        Ran::NoPython(why) => Some(why),
        Ran::Failed { code, message } => Some(if code == Some(4) { message } else { format!("the kernel harness's check failed: {message}") }),
    })
}

/// The shared libraries `--kernels cudnn` loads, and whether each can be.
pub fn cudnn_libraries() -> Vec<(&'static str, bool)> {
    let loadable = |names: &[&str]| {
        names.iter().any(|n| {
            // SAFETY: loading a library runs its initialisers; cuDNN's and cuBLASLt's only set up
            // their own state. The handle is dropped (unloaded) at once.
            unsafe { libloading::Library::new(*n) }.is_ok()
        })
    };
    vec![
        ("libcudnn.so (cuDNN 9, for its fused attention)", loadable(&["libcudnn.so.9", "libcudnn.so"])),
        ("libcublasLt.so (cuBLASLt, for the GEMMs)", loadable(&["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"])),
    ]
}

/// Refuses a kernel set this machine cannot run for `command`, naming everything missing at
/// once: the NVIDIA driver for all, PyTorch with CUDA for `torch`, cuDNN 9 and cuBLASLt for
/// `cudnn`.
pub fn require(command: &str, set: KernelSet) -> Result<()> {
    if set == KernelSet::Reference && !super::cuda::driver_present() {
        // Only the driver is missing: the executor's own error says how to launch on GPUs.
        return Err(super::cuda::missing_driver());
    }
    let mut missing: Vec<String> = Vec::new();
    if !super::cuda::driver_present() {
        missing.push("libcuda.so (the NVIDIA driver's CUDA library: this machine has no NVIDIA GPU driver)".into());
    }
    match set {
        KernelSet::Reference => {}
        KernelSet::Torch => missing.extend(missing_for_harness()?),
        KernelSet::Cudnn => missing.extend(cudnn_libraries().into_iter().filter(|(_, ok)| !ok).map(|(n, _)| n.to_string())),
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Gpu {
        what: format!("{command} --kernels {} cannot run here; missing: {}", set.name(), missing.join("; ")),
        hint: match set {
            KernelSet::Torch => format!(
                "run on a GPU node whose Python has a CUDA build of PyTorch (set {PYTHON_VAR} to it; flash_attn, flash_attn_interface and \
                 transformer_engine are timed where importable); docs/calibration.md"
            ),
            KernelSet::Cudnn => "run on a GPU node with cuDNN 9.1 or later and cuBLASLt on LD_LIBRARY_PATH (the CUDA toolkit's, or the \
                                 nvidia-cudnn-cu12 and nvidia-cublas-cu12 wheels' lib folders); docs/calibration.md"
                .into(),
            KernelSet::Reference => "run on GPU nodes; docs/validate.md".into(),
        },
    })
}

/// Times `plan`'s calls with `set`'s production kernels on CUDA device `device`: the harness
/// (`torch`, with `dir` for its files) or cuDNN and cuBLASLt (`cudnn`).
pub fn run_production(set: KernelSet, plan: &HarnessPlan, dir: &Path, device: u32, log: &mut dyn std::io::Write) -> Result<Vec<Measurement>> {
    match set {
        KernelSet::Torch => run(plan, dir, device, log),
        KernelSet::Cudnn => super::cudnn::run(plan, device, log),
        KernelSet::Reference => Err(Error::internal("the reference kernels are not production kernels")),
    }
}

/// Runs the harness over `plan` on CUDA device `device`: the script, the plan
/// (`harness-plan.json`), the rows (`harness.csv`) and the setup (`harness-setup.json`: GPU,
/// versions) go to `dir`. Returns the rows; the harness's progress and skipped kernels are
/// written to `log`.
pub fn run(plan: &HarnessPlan, dir: &Path, device: u32, log: &mut dyn std::io::Write) -> Result<Vec<Measurement>> {
    let script = write_script(dir)?;
    let plan_path = dir.join("harness-plan.json");
    crate::formats::write_json(&plan_path, plan)?;
    let out = dir.join("harness.csv");
    let setup = dir.join("harness-setup.json");
    let args: Vec<String> = vec![
        "--plan".into(),
        plan_path.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--setup".into(),
        setup.display().to_string(),
        "--device".into(),
        device.to_string(),
    ];
    match run_python(&script, &args)? {
        Ran::Done(stderr) => {
            log.write_all(stderr.as_bytes()).map_err(crate::output::io_out)?;
            measurements::read(&out)
        }
        Ran::NoPython(why) => Err(Error::Gpu { what: why, hint: format!("set {PYTHON_VAR} to a Python with a CUDA build of PyTorch") }),
        Ran::Failed { code: Some(4), message } => Err(Error::Gpu { what: message, hint: "docs/calibration.md says what --kernels torch needs".into() }),
        Ran::Failed { code: Some(2), message } => Err(Error::internal(format!("the kernel harness refused hsap-tune's plan {}: {message}", plan_path.display()))),
        Ran::Failed { code, message } => Err(Error::Gpu {
            what: format!("the kernel harness failed (exit {}): {message}", code.map_or("by a signal".into(), |c| c.to_string())),
            hint: format!("rerun it by hand to see more: {} {} {}", python().display(), script.display(), args.join(" ")),
        }),
    }
}

fn write_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(SCRIPT_NAME);
    crate::output::write_atomic(&path, SCRIPT.as_bytes())?;
    Ok(path)
}

enum Ran {
    /// Exit 0, with what it wrote to stderr.
    Done(String),
    /// The Python could not be started.
    NoPython(String),
    /// Its exit code and its last `error:` line (or last lines).
    Failed { code: Option<i32>, message: String },
}

fn run_python(script: &Path, args: &[String]) -> Result<Ran> {
    let py = python();
    let output = match std::process::Command::new(&py).arg(script).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Ran::NoPython(format!(
                "{} was not found (the torch kernels are run by a Python with PyTorch: set {PYTHON_VAR} to it)",
                py.display()
            )))
        }
        Err(e) => return Ok(Ran::NoPython(format!("{} cannot be started: {e}", py.display()))),
    };
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        return Ok(Ran::Done(stderr));
    }
    let message = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
    Ok(Ran::Failed { code: output.status.code(), message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelShape;

    #[test]
    fn the_harness_writes_the_measurements_header() {
        // The script's column list is the format's, in order.
        let quoted: Vec<String> = measurements::HEADER.iter().map(|c| format!("\"{c}\"")).collect();
        let flat: String = SCRIPT.split_whitespace().collect();
        assert!(flat.contains(&format!("HEADER=[{},]", quoted.join(","))), "harness/hsap_kernels.py's HEADER differs from measurements::HEADER");
    }

    #[test]
    fn the_calibration_plan_covers_the_cost_model_shapes() {
        let cluster = Cluster::resolve("dgx-h100").unwrap();
        let model = ModelShape::resolve("llama3-8b").unwrap();
        let mb = MicrobenchPlan::for_cluster(&cluster, &model);
        let plan = HarnessPlan::for_calibration(&mb, &cluster, 10, 2, "test");
        assert_eq!(plan.attention.len(), 3 * mb.attention.len());
        assert_eq!(plan.gemms.len(), 2 * mb.gemms.len());
        // 4K tokens, 32 query and 8 KV heads: dense causal, dense full, four causal documents.
        let at = |varlen: bool, causal: bool| {
            plan.attention.iter().find(|a| a.seqlens_q[0] == 4096 && a.heads == 32 && a.varlen == varlen && a.causal == causal).unwrap()
        };
        assert_eq!((at(false, true).seqlens_q.clone(), at(false, true).kv_heads, at(false, true).head_dim), (vec![4096], 8, 128));
        assert_eq!(at(true, true).seqlens_q, vec![4096; 4]);
        assert!(!at(false, false).varlen);
        // From 16K tokens up, one document per varlen call.
        assert!(plan.attention.iter().filter(|a| a.varlen && a.seqlens_q[0] >= VARLEN_PACK_TOKENS).all(|a| a.seqlens_q.len() == 1));
        // Each call predicted per kernel name by the uncalibrated cost model: a dense causal 4K
        // document of 32 heads is 32 x 33 / 2 = 528 tiles in 32 thread blocks per head.
        let call = at(false, true);
        assert_eq!(call.tiles(), (528.0, 32.0));
        let fa3 = AttentionModel::for_cluster(&cluster, Some(AttentionKernel::Fa3)).unwrap();
        let (fwd, bwd) = call.predicted_by_kernel["flash_attn_3"];
        assert_eq!(fwd, fa3.fwd.time_s(128.0, 32.0, 528.0, 32.0, true).max(crate::cost::compute::launch_s(&cluster)));
        assert!(bwd > fwd && call.predicted_by_kernel["sdpa_flash"] == call.predicted_by_kernel["flash_attn_2"]);
        assert!(!call.predicted_by_kernel.contains_key("sdpa_efficient"), "no cost model of the memory-efficient kernel");
        assert!(plan.gemms.iter().all(|g| g.predicted_s.is_some_and(|p| p > 0.0)));
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["gemms"][0]["dtype"], "bf16");
        assert!(json["attention"][0].get("pairs").is_none(), "the harness counts plain masks itself");
    }

    #[test]
    fn validate_times_every_kernel_call_of_the_program_once_per_shape() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/plan.json");
        let plan = crate::plan::Plan::read(&path).unwrap();
        let mut schedules = Schedule::for_plan(&plan, None, crate::gpu::attention::Tiling::default()).unwrap();
        let pricer = crate::gpu::pricing::CostModelPricer::new(&plan).unwrap();
        for s in &mut schedules {
            s.price(&pricer);
        }
        let (calls, notes) = HarnessPlan::for_schedules(&schedules, AttentionKernel::Fa2, KernelSet::Torch, 5, 1, "validate plan.json");
        assert_eq!(calls.kernels.as_deref().unwrap(), ["flash_attn_2", "sdpa_flash", "fa2", "matmul"]);
        assert!(calls.first_only);
        // Every call of the program is counted once: the calls= tags add up to the ops.
        let calls_of = |tag: &str| tag.split_whitespace().find_map(|w| w.strip_prefix("calls=")).unwrap().parse::<u64>().unwrap();
        let (mut gemm_ops, mut attn_ops) = (0u64, 0u64);
        for s in &schedules {
            for rs in &s.ranks {
                for b in &rs.blocks {
                    for op in &b.ops {
                        match &op.kind {
                            OpKind::Gemm { count, .. } => gemm_ops += u64::from(b.repeat) * count,
                            OpKind::AttnFwd(a) | OpKind::AttnBwd(a) if !a.skip => attn_ops += u64::from(b.repeat),
                            _ => {}
                        }
                    }
                }
            }
        }
        assert_eq!(calls.gemms.iter().map(|g| calls_of(&g.tag)).sum::<u64>(), gemm_ops);
        let inexpressible: u64 = notes.iter().map(|n| n.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap()).sum();
        // An op is one call or two (its causal and its full blocks).
        let timed = calls.attention.iter().map(|a| calls_of(&a.tag)).sum::<u64>();
        assert!(timed >= attn_ops - inexpressible && timed <= 2 * (attn_ops - inexpressible), "{timed} calls for {attn_ops} ops");
        // Every call of this plan (usp and double ring, zigzag) is one a kernel makes, and the
        // calls compute exactly the op's pairs: per head, the sum over ops of pairs x repeats.
        assert!(notes.is_empty(), "{notes:?}");
        let pairs = |a: &AttentionCall| -> u64 {
            a.seqlens_q.iter().zip(&a.seqlens_k).map(|(&q, &k)| {
                let (q, k) = (u64::from(q), u64::from(k));
                if a.causal { q * (k - q + 1) + q * (q - 1) / 2 } else { q * k }
            }).sum()
        };
        let mut op_pairs = 0u64;
        for s in &schedules {
            for rs in &s.ranks {
                for b in &rs.blocks {
                    for op in &b.ops {
                        if let OpKind::AttnFwd(a) | OpKind::AttnBwd(a) = &op.kind {
                            if !a.skip {
                                op_pairs += a.pairs * u64::from(b.repeat) * u64::from(a.heads.q_heads);
                            }
                        }
                    }
                }
            }
        }
        let call_pairs: u64 = calls.attention.iter().map(|a| pairs(a) * calls_of(&a.tag) * u64::from(a.heads)).sum();
        assert_eq!(call_pairs, op_pairs);
        // No shape twice in a batch; each with one pass and its prediction.
        for (i, a) in calls.attention.iter().enumerate() {
            assert_eq!(a.passes.len(), 1);
            assert!(a.predicted_fwd_s.is_some() != a.predicted_bwd_s.is_some());
            assert!(a.seqlens_q.iter().zip(&a.seqlens_k).all(|(q, k)| if a.causal { k >= q } else { true }));
            assert!(a.varlen == (a.seqlens_q.len() > 1) && a.seqlens_q.len() == a.seqlens_k.len());
            assert!(!calls.attention[..i].iter().any(|b| (b.tag.split(' ').next(), &b.seqlens_q, &b.seqlens_k, b.heads, b.causal, &b.passes)
                == (a.tag.split(' ').next(), &a.seqlens_q, &a.seqlens_k, a.heads, a.causal, &a.passes)));
        }
        assert!(calls.gemms.iter().all(|g| g.predicted_s.is_some_and(|p| p > 0.0)));
    }

    #[test]
    fn pairs_flops_and_shapes_are_the_harness_s() {
        // The closed forms of python/tests/test_kernel_harness.py, so that rows timed without
        // Python (--kernels cudnn) count work as the harness's do.
        let call = |q: &[u32], k: &[u32], causal: bool| AttentionCall {
            seqlens_q: q.to_vec(),
            seqlens_k: k.to_vec(),
            heads: 2,
            head_dim: 8,
            kv_heads: 2,
            varlen: q.len() > 1,
            ..AttentionCall::dense(1, 2, 2, 8, causal)
        };
        assert_eq!(call(&[4], &[4], true).pairs(), 10);
        assert_eq!(call(&[4, 3], &[4, 3], true).pairs(), 16);
        assert_eq!(call(&[4], &[4], false).pairs(), 16);
        assert_eq!(call(&[2], &[4], true).pairs(), 7);
        assert_eq!(call(&[4], &[2], true).pairs(), 3);
        assert_eq!(AttentionCall { pairs: Some(5), ..call(&[4], &[4], true) }.pairs(), 5);
        use crate::cost::Pass;
        assert_eq!(call(&[4], &[4], true).flops(Pass::Fwd), f64::from(4 * 10 * 2 * 8));
        assert_eq!(call(&[4], &[4], true).flops(Pass::Bwd), 2.5 * f64::from(4 * 10 * 2 * 8));
        assert_eq!(GemmCall { m: 2, n: 3, k: 5, dtype: "bf16", predicted_s: None, tag: String::new() }.flops(), 60.0);
        assert_eq!(call(&[4, 3], &[4, 3], true).shape(), "seqlen=7;heads=2;kv_heads=2;head_dim=8;causal=1;docs=2;varlen=1");
        assert_eq!(call(&[2], &[4], false).shape(), "seqlen=2;seqlen_k=4;heads=2;kv_heads=2;head_dim=8;causal=0;docs=1;varlen=0");
        assert_eq!(GemmCall { m: 2, n: 3, k: 5, dtype: "fp8", predicted_s: None, tag: String::new() }.shape(), "m=2;n=3;k=5");
    }

    #[test]
    fn the_cudnn_set_names_what_this_machine_lacks() {
        if super::super::cuda::driver_present() {
            return;
        }
        let err = require("calibrate --run", KernelSet::Cudnn).unwrap_err();
        assert_eq!(err.exit_code(), 4);
        let text = err.to_string();
        assert!(text.contains("calibrate --run --kernels cudnn cannot run here; missing: libcuda.so"), "{text}");
        assert!(!text.contains("does not build"), "{text}");
    }
}
