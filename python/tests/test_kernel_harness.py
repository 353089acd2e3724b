"""The production-kernel harness (harness/hsap_kernels.py) without PyTorch: its shape plan,
timing loop and CSV output against the stand-in backend (standin_kernels.py), its rows through
`hsap-tune calibrate`, and what is refused: rows measured on a CPU for a GPU profile, rows of
hsap's reference kernels as attention efficiency, a machine without PyTorch (exit 4).
"""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from standin_kernels import VERSION, StandInBackend
from test_planner import REPO, hsap_tune

SCRIPT = REPO / "harness" / "hsap_kernels.py"
spec = importlib.util.spec_from_file_location("hsap_kernels", SCRIPT)
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)

H100 = "NVIDIA H100 80GB HBM3 (stand-in)"


def plan_file(tmp_path, **extra):
    plan = {
        "attention": [
            {"seqlens_q": [64], "heads": 4, "kv_heads": 2, "head_dim": 16, "causal": True, "varlen": False,
             "predicted_by_kernel": {"flash_attn_2": [0.001, 0.0025]}},
            {"seqlens_q": [128], "heads": 4, "kv_heads": 2, "head_dim": 16, "causal": True, "varlen": False},
            {"seqlens_q": [64, 64, 64, 64], "heads": 4, "kv_heads": 2, "head_dim": 16, "causal": True, "varlen": True},
        ],
        "gemms": [{"m": 64, "n": 96, "k": 32, "dtype": "bf16"}, {"m": 64, "n": 96, "k": 32, "dtype": "fp8"}],
        "repeats": 3,
        "warmup": 1,
        "source": "test harness",
    }
    plan.update(extra)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def run_harness(tmp_path, device, **extra):
    out = tmp_path / "kernels.csv"
    code = harness.main(["--plan", str(plan_file(tmp_path, **extra)), "--out", str(out)], backend=StandInBackend(device))
    assert code == 0
    with open(out) as f:
        return out, list(csv.DictReader(f))


def test_pairs_and_flops_follow_flashattention_conventions():
    call = lambda **kw: harness.AttentionCall({"heads": 2, "head_dim": 8, **kw})
    # Causal: L(L+1)/2 per document; full: Lq x Lk; unequal causal lengths align the last query
    # with the last key: 2 queries on 4 keys see 3 and 4; 4 queries on 2 keys, 0, 0, 1, 2.
    assert call(seqlens_q=[4]).pairs() == 10
    assert call(seqlens_q=[4, 3]).pairs() == 16
    assert call(seqlens_q=[4], causal=False).pairs() == 16
    assert call(seqlens_q=[2], seqlens_k=[4]).pairs() == 7
    assert call(seqlens_q=[4], seqlens_k=[2]).pairs() == 3
    assert call(seqlens_q=[4], pairs=5).pairs() == 5
    # 4 x pairs x heads x head_dim forward, 2.5 times that backward.
    assert call(seqlens_q=[4]).flops(False) == 4 * 10 * 2 * 8
    assert call(seqlens_q=[4]).flops(True) == 2.5 * 4 * 10 * 2 * 8
    assert harness.GemmCall({"m": 2, "n": 3, "k": 5}).flops() == 60
    # The shapes as src/gpu/harness.rs writes them for --kernels cudnn (its test
    # `pairs_flops_and_shapes_are_the_harness_s` pins the same strings).
    assert call(seqlens_q=[4, 3]).shape() == "seqlen=7;heads=2;kv_heads=2;head_dim=8;causal=1;docs=2;varlen=1"
    assert call(seqlens_q=[2], seqlens_k=[4], causal=False).shape() == "seqlen=2;seqlen_k=4;heads=2;kv_heads=2;head_dim=8;causal=0;docs=1;varlen=0"
    assert harness.GemmCall({"m": 2, "n": 3, "k": 5, "dtype": "fp8"}).shape() == "m=2;n=3;k=5"


def test_the_shape_plan_gives_each_call_the_kernels_that_take_it(tmp_path):
    plan = harness.Plan.read(plan_file(tmp_path))
    work, skipped = harness.schedule(plan, StandInBackend())
    names = [(c.shape(), k.name) for c, k in work]
    dense = "seqlen=64;heads=4;kv_heads=2;head_dim=16;causal=1;docs=1;varlen=0"
    packed = "seqlen=256;heads=4;kv_heads=2;head_dim=16;causal=1;docs=4;varlen=1"
    assert (dense, "flash_attn_2") in names and (dense, "sdpa_flash") in names and (dense, "sdpa_efficient") in names
    assert (packed, "flash_attn_2") in names and (packed, "sdpa_flash") not in names
    assert ("sdpa_flash", f"{packed}: the stand-in of a dense-only kernel takes no cu_seqlens") in skipped
    assert ("m=64;n=96;k=32", "matmul") in names and ("m=64;n=96;k=32", "scaled_mm") in names
    assert len(work) == 3 + 3 + 1 + 2
    # With a preference list and first_only: one kernel per call, the first that takes it.
    plan = harness.Plan({**json.loads(plan_file(tmp_path).read_text()), "kernels": ["sdpa_flash", "flash_attn_2", "matmul"], "first_only": True})
    work, skipped = harness.schedule(plan, StandInBackend())
    assert [(c.shape(), k.name) for c, k in work] == [
        ("seqlen=64;heads=4;kv_heads=2;head_dim=16;causal=1;docs=1;varlen=0", "sdpa_flash"),
        ("seqlen=128;heads=4;kv_heads=2;head_dim=16;causal=1;docs=1;varlen=0", "sdpa_flash"),
        (packed, "flash_attn_2"),
        ("m=64;n=96;k=32", "matmul"),
    ]
    assert ("-", "m=64;n=96;k=32: no kernel of ['sdpa_flash', 'flash_attn_2', 'matmul'] takes it") in skipped


class CountingTimer:
    """Times every call as 1, 2, 3... seconds and counts what the loop asks of it."""

    def __init__(self):
        self.started = self.synced = 0

    def synchronize(self):
        self.synced += 1

    def start(self):
        self.started += 1
        return self.started

    def stop(self, token):
        return float(token)


def test_the_timing_loop_times_only_the_repeats():
    calls = []
    timer = CountingTimer()
    samples = harness.time_call(lambda: calls.append(1), timer, warmup=2, repeats=5)
    assert len(calls) == 7 and timer.started == 5 and timer.synced == 1
    assert samples == [1.0, 2.0, 3.0, 4.0, 5.0]
    # Rows keep the median of the repeats.
    r = harness.row("gemm", "gemm", 60, "m=2;n=3;k=5", samples, None)
    assert (r["time_s"], r["repeats"], r["predicted_s"]) == ("3.0", 5, "")


def test_rows_name_kernel_library_version_dtype_and_device(tmp_path):
    out, rows = run_harness(tmp_path, H100)
    with open(out) as f:
        assert next(csv.reader(f)) == harness.HEADER
    kernels = {(r["kind"], r["kernel"], r["library"], r["version"], r["dtype"], r["device"]) for r in rows}
    assert ("attention_fwd", "flash_attn_2", "flash_attn-standin", VERSION, "bf16", H100) in kernels
    assert ("attention_bwd", "sdpa_flash", "torch-standin", VERSION, "bf16", H100) in kernels
    assert ("gemm", "scaled_mm", "torch-standin", VERSION, "fp8", H100) in kernels
    fwd = next(r for r in rows if r["kernel"] == "flash_attn_2" and "docs=4" in r["shape"] and r["kind"] == "attention_fwd")
    # Four causal documents of 64 tokens, 4 heads of 16: 4 x (4 x 2080) x 4 x 16 FLOPs.
    assert float(fwd["flops"]) == 4 * (4 * 64 * 65 // 2) * 4 * 16
    assert fwd["op"] == "attn_fwd" and fwd["repeats"] == "3" and float(fwd["time_s"]) > 0
    assert all(r["source"] == "test harness" for r in rows)
    # Each row carries the prediction given for its kernel, and only its own.
    predicted = {(r["kind"], r["kernel"]): r["predicted_s"] for r in rows if "seqlen=64;" in r["shape"] and "docs=1" in r["shape"]}
    assert predicted[("attention_fwd", "flash_attn_2")] == "0.001" and predicted[("attention_bwd", "flash_attn_2")] == "0.0025"
    assert predicted[("attention_fwd", "sdpa_flash")] == ""
    assert len(rows) == 2 * (3 + 3 + 1) + 2


def calibrate(tmp_path, csv_path, cluster="dgx-h100"):
    return subprocess.run(
        [hsap_tune(), "calibrate", "--measurements", str(csv_path), "--cluster", cluster, "--out", str(tmp_path / "profile.toml")],
        capture_output=True, text=True,
    )


def test_harness_rows_go_through_calibrate_with_their_kernels(tmp_path):
    out, _ = run_harness(tmp_path, H100)
    done = calibrate(tmp_path, out)
    assert done.returncode == 0, done.stderr
    profile = (tmp_path / "profile.toml").read_text()
    # One curve per kernel, pass and shape, each naming the kernel, its library and version.
    assert 'kernel = "flash_attn_2"' in profile and 'kernel = "sdpa_flash"' in profile
    assert f'library = "flash_attn-standin {VERSION}"' in profile
    assert 'kernel = "matmul"' in profile and 'dtype = "fp8"' in profile and 'kernel = "scaled_mm"' in profile
    assert "varlen = true" in profile and f'device = "{H100}"' in profile
    # The memory-efficient kernel prices no stack's attention: left out, and the user is told.
    assert 'kernel = "sdpa_efficient"' not in profile
    assert "attention kernel 'sdpa_efficient'" in done.stderr and "left out of the profile" in done.stderr


def test_rows_measured_on_a_cpu_are_refused_for_a_gpu_profile(tmp_path):
    out, _ = run_harness(tmp_path, "cpu")
    done = calibrate(tmp_path, out)
    assert done.returncode == 2, done.stderr
    assert "was measured on a CPU (device = cpu)" in done.stderr and "prices the GPUs of 'dgx-h100'" in done.stderr
    assert not (tmp_path / "profile.toml").exists()


def test_reference_kernel_rows_are_refused_as_attention_efficiency(tmp_path):
    out, rows = run_harness(tmp_path, H100)
    # The first attention row as `validate --kernels reference` writes it.
    i = next(i for i, r in enumerate(rows) if r["kind"] == "attention_fwd")
    rows[i].update(kernel="hsap_reference", library="hsap", version="0.1.0", op="attn_fwd_varlen")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=harness.HEADER, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    done = calibrate(tmp_path, out)
    assert done.returncode == 2, done.stderr
    assert f"kernels.csv:{i + 2}: the attn_fwd_varlen row was timed with hsap's reference attention kernels" in done.stderr
    assert "never fitted as attention efficiency" in done.stderr


def test_without_pytorch_the_harness_exits_4_naming_it(tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("PyTorch is installed here")
    except ImportError:
        pass
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 4
    assert "PyTorch is not importable" in done.stderr and "pip install torch" in done.stderr
    # A bad plan is exit 2, naming it; a missing PyTorch is found first.
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert harness.main(["--plan", str(bad), "--out", str(tmp_path / "x.csv")], backend=StandInBackend()) == 2


def test_calibrate_run_without_a_gpu_exits_4_naming_what_is_missing(tmp_path):
    done = subprocess.run(
        [hsap_tune(), "calibrate", "--run", "--kernels", "torch", "--cluster", "dgx-h100", "--out", str(tmp_path / "p.toml")],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HSAP_PYTHON": sys.executable},
    )
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    if has_torch:
        pytest.skip("PyTorch is installed here")
    assert done.returncode == 4, done.stderr
    assert "calibrate --run --kernels torch cannot run here" in done.stderr
    assert "PyTorch is not importable" in done.stderr and "panicked" not in done.stderr


@pytest.mark.parametrize("name", ["calibration-plan.json", "validate-plan.json"])
def test_the_plans_hsap_tune_writes_run_through_the_harness(tmp_path, name):
    """The binary's own plans (golden files of tests/harness_plans.rs), timed by the stand-in:
    every call is read, every kernel named is one the harness knows, and each row carries the
    prediction hsap-tune gave for its kernel."""
    path = REPO / "tests" / "data" / "harness" / name
    plan = harness.Plan.read(path)
    assert plan.attention and plan.gemms
    work, skipped = harness.schedule(plan, StandInBackend(H100))
    assert work, skipped
    if plan.kernels is not None:
        # validate: the stack's kernel names, then torch.matmul; one kernel per call.
        assert plan.first_only and plan.kernels[-1] == "matmul"
        assert len(work) == len({id(c) for c, _ in work})
    # Time a few calls of each kind (the stand-in computes on slices; the whole plan is the same loop).
    small = harness.Plan(json.loads(path.read_text()))
    small.attention, small.gemms = small.attention[:3], small.gemms[:2]
    small.repeats, small.warmup = 1, 0
    rows, _ = harness.measure(small, StandInBackend(H100))
    assert rows and all(r["device"] == H100 and r["kernel"] for r in rows)
    for r in rows:
        if r["kind"] == "gemm":
            assert float(r["predicted_s"]) > 0
        elif name == "calibration-plan.json" and r["kernel"] in ("flash_attn_2", "sdpa_flash"):
            assert float(r["predicted_s"]) > 0, r
