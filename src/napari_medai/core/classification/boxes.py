"""Boxes from files: JSON or CSV, in voxel indices (z, y, x) of the scan.

JSON: a list of objects, each ``{"start": [z, y, x], "stop": [z, y, x]}``
(stop exclusive, as ``classify`` prints them) or ``{"centre": [z, y, x],
"size": [1, h, w]}``, optionally with ``"class": k``. CSV: a header naming
``z, y, x, height, width`` (a 2D box centred on that voxel), optionally
``class``. The class is what training files give; classifying ignores it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from napari_medai.core.classification.config import ClassificationError, Region

CSV_COLUMNS = ("z", "y", "x", "height", "width")


def _from_json_item(item: Any, where: str) -> tuple[Region, int | None]:
    if not isinstance(item, dict):
        raise ClassificationError(f"{where}: each box is a JSON object")
    try:
        if "start" in item:
            region = Region(
                tuple(int(v) for v in item["start"]), tuple(int(v) for v in item["stop"])
            )
        else:
            size = tuple(int(v) for v in item["size"])
            region = Region.around(tuple(float(v) for v in item["centre"]), size)
        label = None if item.get("class") is None else int(item["class"])
    except (KeyError, TypeError, ValueError) as error:
        raise ClassificationError(
            f"{where}: a box needs start and stop, or centre and size, as three numbers"
        ) from error
    if len(region.start) != 3 or len(region.stop) != 3:
        raise ClassificationError(f"{where}: box corners need three numbers (z, y, x)")
    return region, label


def read_boxes(path: Path) -> tuple[list[Region], list[int | None]]:
    """The boxes in ``path`` and their classes (None where the file gives none)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ClassificationError(f"{path}: cannot read the box file ({error.strerror})") from error
    pairs: list[tuple[Region, int | None]] = []
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ClassificationError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(items, list):
            raise ClassificationError(f"{path}: expected a JSON list of boxes")
        pairs = [_from_json_item(item, f"{path} box {n}") for n, item in enumerate(items, 1)]
    else:
        rows = list(csv.DictReader(text.splitlines()))
        missing = [c for c in CSV_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise ClassificationError(f"{path}: the CSV header lacks {', '.join(missing)}")
        for number, row in enumerate(rows, 2):
            try:
                centre = (float(row["z"]), float(row["y"]), float(row["x"]))
                size = (1, int(row["height"]), int(row["width"]))
                label = int(row["class"]) if row.get("class") not in (None, "") else None
            except ValueError as error:
                raise ClassificationError(f"{path} line {number}: {error}") from error
            pairs.append((Region.around(centre, size), label))
    if not pairs:
        raise ClassificationError(f"{path}: the file holds no boxes")
    return [p[0] for p in pairs], [p[1] for p in pairs]
