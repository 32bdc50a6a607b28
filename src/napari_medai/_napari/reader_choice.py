"""Make napari-medai the reader napari uses for medical files and DICOM folders, once.

napari asks "Choose reader" whenever two plugins can read a path, and its own
reader claims every folder, so a DICOM folder always asked and "napari
builtins" (pixels, no geometry) was preselected. napari skips the question for
paths matching a pattern in its reader preferences
(``settings.plugins.extension2reader``; a folder is matched as its real path
plus a trailing separator). :func:`claim_medical_readers` adds our patterns
there the first time the plugin is activated, leaves every pattern the user
has already given to another reader alone, says in a notification what it set
and how to undo it, and never sets anything again in that settings folder, so
a pattern the user removes stays removed.

Limit: napari activates a plugin (runs its npe2 ``on_activate``) only when one
of its contributions is first used, and it picks readers from the manifests'
filename patterns without running plugin code. npe2 has no start-up activation
(open discussion: napari/npe2#139; napari dropped plugin start-up hooks with
npe2 on purpose, napari/napari#9261 asks for opt-in start-up items). So in a
napari where napari-medai has never been used, the very first File > Open of a
file or folder napari's own reader also accepts still asks; picking
napari-medai there activates the plugin and ends the question for good. The
demo launcher (``scripts/launch_demo.py``) activates the plugin at start, so it never
asks; so does ``napari -w napari-medai Segment``, which docks a widget at start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import napari
from napari.settings import NapariSettings, get_settings
from napari.utils.notifications import show_info

logger = logging.getLogger(__name__)

PLUGIN = "napari-medai"
#: Our reader preferences, each with a path it must match (to find user choices).
READER_PATTERNS = {
    "*.nii": "scan.nii",
    "*.nii.gz": "scan.nii.gz",
    "*.hdr": "scan.hdr",
    "*.hdr.gz": "scan.hdr.gz",
    "*.nrrd": "scan.nrrd",
    "*.nhdr": "scan.nhdr",
    "*.mha": "scan.mha",
    "*.mhd": "scan.mhd",
    "*.mgz": "scan.mgz",
    "*.mgh": "scan.mgh",
    "*.dcm": "slice.dcm",
    "*.DCM": "slice.DCM",
    "*.dicom": "slice.dicom",
    "*.ima": "slice.ima",
    "*.IMA": "slice.IMA",
    "*.zip": "series.zip",
    # Every folder: napari-medai reads those holding DICOM; for others napari
    # reports our refusal and offers its remaining readers.
    f"*{os.sep}": f"series{os.sep}",
}
#: Beside napari's settings file: records that the preferences were offered.
MARKER_NAME = "napari-medai-reader-preferences.json"
#: Stands in for the marker file when napari's settings live only in memory (tests).
_offered_in_memory: set[int] = set()


def activate(context: Any = None) -> None:
    """npe2 ``on_activate``: runs when any napari-medai contribution is first used."""
    try:
        claim_medical_readers()
    except Exception:  # a failed preference must never stop the plugin from loading
        logger.warning("could not set napari's reader preferences", exc_info=True)
    try:
        from napari_medai._napari.autosave import start

        start()
    except Exception:  # nor may a failed autosave: it says so in the log
        logger.warning("could not start autosaving Labels layers", exc_info=True)
    try:
        from napari_medai._napari.window_level import install

        viewer = napari.current_viewer()
        if viewer is not None:
            install(viewer)  # Ctrl+drag sets window/level before any dock is opened
    except Exception:  # nor may the mouse binding
        logger.warning("could not add window/level by mouse drag", exc_info=True)


def claim_medical_readers(settings: NapariSettings | None = None) -> list[str]:
    """Set napari-medai as the reader for our patterns the user has not assigned; return them.

    Runs once per napari settings folder; later calls return [].
    """
    settings = settings or get_settings()
    if _was_offered(settings):
        return []
    current = dict(settings.plugins.extension2reader)
    claimed = [
        pattern
        for pattern, example in READER_PATTERNS.items()
        if pattern not in current and _user_choice(current, example) is None
    ]
    if claimed:
        settings.plugins.extension2reader = {**current, **dict.fromkeys(claimed, PLUGIN)}
        show_info(
            "napari-medai now opens medical images and DICOM folders by default, with their "
            "position in the scanner and without a 'Choose reader' question. To undo: "
            "File > Preferences > Plugins, and remove or reassign these filename patterns: "
            f"{_describe(claimed)}."
        )
    _mark_offered(settings, claimed)
    return claimed


def _user_choice(preferences: dict[str, str], example: str) -> str | None:
    """The reader an existing preference gives ``example``, when it is not ours."""
    from fnmatch import fnmatch

    for pattern, reader in preferences.items():
        if reader != PLUGIN and fnmatch(f"{os.sep}data{os.sep}{example}", pattern):
            return reader
    return None


def _describe(patterns: list[str]) -> str:
    return ", ".join(f"{p} (every folder)" if p.endswith(os.sep) else p for p in patterns)


def _marker(settings: NapariSettings) -> Path | None:
    path = settings.config_path
    return Path(path).parent / MARKER_NAME if path else None


def _was_offered(settings: NapariSettings) -> bool:
    marker = _marker(settings)
    return marker.exists() if marker else id(settings) in _offered_in_memory


def _mark_offered(settings: NapariSettings, claimed: list[str]) -> None:
    marker = _marker(settings)
    if marker is None:
        _offered_in_memory.add(id(settings))
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"claimed": claimed}, indent=2), encoding="utf-8")
