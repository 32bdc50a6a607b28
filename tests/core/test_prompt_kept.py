"""The weight-free engine in a kept worker process (core/prompt/kept.py): what the dock runs."""

from __future__ import annotations

import numpy as np
import pytest
from simulated_user import corrective_click

from napari_medai.core.phantom import make_phantom
from napari_medai.core.prompt.engine import engine_named
from napari_medai.core.prompt.kept import KeptEngine
from napari_medai.core.prompt.prompts import Box, Prompts


@pytest.fixture(scope="module")
def kept():
    engine = KeptEngine("geodesic")
    yield engine
    engine.close()


def liver_prompts(labels) -> tuple[np.ndarray, Prompts]:
    truth = labels.array == 1
    zs, ys, xs = np.nonzero(truth)
    box = Box((zs.min(), ys.min(), xs.min()), (zs.max(), ys.max(), xs.max()))
    return truth, Prompts().plus(box)


def test_the_worker_gives_the_in_process_engine_s_masks_update_after_update(kept):
    # Same engine, same prompts, same order: the same masks, whichever process computes them.
    volume, labels = make_phantom(seed=3)
    truth, prompts = liver_prompts(labels)
    spacing = np.asarray(volume.geometry.spacing)
    local, remote = engine_named().start(volume), kept.start(volume)
    for _ in range(3):
        expected = local.update(prompts)
        assert np.array_equal(remote.update(prompts), expected)
        prompts = prompts.plus(corrective_click(truth, expected, spacing))


def test_one_object_at_a_time_and_a_dead_worker_is_replaced(kept):
    volume, labels = make_phantom(seed=4)
    _truth, prompts = liver_prompts(labels)
    first, second = kept.start(volume), kept.start(volume)
    expected = first.update(prompts)
    assert np.array_equal(second.update(prompts), expected)  # the worker now holds the second
    assert np.array_equal(first.update(prompts), expected)  # the first's scan goes over again
    kept.worker._worker.process.kill()
    kept.worker._worker.process.wait()
    assert np.array_equal(first.update(prompts), expected)
