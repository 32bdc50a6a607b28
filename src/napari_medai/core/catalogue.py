"""Every job that runs in the worker process, named once, and the one rule for where jobs run.

The rule: a job that imports torch or MONAI, or loads a model, runs in the
worker process (:mod:`napari_medai.core.job_process`), so torch never holds
napari's GIL and a model that crashes takes only the worker down; every other
job runs in the caller's thread, as a plain generator. Docks start a worker
job by calling its entry here, never by a ``"module:function"`` string of
their own; ``tests/core/test_catalogue.py`` resolves every entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari_medai.core.jobs import Job

if TYPE_CHECKING:
    from napari_medai.core.job_process import KeptWorker


@dataclass(frozen=True)
class WorkerJob:
    """A job function that must run in the worker, named by ``"package.module:function"``.

    The name, not the function, so that napari's process never imports the
    job's module (and torch with it).
    """

    target: str

    def __call__(self, *args: Any) -> Job[Any]:
        """The job ``target(*args)``, run in the worker; its events and result come back here."""
        from napari_medai.core.job_process import run_in_process

        return run_in_process(self.target, *args)

    def on(self, worker: KeptWorker, *args: Any) -> Job[Any]:
        """The job ``target(*args)``, run in ``worker``: a process kept for its caller's state."""
        return worker.run(self.target, *args)

    def resolve(self) -> Callable[..., Job[Any]]:
        """The job function itself, imported here (what the worker does)."""
        from napari_medai.core.job_worker import resolve

        return resolve(self.target)


SEGMENT = WorkerJob("napari_medai.core.segmentation.jobs:segment_from_source_job")
TRAIN_SEGMENTATION = WorkerJob("napari_medai.core.training.trainer:train_job")
PREDICT_FOR_REVIEW = WorkerJob("napari_medai.core.segmentation.review:predict_for_review_job")
TRAIN_CLASSIFIER = WorkerJob("napari_medai.core.classification.training:train_classifier_job")
TRAIN_GAN = WorkerJob("napari_medai.core.generative.train:train_gan_job")
SAMPLE_GAN = WorkerJob("napari_medai.core.generative.sample:sample_package_job")
PREVIEW_AUGMENTATIONS = WorkerJob("napari_medai.core.generative.preview:augmentation_preview_job")
CLASSIFY = WorkerJob("napari_medai.core.classification.jobs:classify_from_source_job")
EVALUATE_CLASSIFIER = WorkerJob("napari_medai.core.classification.jobs:evaluate_from_source_job")
TRAIN_CLASSIFIER_ON_BOXES = WorkerJob("napari_medai.core.classification.jobs:train_on_boxes_job")
TRAIN_CLASSIFIER_ON_SLICES = WorkerJob(
    "napari_medai.core.classification.jobs:train_on_label_slices_job"
)

#: Every worker job, for the test that resolves them.
WORKER_JOBS = (SEGMENT, TRAIN_SEGMENTATION, PREDICT_FOR_REVIEW, TRAIN_CLASSIFIER, TRAIN_GAN)
WORKER_JOBS += (
    CLASSIFY,
    EVALUATE_CLASSIFIER,
    TRAIN_CLASSIFIER_ON_BOXES,
    TRAIN_CLASSIFIER_ON_SLICES,
)
WORKER_JOBS += (SAMPLE_GAN, PREVIEW_AUGMENTATIONS)
EVALUATE_SEGMENTATION = WorkerJob("napari_medai.core.evaluation.metrics:evaluate_job")
RUN_COHORT = WorkerJob("napari_medai.core.cohort.run:cohort_from_manifest_job")
WORKER_JOBS += (EVALUATE_SEGMENTATION, RUN_COHORT)
#: nnInteractive's prompt session lives in a kept worker between these jobs.
START_NNINTERACTIVE = WorkerJob("napari_medai.core.prompt.nninteractive_model:start_object_job")
UPDATE_NNINTERACTIVE = WorkerJob("napari_medai.core.prompt.nninteractive_model:update_object_job")
WORKER_JOBS += (START_NNINTERACTIVE, UPDATE_NNINTERACTIVE)
#: A weight-free prompt engine's session lives in a kept worker, off napari's GIL.
START_KEPT_PROMPT = WorkerJob("napari_medai.core.prompt.kept:start_session_job")
UPDATE_KEPT_PROMPT = WorkerJob("napari_medai.core.prompt.kept:update_session_job")
WORKER_JOBS += (START_KEPT_PROMPT, UPDATE_KEPT_PROMPT)
