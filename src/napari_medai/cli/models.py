"""``napari-medai models``: the models known by name, one per line, name first; ``--delete``."""

from __future__ import annotations

import argparse

from napari_medai.core.errors import MedaiError
from napari_medai.core.models.registry import delete_model, find_model, list_models, user_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` sub-command."""
    parser = subparsers.add_parser(
        "models",
        help="list the models 'segment --model' takes by name",
        description=f"Built-in models and installed extras, then the packages in {user_model_dir()}"
        " (set NAPARI_MEDAI_MODELS to use another folder).",
    )
    parser.add_argument(
        "--all", action="store_true", help="also list models that cannot run here, and why"
    )
    parser.add_argument(
        "--delete", metavar="NAME", help="delete the model NAME from the model folder"
    )
    parser.add_argument("--yes", action="store_true", help="delete without asking")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print ``name<TAB>kind<TAB>title · labels · modality · date · Dice: description``."""
    if args.delete:
        return _delete(args.delete, args.yes)
    for entry in list_models(include_unavailable=args.all):
        status = "" if entry.available else " [not available]"
        print(f"{entry.name}\t{entry.kind}\t{entry.summary}: {entry.description}{status}")
    return 0


def _delete(name: str, yes: bool) -> int:
    entry = find_model(name)
    if entry is None:
        raise MedaiError(f"no model called '{name}' (see: napari-medai models)")
    if not yes and input(f"Delete '{entry.summary}' in {entry.location}? [y/N] ").lower() != "y":
        print("Nothing deleted")
        return 1
    delete_model(entry)
    print(f"Deleted {entry.location}")
    return 0
