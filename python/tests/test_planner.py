"""The Python package against the command line: the same batch, the same plan.

The CLI is the hsap-tune binary of this checkout: $HSAP_TUNE, or $CARGO_TARGET_DIR/release/hsap-tune
(scripts/test builds both). A missing binary is a failure, not a skip: the comparison is the point.
"""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

import hsap
from hsap.sampler import PlannedBatches

REPO = Path(__file__).resolve().parents[2]

# The first 48 conversations of traces/sarathi_sharegpt8k_llama2_total.csv and three long
# documents: groups of several shapes on two A100 nodes.
def sharegpt_lengths(n):
    with open(REPO / "traces" / "sarathi_sharegpt8k_llama2_total.csv") as f:
        return [int(row["tokens"]) for _, row in zip(range(n), csv.DictReader(f))]


LENGTHS = sharegpt_lengths(48) + [61_000, 23_456, 40_960]
SETUP = dict(model="gpt-7b", cluster="a100-40g-ib400", nodes=2)


def same(a, b):
    """Equal, floats to a part in 1e15."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-15 * max(abs(a), abs(b))
    return a == b


def hsap_tune():
    explicit = os.environ.get("HSAP_TUNE")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "hsap" / "target"))
    path = Path(target) / "release" / "hsap-tune"
    if not path.is_file():
        pytest.fail(f"no hsap-tune binary at {path}: build it (cargo build --release) or set HSAP_TUNE")
    return str(path)


def cli_plan(tmp_path, lengths, extra=()):
    trace = tmp_path / "batch.csv"
    trace.write_text("tokens\n" + "".join(f"{n}\n" for n in lengths))
    out = tmp_path / "run"
    cmd = [
        hsap_tune(), "--trace", str(trace), "--global-batch", str(len(lengths)),
        "--model", SETUP["model"], "--cluster", SETUP["cluster"], "--nodes", str(SETUP["nodes"]),
        "--no-simulate", "--no-report", "--out", str(out), *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return out / "plan.json"


def test_plan_batch_is_the_clis_plan_of_that_batch(tmp_path):
    plan_json = cli_plan(tmp_path, LENGTHS, ["--baselines", "none"])
    written = json.loads(plan_json.read_text())
    assert len(written["batches"]) == 1
    planned = hsap.Planner(**SETUP).plan_batch(LENGTHS)
    assert planned.raw == written["batches"][0]
    # The objects say what the dict says.
    assert sum(len(g.documents) for g in planned.groups) == len(LENGTHS)
    assert sorted(d for g in planned.groups for d in g.documents) == list(range(len(LENGTHS)))
    for m in range(planned.microbatches):
        ranks = sorted(r for g in planned.groups if g.microbatch == m for r in g.ranks)
        assert ranks == list(range(16)), "every GPU in exactly one group per micro-batch"


def test_with_a_baseline_as_incumbent_the_plans_agree_too(tmp_path):
    plan_json = cli_plan(tmp_path, LENGTHS, ["--baselines", "static-ulysses"])
    written = json.loads(plan_json.read_text())
    planned = hsap.Planner(**SETUP, baselines=["static-ulysses"]).plan_batch(LENGTHS)
    assert planned.raw == written["batches"][0]


def test_read_plan_streams_the_written_batches(tmp_path):
    lengths = sharegpt_lengths(40)
    trace = tmp_path / "t.csv"
    trace.write_text("tokens\n" + "".join(f"{n}\n" for n in lengths))
    out = tmp_path / "run"
    subprocess.run(
        [hsap_tune(), "--trace", str(trace), "--global-batch", "16", "--nodes", "1", "--baselines", "none",
         "--no-simulate", "--no-report", "--out", str(out)],
        check=True, capture_output=True,
    )
    written = json.loads((out / "plan.json").read_text())
    batches = list(hsap.read_plan(out / "plan.json"))
    # hsap's reader parses floats as serde_json does by default, which may move a last digit.
    assert same([b.raw for b in batches], written["batches"])
    assert [b.index for b in batches] == [0, 1, 2]
    assert hsap.PlanFile(out / "plan.json").header["strategy"] == "hsap"


def test_bad_input_is_a_value_error_with_hsaps_hint():
    with pytest.raises(ValueError, match="unknown model"):
        hsap.Planner(model="no-such-model")
    planner = hsap.Planner(**SETUP, max_seq=8192)
    with pytest.raises(ValueError, match="longer than max_seq 8192"):
        planner.plan_batch([100, 9000])
    with pytest.raises(ValueError, match="length 0"):
        planner.plan_batch([100, 0])


def test_read_plan_refuses_a_plan_that_fails_the_check(tmp_path):
    plan_json = cli_plan(tmp_path, LENGTHS[:20], ["--baselines", "none"])
    broken = json.loads(plan_json.read_text())
    broken["batches"][0]["microbatches"][0]["groups"][0]["ranks"][0] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(ValueError):
        list(hsap.read_plan(bad))


def test_the_sampler_hands_each_rank_its_share_of_every_document():
    planner = hsap.Planner(**SETUP)
    lengths = sharegpt_lengths(60)
    tokens = {}
    for rank in range(planner.gpus):
        for step in PlannedBatches(lengths, 30, planner, rank):
            held = sum(len(range(s, e, st)) for s, e, st in step.token_ranges)
            assert held == step.cu_seqlens[-1]
            for d in step.documents:
                tokens.setdefault(d, set()).add(step.batch)
            tokens.setdefault(("held", step.batch, step.microbatch, tuple(step.group_ranks)), 0)
            tokens[("held", step.batch, step.microbatch, tuple(step.group_ranks))] += held
    # Every document is planned in the batch of its position, and each group's ranks hold
    # exactly its documents' tokens.
    assert all(tokens[d] == {d // 30} for d in range(60))
    planned = [planner.plan_batch(lengths[:30]), planner.plan_batch(lengths[30:])]
    for k, plan in enumerate(planned):
        for g in plan.groups:
            assert tokens[("held", k, g.microbatch, tuple(g.ranks))] == sum(g.lengths)
