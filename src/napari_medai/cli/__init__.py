"""``napari-medai`` command line: the same core jobs and configs as the widgets."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from napari_medai.core.errors import MedaiError

#: Sub-command modules; each defines ``register(subparsers)`` which adds its
#: parser and sets ``func`` to a callable taking the parsed args and returning
#: an exit code.
COMMANDS = (
    "info",
    "segment",
    "models",
    "train",
    "cohort",
    "export",
    "stats",
    "evaluate",
    "classify",
    "train_classifier",
    "evaluate_classifier",
    "gan",
    "recover",
    "prompt",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="napari-medai", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"napari_medai.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; bad input prints one line and exits non-zero."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedaiError as error:
        print(f"napari-medai {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None:
            raise  # not the file system refusing a path: a bug, keep its traceback
        # Writes through core.files say this in their own words; this catches the rest.
        print(
            f"napari-medai {args.command}: error: cannot use {error.filename}: {error.strerror}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"napari-medai {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
