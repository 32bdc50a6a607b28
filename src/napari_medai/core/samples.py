"""Sample scans: real files fetched once with pooch and checked by SHA-256.

``NAPARI_MEDAI_DATA`` points at a local folder laid out like ``shared/data``
(used by CI and the benchmarks); the same hashes are checked there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pooch

from napari_medai.core.errors import MedaiError

DATA_ENV = "NAPARI_MEDAI_DATA"
_TOTALSEG = (
    "https://github.com/wasserth/TotalSegmentator/raw/"
    "0e65a448d557382b1e925276212b3bec7f5aff83/tests/reference_files/"
)

#: TotalSegmentator v2 class values of the organs in its example map.
TOTALSEG_LABEL_NAMES = {
    0: "background",
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
}


class SampleUnavailableError(MedaiError):
    """A sample file could not be fetched or failed its hash check."""


@dataclass(frozen=True)
class SampleFile:
    """One remote file: where it lives in the data folder, its URL and hash."""

    relative_path: str
    url: str
    sha256: str


TOTALSEG_CT = SampleFile(
    "totalsegmentator/example_ct_sm.nii.gz",
    _TOTALSEG + "example_ct_sm.nii.gz",
    "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb",
)
TOTALSEG_SEG = SampleFile(
    "totalsegmentator/example_seg.nii.gz",
    _TOTALSEG + "example_seg.nii.gz",
    "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d",
)


def fetch_sample(sample: SampleFile) -> Path:
    """Return a local, hash-checked copy of ``sample``, downloading it once."""
    local_root = os.environ.get(DATA_ENV)
    if local_root:
        path = Path(local_root) / sample.relative_path
        if not path.is_file():
            raise SampleUnavailableError(f"{DATA_ENV}={local_root} has no {sample.relative_path}")
        if pooch.file_hash(str(path)) != sample.sha256:
            raise SampleUnavailableError(f"{path} does not match its pinned SHA-256")
        return path
    try:
        return Path(
            pooch.retrieve(
                sample.url,
                known_hash=f"sha256:{sample.sha256}",
                fname=Path(sample.relative_path).name,
                path=pooch.os_cache("napari-medai"),
                progressbar=False,
            )
        )
    except ValueError as error:
        raise SampleUnavailableError(f"{sample.relative_path}: {error}") from error
    except Exception as error:  # requests raises many kinds when offline
        raise SampleUnavailableError(
            f"could not download the sample {Path(sample.relative_path).name} "
            f"(offline? set {DATA_ENV} to a local copy): {type(error).__name__}"
        ) from error
