"""``napari-medai segment``: segment scans with a model, save masks on the source grid.

Each input gives ``<name>_<model>_seg.nii.gz`` (``.nrrd``/``.mha`` when the
input is NRRD/MetaImage) in the input's exact geometry, a JSON sidecar with the
provenance and the volume of every label, and with ``--probabilities`` the
foreground probability map. Everything runs through the same core jobs and
``SegmentConfig`` as the Segment widget.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medai.cli.options import add_device, add_trust_bundle
from napari_medai.cli.progress import run_with_bar
from napari_medai.core.errors import MedaiError
from napari_medai.core.files import check_can_write, compound_stem, compound_suffix, file_token
from napari_medai.core.segmentation.config import SegmentConfig, SegmentResult

if TYPE_CHECKING:
    from napari_medai.core.models.loaded import LoadedModel

#: Input formats whose own format the outputs keep (else NIfTI).
_KEEP_FORMAT = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` sub-command."""
    parser = subparsers.add_parser(
        "segment", help="segment scans with a model and save each mask on its scan's grid"
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="NIfTI/NRRD/MHA file, DICOM file, folder or .zip"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a name from 'napari-medai models', or a model package, TorchScript file or bundle",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the outputs")
    add_device(parser)
    parser.add_argument("--tta", action="store_true", help="average over flipped copies")
    parser.add_argument(
        "--probabilities", action="store_true", help="also save the foreground probability map"
    )
    add_trust_bundle(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Segment every input; stop at the first bad one (MedaiError, handled by main)."""
    # torch, MONAI and the readers load here, not when the parser is built (``--help`` stays fast).
    from napari_medai.core.io.reading import check_readable, read_volume_job
    from napari_medai.core.models.sources import load_model
    from napari_medai.core.segmentation.inference import segment_job

    inputs = [Path(p) for p in args.inputs]
    for path in inputs:
        check_readable(path)
    model = load_model(args.model, trusted=args.trust_bundle)
    config = SegmentConfig(device=args.device, tta=args.tta, probabilities=args.probabilities)
    plans = [_outputs(path, model, Path(args.out)) for path in inputs]
    if len({plan["labels"] for plan in plans}) != len(plans):
        raise MedaiError("two inputs have the same name; their outputs would overwrite each other")
    for plan in plans:
        for key in ("labels", "sidecar") + (("probability",) if args.probabilities else ()):
            check_can_write(plan[key], args.overwrite)
    for path, plan in zip(inputs, plans):
        volume = run_with_bar(read_volume_job(path), f"reading {path.name}")
        job = segment_job(volume, model, config)
        result = run_with_bar(job, f"segmenting {path.name}")
        volumes = _save(path, result, model, config, plan, args.overwrite)
        summary = ", ".join(f"{name} {ml:.1f} mL" for name, ml in volumes.items())
        print(f"{plan['labels']} ({summary})" if summary else str(plan["labels"]))
    return 0


def _outputs(path: Path, model: LoadedModel, out: Path) -> dict[str, Path]:
    """Output paths: ``<name>_<model>_seg<ext>``, its ``.json`` sidecar, ``..._prob<ext>``."""
    suffix = compound_suffix(path) if path.is_file() else ""
    name = compound_stem(path) if path.is_file() else path.name
    ext = _KEEP_FORMAT.get(suffix, ".nii.gz")
    base = f"{file_token(name)}_{file_token(model.card.name)}"
    return {
        "labels": out / f"{base}_seg{ext}",
        "sidecar": out / f"{base}_seg.json",
        "probability": out / f"{base}_prob{ext}",
    }


def _save(
    source: Path,
    result: SegmentResult,
    model: LoadedModel,
    config: SegmentConfig,
    plan: dict[str, Path],
    overwrite: bool,
) -> dict[str, float]:
    """Write the mask, the optional probability map and the sidecar; return label volumes."""
    from napari_medai.core.io.writing import (
        label_sidecar,
        write_label_map,
        write_sidecar,
        write_volume,
    )

    write_label_map(result.labels, plan["labels"], overwrite=overwrite)
    outputs = {"labels": plan["labels"].name}
    if result.probability is not None:
        write_volume(result.probability, plan["probability"], overwrite)
        outputs["probability"] = plan["probability"].name
    sidecar = label_sidecar(
        result.labels,
        input_name=source.name,
        outputs=outputs,
        provenance=result.provenance,
        model={
            "name": model.card.name,
            "source": model.source,
            "sha256": model.sha256,
            "format": model.extra.get("format"),
        },
        settings=asdict(config),
    )
    write_sidecar(sidecar, plan["sidecar"], overwrite)
    return sidecar["volumes_ml"]
