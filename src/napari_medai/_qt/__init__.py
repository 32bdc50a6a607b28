"""Thin Qt widgets for napari: they collect settings, run core jobs, show results.

Compute lives in :mod:`napari_medai.core`; long work runs through
:class:`napari_medai._qt.job_runner.JobRunner`.
"""
