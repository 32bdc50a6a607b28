"""PyTorch DDP for the trainer when it runs under ``torchrun``.

torchrun starts one process per GPU (or several on the CPU) and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; without them nothing here does anything and
training stays one process. Each optimizer step every rank draws the same
global batch (same seed, same sampler) and keeps its own shard of it, so
``world_size`` ranks with batch ``b`` see exactly the batch one process sees
with ``world_size * b`` (what ``DistributedSampler`` does for indexable data).

The trainer's loss is not a mean of per-sample losses (the Dice and the
masked cross-entropy pool voxels over the whole batch), so averaging per-rank
gradients, as DDP does, would not give the one-process gradient. Instead every
rank gathers the logits of the whole batch, computes the global loss and its
gradient with respect to the logits, and back-propagates its own slice of that
gradient; DDP's averaging then leaves exactly the gradient of the global loss.
The cost is one gather of the logits (and labels) per step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from napari_medai.core.errors import MedaiError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the ranks torchrun started (one rank: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and logs."""
        return self.rank == 0


def from_environment() -> DistributedContext:
    """The context torchrun describes in the environment (one process without it)."""
    try:
        return DistributedContext(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        )
    except ValueError as error:
        raise MedaiError(
            f"torchrun's RANK/WORLD_SIZE variables are not numbers: {error}"
        ) from error


def threads_per_rank(context: DistributedContext) -> int:
    """CPU threads for each of the ranks sharing this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // context.local_world_size)


def start(context: DistributedContext, device: torch.device) -> torch.device:
    """Join the process group (``nccl`` on GPUs, ``gloo`` on the CPU); this rank's device."""
    if not context.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def stop(context: DistributedContext, wait: bool) -> None:
    """Leave the process group; with ``wait``, once every rank got here (rank 0 saved)."""
    if context.active and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap(network: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """The network as DDP trains it (rank 0's weights broadcast to all); unchanged alone."""
    if not context.active:
        return network
    parameter = next(network.parameters())
    ids = [parameter.device.index] if parameter.device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)


def shard(tensors: tuple[torch.Tensor, ...], context: DistributedContext) -> tuple:
    """This rank's contiguous part of each tensor of a global batch."""
    if not context.active:
        return tensors
    size = len(tensors[0]) // context.world_size
    start_at = context.rank * size
    return tuple(t[start_at : start_at + size] for t in tensors)


def global_loss(
    loss: Callable[..., torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    context: DistributedContext,
) -> torch.Tensor:
    """``loss`` of the whole global batch; backward gives this rank's share of its gradient.

    The gathered logits are a detached copy, so the loss's gradient with respect
    to them is computed here (a local backward), and this rank's slice of it,
    times the world size, is what flows into the network: DDP's averaging over
    ranks then yields the gradient of the global loss. Collectives here are
    plain all-gathers (gloo and nccl both have them) outside DDP's backward.
    """
    if not context.active:
        return loss(logits, target, mask)
    size = len(logits)
    gathered = torch.cat(_gather(logits.detach(), context)).requires_grad_(True)
    targets = torch.cat(_gather(target, context))
    # gloo gathers no bool tensors: the mask travels as bytes.
    masks = torch.cat(_gather(mask.to(torch.uint8), context)).bool()
    with torch.enable_grad():
        value = loss(gathered, targets, masks)
        (gradient,) = torch.autograd.grad(value, gathered)
    mine = gradient[context.rank * size : (context.rank + 1) * size]
    surrogate = (logits * mine).sum() * context.world_size
    # The global loss as value, the surrogate's gradient as gradient.
    return surrogate - surrogate.detach() + value.detach()


def _gather(tensor: torch.Tensor, context: DistributedContext) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def agree(go_on: bool, context: DistributedContext) -> bool:
    """Rank 0's decision, for every rank (time budgets differ by a few ms between ranks)."""
    if not context.active:
        return go_on
    flag = torch.tensor([int(go_on)])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.broadcast(flag, src=0)
    return bool(flag.item())
