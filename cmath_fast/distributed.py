"""Data-parallel training with torch.distributed (``torchrun``, or ``cmath-fast train --ddp K``).

Every rank draws the same seeded order of global batches and takes its share of each batch's
dialogues (``share``); the model is wrapped in DistributedDataParallel, which averages the ranks'
gradients. Each loss term is a mean over the rank's own valid utterances (the weighted
cross-entropies over the rank's own sum of class weights), so averaging would be wrong whenever
the shares hold different numbers of them; every rank knows the whole batch's lengths and labels
on the host, so it rescales its terms to the global denominators (``loss_scales``) with no extra
communication: the averaged gradient is then the gradient of the combined batch's loss, whatever
the split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


def unwrap(model):
    """The model inside a DistributedDataParallel (or any ``.module`` wrapper), else the model."""
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist
        dist.barrier()

    def close(self) -> None:
        """The ranks meet, then the process group is torn down (left to process exit, gloo's
        threads can abort it)."""
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place (a CPU tensor under gloo, a device one under NCCL)."""
        import torch.distributed as dist
        dist.all_reduce(t)
        return t


def from_env(device: str) -> Optional[DistContext]:
    """The process group ``torchrun`` describes in the environment (WORLD_SIZE > 1), initialised
    on first call (NCCL on GPUs, gloo on the CPU), or None for a single process. ``device``: the
    run's --device; on GPUs each rank takes cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return DistContext(rank, world, local, f"cuda:{local}" if on_gpu else "cpu")


def share(chunk: Sequence[int], rank: int, world: int) -> Tuple[List[int], bool]:
    """Rank ``rank``'s dialogues of a global batch (every world-th one, from its rank on), and
    whether the share is empty — then it is the batch's first dialogue, weighed 0 by
    ``loss_scales``, so that every rank takes the step (DDP needs all of them)."""
    mine = list(chunk[rank::world])
    return (mine, False) if mine else ([chunk[0]], True)


def loss_scales(dialogues, chunk: Sequence[int], mine: Sequence[int], empty: bool, world: int,
                class_weights: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """(s_w, s_n): the factors on this rank's loss terms that make DDP's average of the ranks'
    gradients the gradient of the whole batch's loss: s_w = world * w_rank / w_batch for the
    weighted cross-entropies (w: the sum of the class weights of the labelled utterances; without
    class weights, their count), s_n = world * n_rank / n_batch for the other terms (n: the
    count of valid utterances). An empty share gets (0, 0)."""
    if empty:
        return 0.0, 0.0
    cw = np.asarray(class_weights, dtype=np.float64) if class_weights is not None else None

    def sums(ids):
        n = sum(len(dialogues[i]) for i in ids)
        labels = np.concatenate([np.asarray(dialogues[i].labels) for i in ids]) if ids else np.zeros(0, np.int64)
        w = float(cw[labels].sum()) if cw is not None else float(len(labels))
        return float(max(n, 1)), max(w, 1e-12)
    n_r, w_r = sums(mine)
    n_b, w_b = sums(chunk)
    return world * w_r / w_b, world * n_r / n_b
