"""Options several commands share, so that each reads the same everywhere."""

from __future__ import annotations

import argparse


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the network runs."""
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda[:N] or mps")


def add_trust_bundle(parser: argparse.ArgumentParser) -> None:
    """``--trust-bundle``: the one way to let a MONAI bundle's configs run code."""
    parser.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow a MONAI bundle (its configs run Python code; only for authors you trust)",
    )
