"""One SHA-256 for a scan, a mask or a model's weights, whichever record names it.

A file hashes to the SHA-256 of its bytes (what ``sha256sum`` prints). A folder
(a DICOM series, a model's weight files) hashes its regular files in the order
of their relative POSIX paths, each as that path, a NUL byte and its bytes: a
renamed or moved file changes the hash, the folder's place and the platform do
not. So an export sidecar's ``source_sha256`` and a cohort record's
``input_sha256`` agree for the same DICOM folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def content_files(path: Path) -> list[Path]:
    """``path`` itself, or the regular files of a folder in the order they are hashed."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: _name(p, path))


def content_sha256(path: Path, files: Iterable[Path] | None = None) -> str:
    """SHA-256 of a file, or of a folder's files (all of them, or only ``files`` in it)."""
    path = Path(path)
    chosen = content_files(path) if files is None else sorted(files, key=lambda p: _name(p, path))
    digest = hashlib.sha256()
    for file in chosen:
        if path.is_dir():
            digest.update(_name(file, path).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _name(file: Path, folder: Path) -> str:
    return Path(file).relative_to(folder).as_posix()
