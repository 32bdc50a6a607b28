"""``napari-medai models``: the models known by name, one per line, name first."""

from __future__ import annotations

import argparse

from napari_medai.core.models.registry import list_models, user_model_dir


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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print ``name<TAB>kind<TAB>description`` for each model."""
    for entry in list_models(include_unavailable=args.all):
        status = "" if entry.available else " [not available]"
        print(f"{entry.name}\t{entry.kind}\t{entry.description}{status}")
    return 0
