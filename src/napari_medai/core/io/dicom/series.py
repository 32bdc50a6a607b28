"""Group DICOM files into series and choose one."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from napari_medai.core.errors import SeriesSelectionError
from napari_medai.core.io.dicom.headers import DicomFile, SliceRef


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a DICOM source, as the API and CLI list it.

    ``uid`` is the SeriesInstanceUID, or for a series whose UIDs were blanked
    a stable stand-in (``blank-uid-...``); either selects the series.
    """

    uid: str
    description: str
    modality: str
    n_files: int
    n_slices: int

    def describe(self) -> str:
        """One line for messages: description, modality, size and UID."""
        name = f"'{self.description}'" if self.description else "(no description)"
        return f"{name} {self.modality}, {self.n_slices} slice(s), UID {self.uid}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for ``volume.metadata['other_series']``."""
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Series:
    """The image files of one series."""

    info: SeriesInfo
    files: tuple[DicomFile, ...]

    @property
    def slices(self) -> list[SliceRef]:
        """Every slice (frames of multi-frame files included)."""
        return [ref for file in self.files for ref in file.slices]

    @property
    def uid(self) -> str:
        """The real SeriesInstanceUID ("" when it was blanked)."""
        return self.files[0].series_uid


def group_series(files: list[DicomFile]) -> list[Series]:
    """Group usable image files by series, largest (most slices) first."""
    groups: dict[str, list[DicomFile]] = defaultdict(list)
    for file in files:
        if not file.problem:
            groups[file.series_key].append(file)
    series = []
    for key, members in groups.items():
        first = members[0]
        info = SeriesInfo(
            uid=key,
            description=first.description,
            modality=first.modality,
            n_files=len(members),
            n_slices=sum(len(file.slices) for file in members),
        )
        series.append(Series(info, tuple(members)))
    return sorted(series, key=lambda s: (-s.info.n_slices, s.info.uid))


def select_series(
    series: list[Series], source: str, uid: str | None = None, preferred: str | None = None
) -> tuple[Series, list[str]]:
    """Pick ``uid`` if given, else ``preferred`` (a file's own series), else the largest.

    Returns the series and the warnings to show (other series exist).
    """
    if uid is not None:
        chosen = [s for s in series if s.info.uid == uid]
        if not chosen:
            available = "; ".join(s.info.describe() for s in series)
            raise SeriesSelectionError(
                f"{source} holds no series with UID {uid}; it holds: {available}"
            )
        return chosen[0], []
    if preferred is not None:
        return next(s for s in series if s.info.uid == preferred), []
    chosen, others = series[0], series[1:]
    if not others:
        return chosen, []
    listed = "; ".join(s.info.describe() for s in others)
    return chosen, [
        f"{source} holds {len(series)} series; opened the largest, {chosen.info.describe()}. "
        f"Others: {listed}. Choose another by its SeriesInstanceUID."
    ]
