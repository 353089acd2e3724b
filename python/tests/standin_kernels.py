"""A STAND-IN for PyTorch in the kernel harness's tests: not a kernel library, not a GPU.

It has the call surface of the harness's `TorchBackend` (device_name, setup, timer,
attention_kernels, gemm_kernels; each kernel with name, library, version, dtype, unsupported,
prepare, release) and computes in plain Python on a small slice of each call (the first
document's first tokens, one head, a few dimensions), so that the harness's shape plan, timing
loop and CSV output run in CI, where PyTorch is not installed. Its names and versions carry
"standin" so that nothing it writes can pass for a measurement.
"""

import math
import time

VERSION = "0.0+standin"

# At most this many tokens and dimensions of a call are computed.
SLICE = 8


class PerfTimer:
    def synchronize(self):
        pass

    def start(self):
        return time.perf_counter()

    def stop(self, token):
        return time.perf_counter() - token


class StandInBackend:
    def __init__(self, device="cpu"):
        self.device = device

    def device_name(self):
        return self.device

    def setup(self):
        return {"gpu": self.device, "torch": None, "standin": VERSION,
                "kernels": {k.name: f"{k.library} {k.version}" for k in self.attention_kernels() + self.gemm_kernels()}}

    def timer(self):
        return PerfTimer()

    def attention_kernels(self):
        return [
            StandInAttention("flash_attn_2", "flash_attn-standin", varlen=True),
            StandInAttention("sdpa_flash", "torch-standin", varlen=False),
            StandInAttention("sdpa_efficient", "torch-standin", varlen=False),
        ]

    def gemm_kernels(self):
        return [StandInGemm("matmul", "bf16"), StandInGemm("scaled_mm", "fp8")]


def values(n, seed):
    """Deterministic numbers in [-1, 1)."""
    return [((i * 7919 + seed * 104729) % 2000) / 1000.0 - 1.0 for i in range(n)]


def attention(q, k, v, causal, offset):
    """Softmax attention of query rows q over key rows k, v; query i sees keys up to i + offset."""
    out = []
    scale = 1.0 / math.sqrt(len(q[0]))
    for i, qi in enumerate(q):
        seen = range(len(k)) if not causal else range(max(0, min(len(k), i + offset + 1)))
        scores = [sum(a * b for a, b in zip(qi, k[j])) * scale for j in seen]
        if not scores:
            out.append([0.0] * len(v[0]))
            continue
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        out.append([sum(w * v[j][c] for w, j in zip(weights, seen)) / total for c in range(len(v[0]))])
    return out


class StandInAttention:
    dtype = "bf16"

    def __init__(self, name, library, varlen):
        self.name, self.library, self.version, self.varlen = name, library, VERSION, varlen
        self.calls = 0

    def unsupported(self, call):
        if call.varlen and not self.varlen:
            return "the stand-in of a dense-only kernel takes no cu_seqlens"
        return None

    def prepare(self, call):
        lq, lk = min(call.seqlens_q[0], SLICE), min(call.seqlens_k[0], SLICE)
        d = min(call.head_dim, SLICE)
        rows = lambda n, seed: [values(d, seed * 31 + r) for r in range(n)]
        q, k, v = rows(lq, 1), rows(lk, 2), rows(lk, 3)
        offset = call.seqlens_k[0] - call.seqlens_q[0]

        def fwd():
            self.calls += 1
            return attention(q, k, v, call.causal, offset)

        def bwd():
            # The value gradient of a unit output gradient: column sums of the probabilities.
            self.calls += 1
            return attention(k, q, v[:lq] if lq <= lk else v, False, 0)

        return fwd, bwd

    def release(self):
        pass


class StandInGemm:
    def __init__(self, name, dtype):
        self.name, self.library, self.version, self.dtype = name, "torch-standin", VERSION, dtype

    def unsupported(self, call):
        return None if call.dtype == self.dtype else f"the stand-in {self.name} runs {self.dtype}"

    def prepare(self, call):
        m, n, k = (min(x, SLICE) for x in (call.m, call.n, call.k))
        a, b = [values(k, r) for r in range(m)], [values(n, 100 + r) for r in range(k)]
        return lambda: [[sum(a[i][j] * b[j][c] for j in range(k)) for c in range(n)] for i in range(m)]

    def release(self):
        pass
