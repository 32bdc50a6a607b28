"""Segmentation jobs that load their model first, so nothing slow runs before the job.

Importing this module is light: torch and MONAI come in with the model, when
the job runs (in a worker thread or a worker process), never when a dock opens.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.models.fit import modality_mismatch
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.segmentation.config import SegmentConfig, SegmentResult
from napari_medai.core.volume import Volume

#: Share of the progress bar given to loading the model.
LOADING_SHARE = 0.05


def load_model(source: str, trusted: bool = False) -> LoadedModel:
    """:func:`napari_medai.core.models.sources.load_model`, imported when first called."""
    from napari_medai.core.models import sources

    return sources.load_model(source, trusted=trusted)


def load_and_segment_job(
    source: str, trusted: bool, volume: Volume, config: SegmentConfig, check_modality: str = ""
) -> Job[tuple[LoadedModel, SegmentResult]]:
    """Load the model, then segment; both in the job so a slow load never blocks the GUI.

    With ``check_modality`` (the image's modality, for a model whose card was
    not known before loading), a model made for another modality is warned
    about as soon as it is loaded, before inference starts.
    """
    from napari_medai.core.segmentation.inference import segment_job

    # No fraction: loading is one step of unknown length (seconds with torch's first import).
    yield Progress(None, f"loading model {Path(source).name or source}")
    model = load_model(source, trusted=trusted)
    problem = modality_mismatch(model.card, model.name, check_modality)
    if problem is not None:
        warnings.warn(problem, UserWarning, stacklevel=1)
    yield Progress(LOADING_SHARE, f"loaded {model.name}")
    result = yield from scaled(segment_job(volume, model, config), LOADING_SHARE, 1.0)
    return model, result


def segment_from_source_job(
    source: str, trusted: bool, volume: Volume, config: SegmentConfig, check_modality: str = ""
) -> Job[tuple[str, SegmentResult]]:
    """:func:`load_and_segment_job` returning the model's name, not the loaded model.

    A loaded network stays where it was loaded, so this is the form that runs
    in a worker process (the Segment dock's), where an untrusted or broken
    model cannot take napari down with it.
    """
    model, result = yield from load_and_segment_job(source, trusted, volume, config, check_modality)
    return model.name, result
