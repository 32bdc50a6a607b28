"""Which scans a cohort run covers: a CSV manifest, a folder or a glob.

Every scan gets a stable id (its name plus a short hash of its path relative to
the folder all the cohort's scans share), so outputs keep their names when the
cohort folder moves or is listed another way (CSV, folder, glob), and two
``scan.nii.gz`` in different folders never collide. The cheap fingerprint
(size and modification time) tells a resumed run which inputs changed; the
content hash (SHA-256) is computed by the worker that reads the scan anyway.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import compound_stem

#: Column of a CSV manifest that names the scan (else the first column).
PATH_COLUMNS = ("path", "file", "scan", "image", "input")
#: What a folder manifest picks up: image files, DICOM zips and sub-folders.
SCAN_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".hdr",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".mgz",
    ".mgh",
    ".zip",
    ".dcm",
)
_HASH_CHUNK = 1 << 20


class ManifestError(MedaiError):
    """The manifest cannot be read or names no scans."""


@dataclass(frozen=True)
class ScanItem:
    """One scan of a cohort: where it is, its stable id and its fingerprint."""

    path: str
    id: str
    fingerprint: str


def read_manifest(source: str | Path) -> list[ScanItem]:
    """Scans listed by a CSV file, held in a folder, or matched by a glob pattern."""
    text = str(source)
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        paths = _csv_paths(path)
    elif path.is_dir():
        paths = sorted(p for p in path.iterdir() if _is_scan(p))
    elif any(c in text for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if _is_scan(Path(p)))
    else:
        raise ManifestError(
            f"{source}: not a CSV manifest, a folder of scans or a glob pattern ('scans/*.nii.gz')"
        )
    if not paths:
        raise ManifestError(f"{source}: names no scans")
    paths = [p.resolve() for p in paths]
    base = Path(os.path.commonpath([p.parent for p in paths]))
    items = [scan_item(p, base) for p in paths]
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ManifestError(f"{item.path} is listed twice (also as {seen[item.id]})")
        seen[item.id] = item.path
    return items


def scan_item(path: Path, base: Path) -> ScanItem:
    """The :class:`ScanItem` of ``path``, its id from its path relative to ``base``."""
    resolved = Path(path).resolve()
    try:
        relative = resolved.relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        relative = resolved.as_posix()
    name = compound_stem(resolved) if resolved.is_file() else resolved.name
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:8]
    return ScanItem(str(resolved), f"{safe_name(name)}-{digest}", fingerprint(resolved))


def safe_name(text: str) -> str:
    """A file-name-safe token: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unnamed"


def fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of every file in a folder (cheap)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = []
    for file in files:
        stat = file.stat()
        parts.append(
            f"{file.relative_to(path) if file != path else ''}:{stat.st_size}:{stat.st_mtime_ns}"
        )
    return hashlib.sha1("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def content_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _is_scan(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return True
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SCAN_SUFFIXES)


def _csv_paths(manifest: Path) -> list[Path]:
    """Scan paths from a CSV (with a header naming a path column, or none); relative to it."""
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in PATH_COLUMNS if name in header), None)
    first = 1
    if column is not None:
        rows, first = rows[1:], 2
    column = column or 0
    paths = []
    for number, row in enumerate(rows, start=first):
        if column >= len(row) or not row[column].strip():
            raise ManifestError(f"{manifest.name}, row {number}: no scan path")
        path = Path(os.path.expanduser(row[column].strip()))
        paths.append(path if path.is_absolute() else manifest.parent / path)
    return paths


def read_training_manifest(manifest: Path) -> list[tuple[Path, Path]]:
    """(image, labels) paths from a CSV with ``image`` and ``labels`` columns, relative to it."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ManifestError(f"{manifest}: cannot be read ({error.strerror})") from error
    if not rows or not {"image", "labels"} <= {key.strip().lower() for key in rows[0]}:
        raise ManifestError(f"{manifest.name}: needs a header with 'image' and 'labels' columns")
    pairs = []
    for number, row in enumerate(rows, start=2):
        cells = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
        if not cells["image"] or not cells["labels"]:
            raise ManifestError(f"{manifest.name}, row {number}: an image or its labels is missing")
        pair = tuple(Path(os.path.expanduser(cells[key])) for key in ("image", "labels"))
        pairs.append(tuple(p if p.is_absolute() else manifest.parent / p for p in pair))
    return pairs
