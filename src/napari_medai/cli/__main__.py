"""``python -m napari_medai.cli``: the command line (what torchrun starts on every rank)."""

import sys

from napari_medai.cli import main

sys.exit(main())
