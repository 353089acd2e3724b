"""A PyTorch sampler that asks hsap for each global batch's plan and yields, per micro-batch, this
rank's documents with its cu_seqlens (the THD form Transformer Engine's attention takes).

    torchrun --nproc-per-node 8 --nnodes 4 examples/torch_sampler.py lengths.csv

Each yielded item is a hsap.sampler.RankStep; a collate function packs the step's documents in
order, keeps the rank's token ranges (RankStep.token_ranges) and passes cu_seqlens_padded to the
attention of the rank's SP group (RankStep.group_ranks, ulysses x ring).
"""

import csv
import os
import sys

import torch
import torch.distributed as dist

import hsap
from hsap.sampler import PlannedBatches


class HsapBatchSampler(torch.utils.data.Sampler):
    """Yields one RankStep per micro-batch this rank runs."""

    def __init__(self, lengths, global_batch, planner, rank):
        super().__init__()
        self.planned = PlannedBatches(lengths, global_batch, planner, rank)

    def __iter__(self):
        return iter(self.planned)


def pack(step, tokens_of):
    """This rank's tokens of the step's packed sequence, and its cu_seqlens as a tensor."""
    packed = torch.cat([tokens_of(d)[o : o + n] for d, o, n in zip(step.documents, step.offsets, step.lengths)])
    mine = torch.cat([packed[start:end:stride] for start, end, stride in step.token_ranges])
    return mine, torch.tensor(step.cu_seqlens_padded, dtype=torch.int32)


def main(path):
    with open(path) as f:
        lengths = [int(row["tokens"]) for row in csv.DictReader(f)]
    rank = int(os.environ.get("RANK", "0"))
    nodes = int(os.environ.get("WORLD_SIZE", "8")) // 8
    planner = hsap.Planner(model="llama3-8b", cluster="dgx-h100", nodes=max(nodes, 1))
    if dist.is_available() and "RANK" in os.environ:
        dist.init_process_group("nccl")
    for step in HsapBatchSampler(lengths, 512, planner, rank):
        tokens, cu = pack(step, lambda d: torch.zeros(lengths[d], dtype=torch.long))
        print(f"batch {step.batch} micro-batch {step.microbatch}: {len(step.documents)} documents, {tokens.numel()} tokens here, group {step.ulysses}x{step.ring}, cu_seqlens_padded {cu.tolist()[:4]}...")


if __name__ == "__main__":
    main(sys.argv[1])
