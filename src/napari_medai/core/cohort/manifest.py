"""Which scans a cohort run covers: a CSV manifest, a folder or a glob.

Every scan gets a stable id (its name plus a short hash of its path relative to
the folder all the cohort's scans share), so outputs keep their names when the
cohort folder moves or is listed another way (CSV, folder, glob), and two
``scan.nii.gz`` in different folders never collide. The cheap fingerprint
(size, modification time and a hash of the first and last MiB) tells a resumed
run which inputs changed; the content hash (:func:`~napari_medai.core.hashing.content_sha256`)
is computed by the worker that reads the scan anyway.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import compound_stem, file_token
from napari_medai.core.hashing import content_files

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
#: Bytes the fingerprint hashes at each end of a scan file: an edit that keeps the size and
#: modification time still shows there (a gzip trailer holds the CRC of all the content).
END_BLOCK = 1 << 20
#: The least it hashes at each end of each file of a folder scan (the blocks share END_BLOCK).
MIN_END_BLOCK = 4096


class ManifestError(MedaiError):
    """The manifest cannot be read or names no scans."""


class CohortWarning(UserWarning):
    """Something a cohort run decided that its user should hear about (shown in the summary)."""


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
        _say_paths_outside(path, paths)
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
    items = [_listed_item(p, base, source) for p in paths]
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
    return ScanItem(str(resolved), f"{file_token(name)}-{digest}", fingerprint(resolved))


def _listed_item(path: Path, base: Path, source: str | Path) -> ScanItem:
    """:func:`scan_item`, refusing in one line a path the file system cannot hold."""
    try:
        return scan_item(path, base)
    except OSError as error:
        shown = str(path) if len(str(path)) <= 80 else f"...{str(path)[-60:]}"
        raise ManifestError(
            f"{source}: the scan path {shown} cannot be used ({error.strerror})"
        ) from error


def fingerprint(path: Path) -> str:
    """Size, modification time and both end blocks of a file, or of every file in a folder.

    Cheap: at most 2 MiB read per scan (a folder's files share it, at least
    8 KiB each), so a resumed run fingerprints a whole cohort quickly.
    """
    path = Path(path)
    if not _exists(path):
        return "missing"
    files = content_files(path)
    block = max(MIN_END_BLOCK, END_BLOCK // max(len(files), 1))
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        name = file.relative_to(path).as_posix() if file != path else ""
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
        digest.update(_end_blocks(file, stat.st_size, block))
    return digest.hexdigest()[:16]


def _end_blocks(file: Path, size: int, block: int) -> bytes:
    """The first and last ``block`` bytes of a regular file (all of it when it is small).

    Anything else (a pipe, a device such as /dev/zero) is not read: it could block or never end.
    """
    if not file.is_file():
        return b"not a regular file"
    try:
        with open(file, "rb") as handle:
            head = handle.read(block)
            if size > 2 * block:
                handle.seek(-block, os.SEEK_END)
            return head + handle.read(block)
    except OSError:
        return b"unreadable"  # the worker then says why it cannot read the scan


def _is_scan(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return True
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SCAN_SUFFIXES)


def _csv_paths(manifest: Path) -> list[Path]:
    """Scan paths from a CSV or TSV (a header naming a path column, or none); relative to it."""
    rows = _manifest_rows(manifest)
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in PATH_COLUMNS if name in header), None)
    first = 1
    if column is not None:
        rows, first = rows[1:], 2
    elif not _looks_like_scan_path(rows[0][0], manifest):
        raise ManifestError(
            f"{manifest.name}: its first row ({', '.join(rows[0])[:120]}) names no scan path "
            f"column; expected a header with a column named one of {', '.join(PATH_COLUMNS)} "
            "(comma- or tab-separated), or scan paths in the first column without a header"
        )
    column = column or 0
    paths = []
    for number, row in enumerate(rows, start=first):
        if column >= len(row) or not row[column].strip():
            raise ManifestError(f"{manifest.name}, row {number}: no scan path")
        if "\0" in row[column]:
            raise ManifestError(f"{manifest.name}, row {number}: the scan path holds a NUL byte")
        path = Path(os.path.expanduser(row[column].strip()))
        paths.append(path if path.is_absolute() else manifest.parent / path)
    return paths


def _manifest_rows(manifest: Path) -> list[list[str]]:
    """The non-blank rows of a manifest: tab-separated for ``.tsv`` or tabs without commas."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"{manifest.name}: not UTF-8 text (byte {error.start}); save it as CSV UTF-8"
        ) from error
    except OSError as error:
        raise ManifestError(f"{manifest}: cannot be read ({error.strerror})") from error
    tabs = manifest.suffix.lower() == ".tsv" or ("\t" in text and "," not in text)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tabs else ","))
    except csv.Error as error:
        raise ManifestError(f"{manifest.name}: not a readable CSV file ({error})") from error
    return [row for row in rows if row and any(cell.strip() for cell in row)]


def _looks_like_scan_path(cell: str, manifest: Path) -> bool:
    """Whether a header-less first cell names a scan: a scan suffix, a folder part, or it exists."""
    text = os.path.expanduser(cell.strip())
    named = text.lower().endswith(SCAN_SUFFIXES) or "/" in text or "\\" in text
    return bool(text) and (named or _exists(manifest.parent / text))


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name the file system cannot hold (too long)."""
    try:
        return path.exists()
    except OSError:
        return False


def _say_paths_outside(manifest: Path, paths: list[Path]) -> None:
    """Warn when a manifest lists scans outside its own folder (accepted, but said)."""
    folder = Path(os.path.abspath(manifest.parent))
    outside = [Path(os.path.abspath(p)) for p in paths]
    outside = [p for p in outside if not p.is_relative_to(folder)]
    if outside:
        warnings.warn(
            f"{manifest.name}: {len(outside)} scan(s) lie outside its folder {folder} "
            f"(first: {outside[0]}); they are read where they are",
            CohortWarning,
            stacklevel=3,
        )


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
