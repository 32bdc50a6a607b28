"""Write the synthetic CT phantom and its organ labels as NIfTI files."""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk

from napari_medai.core.files import atomic_write
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import volume_to_sitk


def main() -> None:
    """Write ``phantom_ct.nii.gz`` and ``phantom_labels.nii.gz`` into a folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    volume, labels = make_phantom()
    image = volume_to_sitk(volume)
    atomic_write(
        args.out_dir / "phantom_ct.nii.gz",
        lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True),
    )
    write_label_map(labels, args.out_dir / "phantom_labels.nii.gz")


if __name__ == "__main__":
    main()
