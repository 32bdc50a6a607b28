"""Pick the torch device, mixed precision, and the out-of-memory fallback ladder.

On a GPU out-of-memory error, inference steps down instead of failing:
(1) stitch the windows on the CPU, (2) halve the window batch (repeatedly,
down to one window), (3) run the network on the CPU. :func:`next_fallback`
is the ladder as a pure function so it can be tested without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch

from napari_medai.core.errors import MedaiError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
CPU = torch.device("cpu")


def _cuda_available(index: int) -> bool:
    return torch.cuda.is_available() and index < torch.cuda.device_count()


def _mps_available() -> bool:
    return bool(torch.backends.mps.is_available())


def choose_device(name: str) -> torch.device:
    """The device for ``name``: auto | cpu | cuda | cuda:N | mps.

    ``auto`` takes CUDA, then Apple MPS, then the CPU. Asking for a device this
    machine does not have raises :class:`MedaiError` saying so.
    """
    text = str(name).strip().lower()
    if text == "auto":
        if _cuda_available(0):
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else CPU
    if text == "cpu":
        return CPU
    if text == "mps":
        if not _mps_available():
            raise MedaiError(
                "device 'mps' was asked for, but this machine has no Apple GPU that PyTorch "
                "can use; choose 'auto' or 'cpu'"
            )
        return torch.device("mps")
    kind, _, index_text = text.partition(":")
    if kind == "cuda" and (index_text == "" or index_text.isdigit()):
        index = int(index_text or 0)
        if not _cuda_available(index):
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            build = "built without CUDA" if torch.version.cuda is None else "built with CUDA"
            raise MedaiError(
                f"device {text!r} was asked for, but PyTorch sees {found} CUDA GPU(s) here "
                f"(torch {torch.__version__}, {build}); choose 'auto' or 'cpu'"
            )
        return torch.device(text)
    raise MedaiError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_NAMES)}")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """float16 mixed precision on CUDA; full precision everywhere else."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a GPU running out of memory (CUDA, or MPS's RuntimeError)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "MPS backend out of memory" in str(error)


def release_memory(device: torch.device) -> None:
    """Return cached GPU memory to the driver (no-op on the CPU)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and _mps_available():
        torch.mps.empty_cache()


@dataclass(frozen=True)
class Placement:
    """Where the network runs, where windows are stitched, and how many run at once."""

    compute: torch.device
    merge: torch.device
    batch: int


def next_fallback(placement: Placement) -> tuple[Placement, str] | None:
    """The next rung down after running out of GPU memory, with a message for the user.

    ``None`` when nothing is left to try (already one window at a time on the CPU).
    """
    if placement.merge.type != "cpu":
        return (
            replace(placement, merge=CPU),
            f"out of memory on {placement.merge}: stitching the windows on the CPU instead",
        )
    if placement.batch > 1:
        batch = placement.batch // 2
        return (
            replace(placement, batch=batch),
            f"out of memory on {placement.compute}: running {batch} window(s) at a time "
            f"instead of {placement.batch}",
        )
    if placement.compute.type != "cpu":
        return (
            replace(placement, compute=CPU),
            f"out of memory on {placement.compute}: running on the CPU instead",
        )
    return None
