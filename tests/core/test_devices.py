"""Device choice, mixed precision and the out-of-memory fallback ladder."""

from __future__ import annotations

import warnings

import pytest
import torch

from napari_medai.core.devices import (
    CPU,
    Placement,
    autocast,
    choose_device,
    is_out_of_memory,
    next_fallback,
)
from napari_medai.core.errors import MedaiError

CUDA = torch.device("cuda")


def test_cpu_and_auto():
    assert choose_device("cpu") == CPU
    assert choose_device(" CPU ") == CPU
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert choose_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_absent_cuda_is_a_clear_error(name):
    with pytest.raises(MedaiError, match=rf"device '{name}' was asked for.*0 CUDA GPU.*'cpu'"):
        choose_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an Apple GPU")
def test_absent_mps_is_a_clear_error():
    with pytest.raises(MedaiError, match="no Apple GPU"):
        choose_device("mps")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(MedaiError, match="unknown device"):
        choose_device(name)


def test_mixed_precision_only_on_cuda():
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constructing it on a CPU-only build warns
        context = autocast(CUDA)
    assert isinstance(context, torch.autocast)
    assert context.device == "cuda"
    assert context.fast_dtype == torch.float16


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_fallback_ladder_steps_down_in_order():
    placement = Placement(CUDA, CUDA, 4)
    steps = []
    while (step := next_fallback(placement)) is not None:
        placement, message = step
        steps.append(((placement.compute.type, placement.merge.type, placement.batch), message))
    assert [state for state, _ in steps] == [
        ("cuda", "cpu", 4),  # (1) stitch on the CPU
        ("cuda", "cpu", 2),  # (2) halve the window batch ...
        ("cuda", "cpu", 1),  # ... down to one window
        ("cpu", "cpu", 1),  # (3) run on the CPU
    ]
    messages = [message for _, message in steps]
    assert "stitching the windows on the CPU" in messages[0]
    assert "2 window(s) at a time instead of 4" in messages[1]
    assert "1 window(s) at a time instead of 2" in messages[2]
    assert "running on the CPU" in messages[3]


def test_ladder_on_the_cpu_only_halves_the_batch():
    step = next_fallback(Placement(CPU, CPU, 3))
    assert step is not None
    assert step[0] == Placement(CPU, CPU, 1)
    assert next_fallback(Placement(CPU, CPU, 1)) is None
