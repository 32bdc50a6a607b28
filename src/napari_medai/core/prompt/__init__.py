"""Promptable 3D segmentation of one object at a time, and fill between slices.

How a dock uses it (all in voxel indices (z, y, x) of the scan; nothing here imports napari)::

    from napari_medai.core.prompt.engine import engine_named, update_job
    from napari_medai.core.prompt.prompts import Box, Point, Prompts, Scribble

    session = engine_named("geodesic").start(volume, initial=None)  # or a bool mask to refine
    prompts = Prompts().plus(Box((z0, y0, x0), (z1, y1, x1)))      # start z == stop z: 2D box
    prompts = prompts.plus(Point((z, y, x), positive=False))       # undo: prompts.without_last()
    result = run_job(update_job(session, volume, prompts, "geodesic"))  # in a JobRunner thread
    result.mask      # LabelMap, label 1 = the object, on the scan's grid (preview, then commit)

A session keeps what it computed for the next update, so keep one per object and hand it the
whole current prompt set each time (that is how undo works); start a new session on reset or
when the scan changes. No engine imports torch, so updates run in a thread, not the worker.
``fill_between_slices`` (``interpolate.py``) fills a label painted on a few slices in 3D.
"""
