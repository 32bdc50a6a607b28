"""Recovery copies of the label maps being edited: where they live, what they hold, pruning.

napari keeps painting in memory only. The autosave (``_napari/autosave.py``)
writes every edited Labels layer here within seconds, so a killed napari loses
nothing; the next napari offers the copies back, and ``napari-medai recover``
lists and writes them. Each copy is a folder ``<id>/`` holding:

- ``labels.nii.gz``: the label map on its scan's grid (written and read back
  through :func:`write_label_map`, atomically);
- ``labels.json``: the sidecar the writer saves beside a mask (label names,
  volumes, the grid in full precision: NIfTI keeps 32-bit floats);
- ``entry.json``: the layer's name, its scan's name, when it was saved and
  which napari process wrote it. Written last: a folder without it is
  incomplete (the process was killed during its first save) and not listed.

The folder is ``$NAPARI_MEDAI_RECOVERY`` or, by default, ``recovery`` in the
user's state folder (platformdirs). Copies not saved for :data:`MAX_AGE_DAYS`
days go first, then the oldest until all take at most :data:`MAX_TOTAL_BYTES`;
copies of a running napari are never pruned.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs
import psutil

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.reading import SAME_GRID_TOLERANCE, read_label_map
from napari_medai.core.io.writing import label_sidecar, write_label_map, write_sidecar
from napari_medai.core.volume import LabelMap

logger = logging.getLogger(__name__)

RECOVERY_ENV = "NAPARI_MEDAI_RECOVERY"
#: Copies not saved for this many days are pruned.
MAX_AGE_DAYS = 14
#: The recovery folder is pruned, oldest first, down to this size (2 GiB: about 25 copies
#: of a 512 x 512 x 300 CT's labels even uncompressed; compressed masks take far less).
MAX_TOTAL_BYTES = 2 << 30
#: A folder without ``entry.json`` this old was left by a process killed while saving.
_INCOMPLETE_AFTER_S = 3600.0

LABELS_FILE = "labels.nii.gz"
SIDECAR_FILE = "labels.json"
ENTRY_FILE = "entry.json"


class RecoveryError(MedaiError):
    """A recovery copy that does not exist or cannot be read."""


def recovery_folder() -> Path:
    """Where recovery copies live: ``$NAPARI_MEDAI_RECOVERY`` or the user's state folder."""
    override = os.environ.get(RECOVERY_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_state_dir("napari-medai", appauthor=False)) / "recovery"


@dataclass(frozen=True)
class RecoveryEntry:
    """One recovery copy: the layer and scan it belongs to, when and by whom it was saved.

    ``pid`` and ``started`` (the process's start time, seconds since the epoch)
    identify the napari that wrote it, so a reused process id is not taken for it.
    """

    id: str
    layer: str
    scan: str | None
    time: float
    pid: int
    started: float
    folder: Path

    @property
    def labels_path(self) -> Path:
        return self.folder / LABELS_FILE

    @property
    def sidecar_path(self) -> Path:
        return self.folder / SIDECAR_FILE

    def is_running(self) -> bool:
        """Whether the napari that wrote this copy is still running (its copy is live)."""
        return _process_started(self.pid) == self.started

    def summary(self) -> dict[str, Any]:
        """What ``recover --list`` prints for this copy."""
        return {
            "id": self.id,
            "layer": self.layer,
            "scan": self.scan,
            "time": datetime.fromtimestamp(self.time).isoformat(timespec="seconds"),
            "running": self.is_running(),
        }


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started, or None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def new_entry(layer: str, scan: str | None, root: Path | None = None) -> RecoveryEntry:
    """A new, not yet saved, recovery copy of ``layer`` for this process."""
    folder = root or recovery_folder()
    entry_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    pid = os.getpid()
    started = _process_started(pid) or 0.0
    return RecoveryEntry(entry_id, layer, scan, time.time(), pid, started, folder / entry_id)


def adopt(entry: RecoveryEntry, layer: str) -> RecoveryEntry:
    """``entry`` as this process's copy of ``layer`` (restored here: its next save replaces it)."""
    pid = os.getpid()
    adopted = replace(entry, layer=layer, pid=pid, started=_process_started(pid) or 0.0)
    _write_entry(adopted)
    return adopted


def save_copy(
    entry: RecoveryEntry, label_map: LabelMap, provenance: dict[str, Any] | None = None
) -> RecoveryEntry:
    """Write ``label_map`` (on its scan's grid) as ``entry``'s copy; return the entry saved.

    The mask and sidecar are each replaced atomically, then ``entry.json``.
    """
    provenance = dict(provenance or {})
    written = write_label_map(label_map, entry.labels_path, overwrite=True)
    sidecar = label_sidecar(
        label_map,
        input_name=provenance.get("image") or provenance.get("source"),
        outputs={"labels": written.name},
        provenance=provenance,
    )
    write_sidecar(sidecar, entry.sidecar_path, overwrite=True)
    saved = replace(entry, time=time.time())
    _write_entry(saved)
    return saved


def _write_entry(entry: RecoveryEntry) -> None:
    record = {k: v for k, v in asdict(entry).items() if k != "folder"}
    text = json.dumps(record, indent=2)
    path = entry.folder / ENTRY_FILE
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


def read_copy(entry: RecoveryEntry) -> LabelMap:
    """The label map of a recovery copy, with its label names and its exact grid."""
    try:
        label_map = read_label_map(entry.labels_path)
        sidecar = json.loads(entry.sidecar_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, MedaiError) as error:
        raise RecoveryError(
            f'The recovery copy {entry.id} of "{entry.layer}" cannot be read ({error}); '
            f"it is in {entry.folder}"
        ) from error
    label_map.label_names = {int(k): v for k, v in sidecar.get("label_names", {}).items()}
    exact = _sidecar_geometry(sidecar)
    # NIfTI stores the grid as 32-bit floats; the sidecar keeps the scan's own numbers.
    if exact is not None and exact.is_close(label_map.geometry, SAME_GRID_TOLERANCE):
        label_map.geometry = exact
    label_map.metadata = {"name": entry.layer, "scan": entry.scan}
    return label_map


def _sidecar_geometry(sidecar: dict[str, Any]) -> Geometry | None:
    grid = sidecar.get("geometry_zyx_lps_mm")
    try:
        return Geometry.from_dict(grid) if grid else None
    except (KeyError, TypeError, ValueError):
        return None


def list_entries(root: Path | None = None) -> list[RecoveryEntry]:
    """Every complete recovery copy, newest first; unreadable records are skipped and logged."""
    folder = root or recovery_folder()
    if not folder.is_dir():
        return []
    entries = [entry for path in folder.iterdir() if (entry := _read_entry(path)) is not None]
    return sorted(entries, key=lambda entry: entry.time, reverse=True)


def _read_entry(folder: Path) -> RecoveryEntry | None:
    record_path = folder / ENTRY_FILE
    if not record_path.is_file() or not (folder / LABELS_FILE).is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        return RecoveryEntry(
            id=str(record["id"]),
            layer=str(record["layer"]),
            scan=None if record.get("scan") is None else str(record["scan"]),
            time=float(record["time"]),
            pid=int(record["pid"]),
            started=float(record["started"]),
            folder=folder,
        )
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("skipping unreadable recovery record %s", record_path)
        return None


def find_entry(entry_id: str, root: Path | None = None) -> RecoveryEntry:
    """The recovery copy named ``entry_id``, or a :class:`RecoveryError` saying how to list them."""
    for entry in list_entries(root):
        if entry.id == entry_id:
            return entry
    raise RecoveryError(
        f"No recovery copy has the id {entry_id!r} in {root or recovery_folder()}; "
        "'napari-medai recover --list' shows the ids"
    )


def orphaned(root: Path | None = None) -> list[RecoveryEntry]:
    """Copies left by a napari that is no longer running (killed or crashed), newest first."""
    return [entry for entry in list_entries(root) if not entry.is_running()]


def discard(entry: RecoveryEntry) -> None:
    """Delete a recovery copy (saved cleanly, closed, or declined)."""
    shutil.rmtree(entry.folder, ignore_errors=True)


def prune(
    root: Path | None = None,
    max_age_days: float = MAX_AGE_DAYS,
    max_bytes: int = MAX_TOTAL_BYTES,
    now: float | None = None,
) -> list[str]:
    """Delete old copies, then the oldest until the folder fits ``max_bytes``; return their ids.

    Copies of a running napari are kept whatever their age or size; folders a
    killed process left incomplete over an hour ago are deleted too.
    """
    folder = root or recovery_folder()
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    _remove_incomplete(folder, now)
    pruned: list[str] = []
    kept: list[tuple[RecoveryEntry, int]] = []
    for entry in sorted(list_entries(folder), key=lambda entry: entry.time):
        if entry.is_running():
            continue
        if now - entry.time > max_age_days * 86400:
            discard(entry)
            pruned.append(entry.id)
        else:
            kept.append((entry, _folder_bytes(entry.folder)))
    total = _folder_bytes(folder)
    for entry, size in kept:  # oldest first
        if total <= max_bytes:
            break
        discard(entry)
        pruned.append(entry.id)
        total -= size
    return pruned


def _remove_incomplete(folder: Path, now: float) -> None:
    """Delete what a process killed while saving left: folders without a record, temp files."""
    for path in folder.iterdir():
        if not path.is_dir() or now - path.stat().st_mtime <= _INCOMPLETE_AFTER_S:
            continue
        if not (path / ENTRY_FILE).is_file():
            shutil.rmtree(path, ignore_errors=True)
            continue
        for tmp in path.glob(".*"):  # atomic_write's temporary files
            if now - tmp.stat().st_mtime > _INCOMPLETE_AFTER_S:
                tmp.unlink(missing_ok=True)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
