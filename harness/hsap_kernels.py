"""hsap's production-kernel harness: times the attention and GEMM kernels training frameworks run.

`hsap-tune calibrate --run --kernels torch` and `hsap-tune validate --kernels torch` write this
file (embedded in the binary) and a shape plan (JSON) next to their output and run it with the
Python that has PyTorch (`$HSAP_PYTHON`, else `python3`):

    python3 hsap_kernels.py --plan shapes.json --out kernels.csv [--device 0]
    python3 hsap_kernels.py --check

It times, on one GPU, every call of the plan with every kernel that is importable and supports
it: torch.nn.functional.scaled_dot_product_attention with each backend (flash, cuDNN,
efficient, math), flash_attn 2 (`flash_attn`), FlashAttention-3 (`flash_attn_interface`), Transformer
Engine's DotProductAttention (its fused, cuDNN backend); varlen calls (packed documents with
cu_seqlens) where the kernel takes them; GEMMs with torch.matmul (bf16) and torch._scaled_mm
(fp8). It writes the measurements CSV of docs/measurements.md: one row per (call, kernel, pass),
naming the kernel, its library and version, the dtype and the GPU.

Only the standard library is imported at the top: PyTorch and the kernel libraries are imported
by the backend, so that tests run the shape plan, the timing loop and the CSV writer against a
stand-in backend without PyTorch (python/tests/test_kernel_harness.py).

Exit codes: 0 done, 2 a bad plan or flag, 4 no GPU, no PyTorch or no kernel to time (the
message names what is missing), as hsap-tune's own.
"""

import argparse
import csv
import json
import os
import platform
import statistics
import sys

EXIT_BAD_INPUT = 2
EXIT_GPU = 4

# The measurements CSV's columns, in order (src/formats/measurements.rs, docs/measurements.md).
HEADER = [
    "kind", "op", "ranks", "nodes", "bytes", "flops", "shape", "overlapped", "time_s", "predicted_s", "repeats", "source",
    "kernel", "library", "version", "dtype", "device",
]

# FlashAttention's convention (src/cost/attention.rs `flops_per_pair`): 4 x head_dim FLOPs per
# (query, key) pair and head forward, 2.5 times that backward.
BWD_FLOPS_FACTOR = 2.5


class Refusal(Exception):
    """What is missing to run (exit 4) or what is wrong with the plan (exit 2)."""

    def __init__(self, message, code=EXIT_GPU):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# The shape plan


class AttentionCall:
    """One attention call: documents of `seqlens_q` query and `seqlens_k` key tokens, packed
    one after the other (varlen) or one dense sequence (a single document, varlen False)."""

    def __init__(self, spec):
        try:
            self.seqlens_q = [int(x) for x in spec["seqlens_q"]]
            self.seqlens_k = [int(x) for x in spec.get("seqlens_k", spec["seqlens_q"])]
            self.heads = int(spec["heads"])
            self.kv_heads = int(spec.get("kv_heads", self.heads))
            self.head_dim = int(spec["head_dim"])
            self.causal = bool(spec.get("causal", True))
            self.varlen = bool(spec.get("varlen", len(self.seqlens_q) > 1))
            self.predicted_fwd_s = spec.get("predicted_fwd_s")
            self.predicted_bwd_s = spec.get("predicted_bwd_s")
            # Calibration: the cost model's (forward, backward) seconds per kernel name.
            self.predicted_by_kernel = {str(k): (float(v[0]), float(v[1])) for k, v in spec.get("predicted_by_kernel", {}).items()}
            # The caller's count of (query, key) pairs, where its mask is not a plain causal or
            # full one per document (validate's ring steps); else counted here.
            self.given_pairs = spec.get("pairs")
            self.tag = str(spec.get("tag", ""))
            self.passes = list(spec.get("passes", ["fwd", "bwd"]))
        except (KeyError, TypeError, ValueError) as e:
            raise Refusal(f"attention call {spec!r}: {e!r}", EXIT_BAD_INPUT)
        if not self.passes or any(p not in ("fwd", "bwd") for p in self.passes):
            raise Refusal(f"attention call {spec!r}: passes are fwd and bwd", EXIT_BAD_INPUT)
        if len(self.seqlens_q) != len(self.seqlens_k) or not self.seqlens_q:
            raise Refusal(f"attention call {spec!r}: seqlens_q and seqlens_k must list the same documents", EXIT_BAD_INPUT)
        if min(self.seqlens_q + self.seqlens_k) < 1 or self.heads < 1 or self.kv_heads < 1 or self.heads % self.kv_heads:
            raise Refusal(f"attention call {spec!r}: lengths and heads must be positive, heads a multiple of kv_heads", EXIT_BAD_INPUT)
        if not self.varlen and len(self.seqlens_q) > 1:
            raise Refusal(f"attention call {spec!r}: a dense call has one document", EXIT_BAD_INPUT)

    def pairs(self):
        """(query, key) pairs the call computes: a causal document aligns its last query with
        its last key (FlashAttention's convention for unequal lengths)."""
        if self.given_pairs is not None:
            return int(self.given_pairs)
        total = 0
        for lq, lk in zip(self.seqlens_q, self.seqlens_k):
            if not self.causal:
                total += lq * lk
                continue
            # Query i (0-based) sees keys up to lk - lq + i.
            for_first = lk - lq + 1
            if for_first >= 1:
                total += lq * for_first + lq * (lq - 1) // 2
            else:
                visible = lk  # the last lk queries see 1..lk keys; earlier ones see none
                total += visible * (visible + 1) // 2
        return total

    def flops(self, bwd):
        f = 4 * self.pairs() * self.heads * self.head_dim
        return f * BWD_FLOPS_FACTOR if bwd else f

    def shape(self):
        tq, tk = sum(self.seqlens_q), sum(self.seqlens_k)
        parts = [f"seqlen={tq}"]
        if tk != tq:
            parts.append(f"seqlen_k={tk}")
        parts += [
            f"heads={self.heads}", f"kv_heads={self.kv_heads}", f"head_dim={self.head_dim}",
            f"causal={int(self.causal)}", f"docs={len(self.seqlens_q)}", f"varlen={int(self.varlen)}",
        ]
        return ";".join(parts)


class GemmCall:
    def __init__(self, spec):
        try:
            self.m, self.n, self.k = int(spec["m"]), int(spec["n"]), int(spec["k"])
            self.dtype = str(spec.get("dtype", "bf16"))
            self.predicted_s = spec.get("predicted_s")
            self.tag = str(spec.get("tag", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise Refusal(f"GEMM {spec!r}: {e!r}", EXIT_BAD_INPUT)
        if min(self.m, self.n, self.k) < 1 or self.dtype not in ("bf16", "fp8"):
            raise Refusal(f"GEMM {spec!r}: dimensions must be positive and dtype bf16 or fp8", EXIT_BAD_INPUT)

    def flops(self):
        return 2 * self.m * self.n * self.k

    def shape(self):
        return f"m={self.m};n={self.n};k={self.k}"


class Plan:
    """What to time: the JSON hsap-tune writes (src/gpu/harness.rs `HarnessPlan`)."""

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise Refusal("the plan must be a JSON object", EXIT_BAD_INPUT)
        self.attention = [AttentionCall(a) for a in spec.get("attention", [])]
        self.gemms = [GemmCall(g) for g in spec.get("gemms", [])]
        self.repeats = int(spec.get("repeats", 10))
        self.warmup = int(spec.get("warmup", 2))
        self.source = str(spec.get("source", "hsap kernel harness"))
        # Kernel names to time, in order of preference (every importable kernel when absent);
        # with `first_only`, each call is timed by the first of them that takes it (validate
        # times the plan's calls with the stack's kernel, calibration every kernel).
        self.kernels = spec.get("kernels")
        self.first_only = bool(spec.get("first_only", False))
        if self.kernels is not None and not (isinstance(self.kernels, list) and all(isinstance(k, str) for k in self.kernels)):
            raise Refusal("kernels must be a list of kernel names", EXIT_BAD_INPUT)
        if self.repeats < 1 or self.warmup < 0:
            raise Refusal("repeats must be at least 1 and warmup at least 0", EXIT_BAD_INPUT)

    @staticmethod
    def read(path):
        try:
            with open(path) as f:
                return Plan(json.load(f))
        except OSError as e:
            raise Refusal(f"{path}: {e.strerror}", EXIT_BAD_INPUT)
        except json.JSONDecodeError as e:
            raise Refusal(f"{path}:{e.lineno}: not JSON: {e.msg}", EXIT_BAD_INPUT)


def schedule(plan, backend):
    """Every (call, kernel) pair to time, in plan order, and (kernel, reason) for what was left
    out: a kernel that does not take a call says why (no varlen, a head dim it lacks...)."""
    work, skipped = [], []

    def chosen(kernels):
        if plan.kernels is None:
            return list(kernels)
        by_name = {k.name: k for k in kernels}
        return [by_name[n] for n in plan.kernels if n in by_name]

    attention, gemms = chosen(backend.attention_kernels()), chosen(backend.gemm_kernels())
    for calls, kernels in ((plan.attention, attention), (plan.gemms, gemms)):
        for call in calls:
            taken = False
            for kernel in kernels:
                if taken and plan.first_only:
                    break
                reason = kernel.unsupported(call)
                if reason:
                    skipped.append((kernel.name, f"{call.shape()}: {reason}"))
                else:
                    work.append((call, kernel))
                    taken = True
            if not taken and plan.first_only:
                skipped.append(("-", f"{call.shape()}: no kernel of {plan.kernels} takes it"))
    return work, skipped


# ----------------------------------------------------------------------------------------------
# Timing


def time_call(fn, timer, warmup, repeats):
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed ones, each timed alone
    by the backend's timer (CUDA events around the call on a GPU)."""
    for _ in range(warmup):
        fn()
    timer.synchronize()
    samples = []
    for _ in range(repeats):
        token = timer.start()
        fn()
        samples.append(timer.stop(token))
    return samples


def measure(plan, backend, progress=None):
    """Times the plan's calls with the backend's kernels; returns the measurement rows (dicts
    keyed by HEADER) and the skipped (kernel, reason) pairs. A kernel that refuses a call when
    it is prepared (`Unsupported`: SDPA's cuDNN backend on a GPU it does not support, say) is
    skipped with its reason rather than stopping the run."""
    work, skipped = schedule(plan, backend)
    device = backend.device_name()
    timer = backend.timer()
    rows = []
    for i, (call, kernel) in enumerate(work):
        if progress:
            progress(f"[{i + 1}/{len(work)}] {kernel.name} {call.shape()}")
        common = dict(
            ranks=1, nodes=1, bytes="", overlapped="false", source=source(plan.source, call.tag),
            kernel=kernel.name, library=kernel.library, version=kernel.version, dtype=kernel.dtype, device=device,
        )
        try:
            prepared = kernel.prepare(call)
        except Unsupported as e:
            skipped.append((kernel.name, f"{call.shape()}: {e}"))
            kernel.release()
            continue
        if isinstance(call, GemmCall):
            t = time_call(prepared, timer, plan.warmup, plan.repeats)
            rows.append(row("gemm", "gemm", call.flops(), call.shape(), t, call.predicted_s, **common))
        else:
            fwd, bwd = prepared
            by_kernel = call.predicted_by_kernel.get(kernel.name, (None, None))
            predicted_fwd = call.predicted_fwd_s if call.predicted_fwd_s is not None else by_kernel[0]
            predicted_bwd = call.predicted_bwd_s if call.predicted_bwd_s is not None else by_kernel[1]
            if "fwd" in call.passes:
                t = time_call(fwd, timer, plan.warmup, plan.repeats)
                rows.append(row("attention_fwd", "attn_fwd", call.flops(False), call.shape(), t, predicted_fwd, **common))
            if "bwd" in call.passes and bwd is not None:
                t = time_call(bwd, timer, plan.warmup, plan.repeats)
                rows.append(row("attention_bwd", "attn_bwd", call.flops(True), call.shape(), t, predicted_bwd, **common))
        kernel.release()
    return rows, skipped


def source(base, tag):
    return f"{base} {tag}".strip() if tag else base


def row(kind, op, flops, shape, samples, predicted, **common):
    r = dict(common)
    r.update(
        kind=kind, op=op, flops=repr(float(flops)), shape=shape,
        time_s=repr(statistics.median(samples)), predicted_s="" if predicted is None else repr(float(predicted)),
        repeats=len(samples),
    )
    return r


def write_csv(path, rows):
    """The rows as the measurements CSV (written whole, then renamed: never half-written)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        # Line ends as hsap-tune's own writer makes them, so that errors name the right line.
        w = csv.DictWriter(f, fieldnames=HEADER, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in HEADER})
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The PyTorch backend (imported only when run for real)


class TorchBackend:
    """Kernels through PyTorch on one CUDA device. Raises Refusal (exit 4) naming what is
    missing: PyTorch, a CUDA build of it, a visible GPU."""

    def __init__(self, device_index=0):
        try:
            import torch
        except ImportError as e:
            raise Refusal(f"PyTorch is not importable by {sys.executable} ({e}); install a CUDA build (pip install torch)")
        if not torch.cuda.is_available():
            why = "it is a CPU-only build" if torch.version.cuda is None else "it sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
            raise Refusal(f"PyTorch {torch.__version__} cannot use CUDA: {why}")
        if device_index >= torch.cuda.device_count():
            raise Refusal(f"--device {device_index}: PyTorch sees {torch.cuda.device_count()} GPUs")
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)
        self._attention = None
        self._gemms = None

    def device_name(self):
        return self.torch.cuda.get_device_name(self.device)

    def setup(self):
        t = self.torch
        props = t.cuda.get_device_properties(self.device)
        return {
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "torch": t.__version__,
            "cuda": t.version.cuda,
            "cudnn": t.backends.cudnn.version(),
            "python": platform.python_version(),
            "kernels": {k.name: f"{k.library} {k.version}" for k in self.attention_kernels() + self.gemm_kernels()},
        }

    def timer(self):
        return CudaTimer(self.torch)

    def attention_kernels(self):
        if self._attention is None:
            self._attention = torch_attention_kernels(self)
        return self._attention

    def gemm_kernels(self):
        if self._gemms is None:
            self._gemms = [MatmulKernel(self), ScaledMmKernel(self)]
        return self._gemms


class CudaTimer:
    def __init__(self, torch):
        self.torch = torch

    def synchronize(self):
        self.torch.cuda.synchronize()

    def start(self):
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        return start, end

    def stop(self, token):
        start, end = token
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3


def torch_attention_kernels(b):
    """Every attention kernel importable here, each with what it supports."""
    t = b.torch
    kernels = []
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        SDPBackend = sdpa_kernel = None
    if sdpa_kernel is not None:
        backends = (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION"), ("sdpa_efficient", "EFFICIENT_ATTENTION"), ("sdpa_math", "MATH"))
        for name, backend in backends:
            if hasattr(SDPBackend, backend):
                kernels.append(SdpaKernel(b, name, getattr(SDPBackend, backend), sdpa_kernel))
    for module, name in (("flash_attn", "flash_attn_2"), ("flash_attn_interface", "flash_attn_3")):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        kernels.append(FlashAttnKernel(b, name, module, lib))
    try:
        import transformer_engine
        from transformer_engine.pytorch import DotProductAttention
    except ImportError:
        pass
    else:
        kernels.append(TeFusedKernel(b, DotProductAttention, getattr(transformer_engine, "__version__", "unknown")))
    return kernels


class TorchKernel:
    dtype = "bf16"

    def __init__(self, b, name, library, version):
        self.b, self.t, self.name, self.library, self.version = b, b.torch, name, library, version
        self.keep = []

    def rand(self, *shape, grad=False):
        x = self.t.randn(*shape, device=self.b.device, dtype=self.t.bfloat16)
        if grad:
            x.requires_grad_(True)
        self.keep.append(x)
        return x

    def prepare(self, call):
        """The call's timed closures; a kernel that fails on these inputs (a backend this GPU
        lacks, a head dim it was not built for, an API of another version) is `Unsupported`."""
        try:
            return self._prepare(call)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            self.release()
            raise Unsupported(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    def release(self):
        self.keep.clear()
        self.t.cuda.empty_cache()

    def backward_of(self, out, inputs):
        grad = self.t.randn_like(out)
        return lambda: self.t.autograd.grad(out, inputs, grad, retain_graph=True)


class SdpaKernel(TorchKernel):
    """torch.nn.functional.scaled_dot_product_attention with one backend forced. Dense only:
    SDPA takes no cu_seqlens. Grouped-query heads go to `enable_gqa` where PyTorch has it (2.5+),
    else K and V are expanded to every query head before timing."""

    def __init__(self, b, name, backend, sdpa_kernel):
        super().__init__(b, name, "torch", b.torch.__version__)
        self.backend, self.sdpa_kernel = backend, sdpa_kernel

    def unsupported(self, call):
        if call.varlen:
            return "scaled_dot_product_attention takes no cu_seqlens"
        if call.seqlens_q != call.seqlens_k and call.causal:
            return "SDPA's causal mask is top-left aligned for unequal lengths"
        if self.name == "sdpa_math":
            # The math backend materialises the scores (and their fp32 softmax) per head.
            scores = call.heads * call.seqlens_q[0] * call.seqlens_k[0] * 6
            free, _ = self.t.cuda.mem_get_info(self.b.device)
            if scores > free // 2:
                return f"the math backend's {scores / 2**30:.0f} GiB of scores exceed half the GPU's free memory"
        return None

    def _prepare(self, call):
        t, F = self.t, self.t.nn.functional
        lq, lk = call.seqlens_q[0], call.seqlens_k[0]
        q = self.rand(1, call.heads, lq, call.head_dim, grad=True)
        gqa = call.heads != call.kv_heads
        native = gqa and "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")
        kv_heads = call.kv_heads if (native or not gqa) else call.heads
        k = self.rand(1, kv_heads, lk, call.head_dim, grad=True)
        v = self.rand(1, kv_heads, lk, call.head_dim, grad=True)
        extra = {"enable_gqa": True} if native else {}

        def fwd():
            with self.sdpa_kernel(self.backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=call.causal, **extra)

        out = fwd()
        return fwd, self.backward_of(out, (q, k, v))


class FlashAttnKernel(TorchKernel):
    """flash_attn 2 (`flash_attn`) or FlashAttention-3 (`flash_attn_interface`): dense calls
    through flash_attn_func, packed documents through flash_attn_varlen_func."""

    def __init__(self, b, name, module, lib):
        super().__init__(b, name, module, getattr(lib, "__version__", "unknown"))
        self.lib = lib

    def unsupported(self, call):
        if call.head_dim > 256 or call.head_dim % 8:
            return f"head dim {call.head_dim} (at most 256, a multiple of 8)"
        return None

    def _prepare(self, call):
        t, lib = self.t, self.lib
        tq, tk = sum(call.seqlens_q), sum(call.seqlens_k)
        if call.varlen:
            q = self.rand(tq, call.heads, call.head_dim, grad=True)
            k = self.rand(tk, call.kv_heads, call.head_dim, grad=True)
            v = self.rand(tk, call.kv_heads, call.head_dim, grad=True)
            cu = lambda lens: t.tensor([0] + list(accumulate(lens)), device=self.b.device, dtype=t.int32)
            cq, ck = cu(call.seqlens_q), cu(call.seqlens_k)
            self.keep += [cq, ck]
            args = (q, k, v, cq, ck, max(call.seqlens_q), max(call.seqlens_k))
            fwd = lambda: first(lib.flash_attn_varlen_func(*args, causal=call.causal))
        else:
            q = self.rand(1, tq, call.heads, call.head_dim, grad=True)
            k = self.rand(1, tk, call.kv_heads, call.head_dim, grad=True)
            v = self.rand(1, tk, call.kv_heads, call.head_dim, grad=True)
            fwd = lambda: first(lib.flash_attn_func(q, k, v, causal=call.causal))
        out = fwd()
        return fwd, self.backward_of(out, (q, k, v))


class TeFusedKernel(TorchKernel):
    """Transformer Engine's DotProductAttention with its fused (cuDNN) backend forced
    (NVTE_FLASH_ATTN=0, NVTE_FUSED_ATTN=1): "thd" packed documents for varlen calls, "bshd"
    for dense ones."""

    def __init__(self, b, cls, version):
        super().__init__(b, "te_fused_attn", "transformer_engine", version)
        self.cls = cls

    def unsupported(self, call):
        if call.seqlens_q != call.seqlens_k:
            return "the harness times TE on self-attention documents only"
        return None

    def _prepare(self, call):
        os.environ["NVTE_FLASH_ATTN"] = "0"
        os.environ["NVTE_FUSED_ATTN"] = "1"
        t = self.t
        mask = "padding_causal" if call.varlen and call.causal else "padding" if call.varlen else "causal" if call.causal else "no_mask"
        fmt = "thd" if call.varlen else "bshd"
        layer = self.cls(call.heads, call.head_dim, num_gqa_groups=call.kv_heads, attn_mask_type=mask, qkv_format=fmt)
        tq = sum(call.seqlens_q)
        shape_q = (tq, call.heads, call.head_dim) if call.varlen else (1, tq, call.heads, call.head_dim)
        shape_k = (tq, call.kv_heads, call.head_dim) if call.varlen else (1, tq, call.kv_heads, call.head_dim)
        q, k, v = self.rand(*shape_q, grad=True), self.rand(*shape_k, grad=True), self.rand(*shape_k, grad=True)
        kwargs = {}
        if call.varlen:
            cu = t.tensor([0] + list(accumulate(call.seqlens_q)), device=self.b.device, dtype=t.int32)
            self.keep.append(cu)
            kwargs = dict(cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max(call.seqlens_q), max_seqlen_kv=max(call.seqlens_q))
        fwd = lambda: layer(q, k, v, **kwargs)
        out = fwd()
        return fwd, self.backward_of(out, (q, k, v))


class MatmulKernel(TorchKernel):
    """torch.matmul in bf16 (cuBLAS / cuBLASLt)."""

    def __init__(self, b):
        super().__init__(b, "matmul", "torch", b.torch.__version__)

    def unsupported(self, call):
        return None if call.dtype == "bf16" else "torch.matmul runs the bf16 GEMMs"

    def _prepare(self, call):
        a, w = self.rand(call.m, call.k), self.rand(call.k, call.n)
        return lambda: self.t.matmul(a, w)


class ScaledMmKernel(TorchKernel):
    """torch._scaled_mm: FP8 (e4m3) operands with per-tensor scales, bf16 output (Hopper, Ada
    and later; dimensions multiples of 16)."""

    dtype = "fp8"

    def __init__(self, b):
        super().__init__(b, "scaled_mm", "torch", b.torch.__version__)

    def unsupported(self, call):
        if call.dtype != "fp8":
            return "torch._scaled_mm runs the fp8 GEMMs"
        if not hasattr(self.t, "_scaled_mm") or not hasattr(self.t, "float8_e4m3fn"):
            return f"PyTorch {self.t.__version__} has no torch._scaled_mm"
        if self.t.cuda.get_device_capability(self.b.device) < (8, 9):
            return "FP8 GEMMs need compute capability 8.9 or later"
        if call.m % 16 or call.n % 16 or call.k % 16:
            return "FP8 GEMM dimensions must be multiples of 16"
        return None

    def _prepare(self, call):
        t = self.t
        a = self.rand(call.m, call.k).to(t.float8_e4m3fn)
        w = self.rand(call.n, call.k).to(t.float8_e4m3fn)
        one = t.ones((), device=self.b.device, dtype=t.float32)
        self.keep += [a, w, one]
        return lambda: first(t._scaled_mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=t.bfloat16))


class Unsupported(Exception):
    """A kernel that refused a call at run time (a backend unavailable for these inputs)."""


def first(x):
    return x[0] if isinstance(x, tuple) else x


def accumulate(xs):
    total = 0
    for x in xs:
        total += x
        yield total


# ----------------------------------------------------------------------------------------------
# The command line


def main(argv=None, backend=None):
    """Runs the harness; `backend` replaces PyTorch (tests pass a stand-in). Returns the exit
    code."""
    p = argparse.ArgumentParser(prog="hsap_kernels.py", description=__doc__.splitlines()[0])
    p.add_argument("--plan", help="the shape plan (JSON)")
    p.add_argument("--out", help="the measurements CSV to write")
    p.add_argument("--setup", help="also write the setup (GPU, driver, versions) as JSON here")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--check", action="store_true", help="say what is importable and exit (0: a GPU and PyTorch)")
    args = p.parse_args(argv)
    try:
        if backend is None:
            backend = TorchBackend(args.device)
        if args.check:
            print(json.dumps(backend.setup(), indent=2))
            return 0
        if not args.plan or not args.out:
            raise Refusal("--plan and --out are required (or --check)", EXIT_BAD_INPUT)
        plan = Plan.read(args.plan)
        if not backend.attention_kernels() and plan.attention:
            raise Refusal("no attention kernel to time: PyTorch has no torch.nn.attention, and neither flash_attn nor transformer_engine is importable")
        rows, skipped = measure(plan, backend, lambda m: print(m, file=sys.stderr, flush=True))
        for name, reason in skipped:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        write_csv(args.out, rows)
        if args.setup:
            with open(args.setup, "w") as f:
                json.dump(backend.setup(), f, indent=2)
                f.write("\n")
        print(f"wrote {args.out} ({len(rows)} rows; {len(skipped)} kernel and call pairs skipped)", file=sys.stderr)
        return 0
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
