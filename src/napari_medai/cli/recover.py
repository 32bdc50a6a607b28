"""``napari-medai recover``: list the label maps autosaved before napari stopped, write one out.

``--list`` prints a JSON list (id, layer name, scan name, time saved, and whether
the napari that saved it still runs); ``ID --out FILE`` writes that label map on
its scan's grid, with the JSON sidecar beside it as File > Save does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_medai.core.recovery import RecoveryEntry


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``recover`` sub-command."""
    parser = subparsers.add_parser(
        "recover", help="list or write the label maps napari autosaved (after a crash or kill)"
    )
    parser.add_argument("id", nargs="?", help="the copy to write (an id from --list)")
    parser.add_argument("--list", action="store_true", help="print the recoverable copies as JSON")
    parser.add_argument("--out", type=Path, help="where to write it: .nii.gz, .nii, .nrrd or .mha")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    """Print the list, or write one copy; a usage mistake exits 2 with argparse's message."""
    from napari_medai.core import recovery

    if args.list:
        if args.id or args.out:
            args.parser.error("--list takes no ID or --out")
        print(json.dumps([entry.summary() for entry in recovery.list_entries()], indent=2))
        return 0
    if not args.id or not args.out:
        args.parser.error("give --list, or an ID and --out FILE")
    written = write_copy(recovery.find_entry(args.id), args.out, args.overwrite)
    print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    return 0


def write_copy(entry: RecoveryEntry, out: Path, overwrite: bool) -> list[Path]:
    """Write ``entry``'s label map to ``out`` and its sidecar beside it; return both paths."""
    from napari_medai.core.files import check_can_write, compound_stem
    from napari_medai.core.io.writing import write_label_map, write_sidecar
    from napari_medai.core.recovery import read_copy

    sidecar_path = out.with_name(compound_stem(out) + ".json")
    for path in (out, sidecar_path):  # refuse before writing either
        check_can_write(path, overwrite)
    label_map = read_copy(entry)
    written = write_label_map(label_map, out, overwrite=overwrite)
    sidecar = json.loads(entry.sidecar_path.read_text(encoding="utf-8"))
    sidecar["outputs"] = {"labels": written.name}
    return [written, write_sidecar(sidecar, sidecar_path, overwrite=overwrite)]
