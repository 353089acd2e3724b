"""hsap from Python: plan each global batch's sequence-parallel groups inside a training loop.

    import hsap
    planner = hsap.Planner(model="llama3-8b", cluster="dgx-h100", nodes=4)
    plan = planner.plan_batch([8123, 512, 130_000, ...])   # document lengths, in tokens
    for group in plan.groups:
        group.ranks, group.ulysses, group.ring, group.documents
        group.rank_layouts[0].cu_seqlens_padded              # THD form, for Transformer Engine

The planner is hsap-tune's (the same cost model, solver and plan form): `plan_batch(lengths)`
returns the batch `hsap-tune --trace B --global-batch len(B) --limit-batches 1` writes into
plan.json. `read_plan(path)` reads a written plan.json batch by batch. docs/python.md has it all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ._hsap import PLAN_FORMAT_VERSION, NativePlanner, NativePlanReader

__all__ = [
    "PLAN_FORMAT_VERSION",
    "Planner",
    "BatchPlan",
    "Group",
    "RankLayout",
    "PlanFile",
    "read_plan",
]

# hsap-tune's defaults (src/tune.rs, src/cli/tune.rs).
DEFAULT_MAX_SEQ = 196_608
DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_FLEXSP_TIME_LIMIT_S = 1.0


@dataclass(frozen=True)
class RankLayout:
    """One GPU's share of a group's packed sequence."""

    rank: int
    slot: int
    # (start, end, stride) in the group's packed, unpadded token sequence.
    token_ranges: List[tuple]
    # Document boundaries of the rank's shard, unpadded and in the padded THD form.
    cu_seqlens: List[int]
    cu_seqlens_padded: List[int]

    @classmethod
    def _from(cls, raw: Dict[str, Any]) -> "RankLayout":
        ranges = [(r["start"], r["end"], r.get("stride", 1)) for r in raw["token_ranges"]]
        return cls(raw["rank"], raw["slot"], ranges, list(raw["cu_seqlens"]), list(raw["cu_seqlens_padded"]))


@dataclass(frozen=True)
class Group:
    """One SP group of one micro-batch: its GPUs, degrees and documents."""

    microbatch: int
    ranks: List[int]
    ulysses: int
    ring: int
    scheme: str
    ring_variant: str
    # Indices of the batch's documents (positions in the lengths passed to plan_batch, or trace
    # indices in a plan.json), in packing order; offsets and lengths of the pieces used.
    documents: List[int]
    offsets: List[int]
    lengths: List[int]
    rank_layouts: List[RankLayout]
    predicted_ms: float
    predicted_memory_bytes: float

    @property
    def size(self) -> int:
        return self.ulysses * self.ring


@dataclass(frozen=True)
class BatchPlan:
    """One global batch's plan: micro-batches in order, each a set of groups covering every GPU."""

    index: int
    groups: List[Group]
    microbatches: int
    predicted_step_ms: float
    predicted_peak_memory_bytes: float
    # The batch exactly as plan.json holds it.
    raw: Dict[str, Any]

    @classmethod
    def _from_json(cls, text: str) -> "BatchPlan":
        raw = json.loads(text)
        groups = []
        for m, micro in enumerate(raw["microbatches"]):
            for g in micro["groups"]:
                groups.append(
                    Group(
                        microbatch=m,
                        ranks=list(g["ranks"]),
                        ulysses=g["ulysses"],
                        ring=g["ring"],
                        scheme=g["scheme"],
                        ring_variant=g["ring_variant"],
                        documents=[d["index"] for d in g["docs"]],
                        offsets=[d["offset"] for d in g["docs"]],
                        lengths=[d["len"] for d in g["docs"]],
                        rank_layouts=[RankLayout._from(r) for r in g["rank_layouts"]],
                        predicted_ms=1e3 * g["predicted_time_s"],
                        predicted_memory_bytes=g["predicted_memory_bytes"],
                    )
                )
        return cls(
            index=raw["index"],
            groups=groups,
            microbatches=len(raw["microbatches"]),
            predicted_step_ms=1e3 * raw["predicted_step_s"],
            predicted_peak_memory_bytes=raw["predicted_peak_memory_bytes"],
            raw=raw,
        )

    def for_rank(self, rank: int) -> List[tuple]:
        """What one GPU runs: per micro-batch, its group and its layout in that group."""
        out = []
        for g in self.groups:
            for layout in g.rank_layouts:
                if layout.rank == rank:
                    out.append((g, layout))
        if not out:
            raise ValueError(f"rank {rank} is in no group of batch {self.index}")
        return out


class Planner:
    """Plans global batches for one model on one cluster, as hsap-tune does.

    model, cluster: a preset name or a file (model TOML or Hugging Face config.json; cluster
    TOML or calibrated profile); nodes: nodes in use (default: the preset's); stack: a software
    stack preset or TOML; zero, checkpointing, tp, pp: how training runs (hsap-tune's --zero,
    --checkpointing, --tp, --pp); max_seq, time_limit_s, milp_rounds, baselines,
    flexsp_time_limit_s: hsap-tune's --max-seq, --time-limit, --milp-rounds, --baselines and
    --flexsp-time-limit. Bad input raises ValueError with hsap's message and hint.
    """

    def __init__(
        self,
        model: str = "gpt-7b",
        cluster: str = "a100-40g-ib400",
        nodes: Optional[int] = None,
        stack: Optional[str] = None,
        zero: int = 3,
        checkpointing: str = "full",
        tp: int = 1,
        pp: int = 1,
        max_seq: int = DEFAULT_MAX_SEQ,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        milp_rounds: int = 0,
        baselines: Sequence[str] = (),
        flexsp_time_limit_s: float = DEFAULT_FLEXSP_TIME_LIMIT_S,
    ) -> None:
        self._native = NativePlanner(
            str(model),
            str(cluster),
            nodes,
            None if stack is None else str(stack),
            zero,
            checkpointing,
            tp,
            pp,
            max_seq,
            float(time_limit_s),
            milp_rounds,
            list(baselines),
            float(flexsp_time_limit_s),
        )

    @property
    def gpus(self) -> int:
        return self._native.gpus

    @property
    def gpus_per_node(self) -> int:
        return self._native.gpus_per_node

    def plan_batch(self, lengths: Sequence[int]) -> BatchPlan:
        """The plan of one global batch of documents of these lengths (tokens, in order)."""
        return BatchPlan._from_json(self._native.plan_batch_json([int(n) for n in lengths]))


class PlanFile:
    """A plan.json, checked as hsap's readers check it; iterate it for its batches."""

    def __init__(self, path: str) -> None:
        self._native = NativePlanReader(str(path))
        self.header: Dict[str, Any] = json.loads(self._native.header_json())

    def __iter__(self) -> Iterator[BatchPlan]:
        for text in self._native:
            yield BatchPlan._from_json(text)


def read_plan(path: str) -> Iterator[BatchPlan]:
    """The batches of a written plan.json, one at a time."""
    return iter(PlanFile(path))
