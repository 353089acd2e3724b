"""Feeding a training loop from the planner: cut the dataset's documents into global batches, plan
each batch, and hand one rank what it runs, micro-batch by micro-batch.

Every rank calls the planner on the same batch and gets the same plan (the planner is
deterministic unless milp_rounds > 0 lets HiGHS's time limit decide; then plan on one rank and
broadcast the plan's raw dict). examples/torch_sampler.py wraps this in a torch Sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Sequence

from . import Planner


@dataclass(frozen=True)
class RankStep:
    """One micro-batch of one global batch, as one rank runs it."""

    batch: int
    microbatch: int
    microbatches: int
    # Dataset indices of the group's documents, in packing order, and the pieces used.
    documents: List[int]
    offsets: List[int]
    lengths: List[int]
    # The rank's group: its global ranks (local-rank order), degrees and scheme.
    group_ranks: List[int]
    ulysses: int
    ring: int
    scheme: str
    # The rank's share of the packed sequence: (start, end, stride) ranges and THD boundaries.
    token_ranges: List[tuple]
    cu_seqlens: List[int]
    cu_seqlens_padded: List[int]


class PlannedBatches:
    """Iterates what `rank` runs: global batches of `global_batch` consecutive documents of
    `lengths` (the last one shorter unless drop_last), each planned by `planner`."""

    def __init__(self, lengths: Sequence[int], global_batch: int, planner: Planner, rank: int, drop_last: bool = False):
        if global_batch < 1:
            raise ValueError("global_batch must be at least 1")
        if not 0 <= rank < planner.gpus:
            raise ValueError(f"rank {rank} is not one of the planner's {planner.gpus} GPUs")
        self.lengths = [int(n) for n in lengths]
        self.global_batch = global_batch
        self.planner = planner
        self.rank = rank
        self.drop_last = drop_last

    def batches(self) -> Iterator[List[int]]:
        """Dataset indices of each global batch."""
        n = len(self.lengths)
        for start in range(0, n, self.global_batch):
            end = min(start + self.global_batch, n)
            if self.drop_last and end - start < self.global_batch:
                return
            yield list(range(start, end))

    def __iter__(self) -> Iterator[RankStep]:
        for k, indices in enumerate(self.batches()):
            plan = self.planner.plan_batch([self.lengths[i] for i in indices])
            for group, layout in plan.for_rank(self.rank):
                yield RankStep(
                    batch=k,
                    microbatch=group.microbatch,
                    microbatches=plan.microbatches,
                    documents=[indices[d] for d in group.documents],
                    offsets=list(group.offsets),
                    lengths=list(group.lengths),
                    group_ranks=list(group.ranks),
                    ulysses=group.ulysses,
                    ring=group.ring,
                    scheme=group.scheme,
                    token_ranges=list(layout.token_ranges),
                    cu_seqlens=list(layout.cu_seqlens),
                    cu_seqlens_padded=list(layout.cu_seqlens_padded),
                )
