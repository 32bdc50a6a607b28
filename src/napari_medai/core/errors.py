"""Exceptions with messages a clinician can act on.

Every error raised for bad user input derives from :class:`MedaiError`, so the GUI
can show it as a notification and the CLI can print it as one line.
"""

from __future__ import annotations


class MedaiError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class UnreadableFileError(MedaiError):
    """A file or folder could not be read as a medical image."""


class SeriesSelectionError(MedaiError):
    """A DICOM source holds several series, or not the one asked for."""


class GeometryError(MedaiError):
    """Two grids do not match, or a grid cannot be represented."""


class ModelLoadError(MedaiError):
    """A model file, package or bundle cannot be loaded (or must not be)."""


class OutputExistsError(MedaiError):
    """A write would overwrite an existing file without permission."""


class ExportError(MedaiError):
    """A mask cannot be exported in the chosen format (and what to do instead)."""
