"""Pure-Python core: volumes with geometry, IO, models, inference, training.

Nothing here imports napari, Qt or magicgui (checked by import-linter).
"""
