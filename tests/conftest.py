"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from napari_medai.core.phantom import make_phantom

# napari keeps its settings in memory only: tests never read or change the developer's
# reader preferences (napari-medai sets some when it is first activated).
os.environ.setdefault("NAPARI_CONFIG", "")
# Autosave's recovery copies go to a folder of this run, never the developer's state folder.
os.environ.setdefault("NAPARI_MEDAI_RECOVERY", tempfile.mkdtemp(prefix="medai-recovery-"))

#: Real third-party test files live beside the project, never inside it.
SHARED_DATA = Path(
    os.environ.get(
        "NAPARI_MEDAI_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (only present beside the dev repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def optional_shared_data() -> Path | None:
    """The ``../shared/data`` folder, or None for tests that also run without it."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="session")
def phantom():
    """A small synthetic CT and its organ labels (fixed seed)."""
    return make_phantom(shape=(24, 64, 64), spacing=(6.0, 5.0, 5.0), seed=0)


@pytest.fixture(scope="session")
def napari_plugins():
    """Let napari find installed plugins (ours) as it does at start-up."""
    from napari.plugins import _initialize_plugins

    _initialize_plugins()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's networks on one thread: small models, less contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
