"""Where the DICOM files of a source are: a folder, a file's siblings, or a zip.

A zip is extracted to a temporary folder the caller owns and deletes; entries
that could write outside it (absolute paths, ``..``, symlinks) refuse the zip.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.io.dicom.headers import starts_like_dicom
from napari_medai.core.jobs import Job, Progress

#: Index files that describe a folder but hold no image.
INDEX_FILE_NAMES = frozenset({"dicomdir", "dirfile"})

#: macOS resource-fork folder that zips made on a Mac carry along.
MACOS_FOLDER = "__MACOSX"


def _ignored(name: str) -> bool:
    """Hidden files (``.DS_Store``), resource forks and DICOM index files."""
    return name.startswith(".") or name == MACOS_FOLDER or name.lower() in INDEX_FILE_NAMES


def folder_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Candidate files under ``folder`` (sorted), without the ignored ones."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and not _ignored(p.name))
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if path.is_file() and not any(_ignored(part) for part in relative):
            files.append(path)
    return files


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive (by content, not only by name)."""
    return path.is_file() and zipfile.is_zipfile(path)


def _entry_parts(info: zipfile.ZipInfo, zip_name: str) -> list[str]:
    """The path parts of a zip entry; refuses entries that could escape the folder."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnreadableFileError(
            f"the zip file {zip_name} holds an entry with an absolute path ({name!r}); "
            "refusing to extract it"
        )
    parts = [part for part in re.split(r"[\\/]", name) if part not in ("", ".")]
    if ".." in parts:
        raise UnreadableFileError(
            f"the zip file {zip_name} holds an entry that points outside the archive "
            f"({name!r}); refusing to extract it"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnreadableFileError(
            f"the zip file {zip_name} holds a symbolic link ({name!r}); refusing to extract it"
        )
    return parts


def _dicom_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """Whether an entry starts like a DICOM file (only its first 132 bytes are inflated)."""
    try:
        with archive.open(info) as stream:
            head = stream.read(132)
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, NotImplementedError):
        return True  # let the extraction below report the damage
    return head[128:132] == b"DICM" or starts_like_dicom(head)


def _check_room(path: Path, wanted: list[zipfile.ZipInfo], destination: Path) -> None:
    """Refuse a zip whose DICOM entries would not fit on the temporary disk."""
    needed = sum(info.file_size for info in wanted)
    free = shutil.disk_usage(destination).free
    if needed > free:
        raise UnreadableFileError(
            f"the zip file {path.name} would unpack to {needed / 1e9:.1f} GB of DICOM files, "
            f"more than the {free / 1e9:.1f} GB free on the temporary disk"
        )


def extract_zip_job(path: Path, destination: Path) -> Job[list[Path]]:
    """Extract the safe, non-hidden DICOM files of zip ``path`` into ``destination``.

    Every entry is checked before anything is written, so a refused zip leaves
    nothing behind. Entries that do not start like DICOM are never unpacked, and
    the DICOM ones must fit on the disk first (a zip bomb of filler is skipped
    after 132 bytes each). Returns the extracted files (sorted).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UnreadableFileError(f"{path.name} is not a readable zip file ({error})") from error
    with archive:
        entries = [(info, _entry_parts(info, path.name)) for info in archive.infolist()]
        wanted = [
            (info, parts)
            for info, parts in entries
            if parts
            and not info.is_dir()
            and not any(_ignored(part) for part in parts)
            and _dicom_entry(archive, info)
        ]
        _check_room(path, [info for info, _ in wanted], destination)
        files = []
        for number, (info, parts) in enumerate(wanted):
            target = destination.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as error:
                raise UnreadableFileError(
                    f"cannot extract {info.filename!r} from the zip file {path.name} ({error})"
                ) from error
            files.append(target)
            yield Progress((number + 1) / len(wanted), f"unzipping {path.name}")
    return sorted(files)
