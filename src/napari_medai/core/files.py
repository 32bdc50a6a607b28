"""Atomic, non-clobbering file writes that say in one line why the system refused one."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from napari_medai.core.errors import MedaiError, OutputExistsError


def compound_suffix(path: Path) -> str:
    """The file type suffix, keeping ``.nii.gz`` whole."""
    suffixes = Path(path).suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() == ".gz":
        return "".join(suffixes[-2:]).lower()
    return Path(path).suffix.lower()


def compound_stem(path: Path) -> str:
    """The file name without its (compound) suffix: ``ct.nii.gz`` -> ``ct``."""
    suffix = compound_suffix(path)
    name = Path(path).name
    return name[: -len(suffix)] if suffix else name


#: Longest token :func:`file_token` returns: two of them and a suffix stay well
#: inside the 255 bytes a file name may have on every common file system.
TOKEN_CHARS = 100


def file_token(text: str) -> str:
    """A file-name-safe token of ``text``: letters, digits, '.', '_' and '-', at most 100."""
    token = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:TOKEN_CHARS].strip("-")
    return token or "unnamed"


def check_can_write(path: Path, overwrite: bool) -> None:
    """Refuse to write where the user may not, or to replace a file unless ``overwrite`` is set.

    Cheap (no writing): lets a long job refuse before it starts.
    """
    path = Path(path)
    folder = _nearest_folder(path.parent)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MedaiError(_not_allowed(path, folder))
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another name or allow overwrite")


def _nearest_folder(folder: Path) -> Path:
    """``folder``, or its closest existing ancestor (where a write would create folders)."""
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _not_allowed(path: Path, folder: Path) -> str:
    return (
        f'Cannot save "{path.name}": you may not write in the folder {folder} '
        "(permission denied); choose another folder"
    )


def _cannot_write(path: Path, error: OSError) -> MedaiError:
    """The system's refusal to write ``path`` as one line naming the file and its folder."""
    folder = _nearest_folder(path.parent)
    if error.errno in (errno.EACCES, errno.EPERM):
        return MedaiError(_not_allowed(path, folder))
    reason = error.strerror or str(error)
    return MedaiError(f'Cannot save "{path.name}" in the folder {folder}: {reason}')


def atomic_write(path: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it in place.

    The temporary file keeps ``path``'s suffix so format-guessing writers
    (SimpleITK) pick the right format. ``write`` should raise if the file it
    wrote is incomplete: nothing replaces ``path`` then, and a failed write
    leaves nothing behind. A folder at ``path`` is refused, even with ``overwrite``.
    """
    path = Path(path)
    if path.is_dir():
        raise MedaiError(
            f'Cannot save "{path.name}": a folder has that name; choose a file name inside it '
            "or another name"
        )
    check_can_write(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=compound_suffix(path), dir=path.parent
        )
    except OSError as error:
        raise _cannot_write(path, error) from error
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a saved mask is for others to read
        os.replace(tmp, path)
    except OSError as error:
        raise _cannot_write(path, error) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


@contextlib.contextmanager
def atomic_directory(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that replaces it on success."""
    path = Path(path)
    check_can_write(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as error:
        raise _cannot_write(path, error) from error
    try:
        yield tmp
        try:
            _replace_folder(tmp, path)
        except OSError as error:
            raise _cannot_write(path, error) from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_folder(new: Path, path: Path) -> None:
    """Move the folder ``new`` to ``path``, replacing a folder there."""
    if path.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, backup / "old")
        os.replace(new, path)
        shutil.rmtree(backup)
    else:
        os.replace(new, path)
