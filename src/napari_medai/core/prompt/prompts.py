"""Prompts for one object: points, boxes and scribbles in voxel indices (z, y, x) of a scan.

:class:`Prompts` is immutable: a dock adds a prompt with :meth:`Prompts.plus`, undoes with
:meth:`Prompts.without_last`, and hands the whole current set to an engine's ``update``.
:func:`prompts_from_json` reads the CLI's PROMPTS.json and refuses a bad field by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medai.core.errors import MedaiError

Index = tuple[int, int, int]


class PromptError(MedaiError):
    """Prompts that cannot be used: a bad field, or a prompt outside the scan."""


@dataclass(frozen=True)
class Point:
    """A click: ``positive`` marks the object, negative marks what is not the object."""

    zyx: Index
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """A box from ``start`` to ``stop`` inclusive (either corner first).

    ``start[0] == stop[0]`` is a 2D box drawn on that slice.
    """

    start: Index
    stop: Index

    @property
    def low(self) -> np.ndarray:
        """The corner with the smallest index on each axis."""
        return np.minimum(self.start, self.stop)

    @property
    def high(self) -> np.ndarray:
        """The corner with the largest index on each axis (inclusive)."""
        return np.maximum(self.start, self.stop)

    @property
    def is_2d(self) -> bool:
        """True for a box drawn on one slice."""
        return self.start[0] == self.stop[0]


@dataclass(frozen=True)
class Scribble:
    """A stroke through ``zyx`` (consecutive points joined by straight lines)."""

    zyx: tuple[Index, ...]
    positive: bool = True

    def voxels(self) -> np.ndarray:
        """Every voxel on the stroke, (n, 3) integer indices."""
        corners = np.asarray(self.zyx, dtype=float)
        pieces = [corners[:1]]
        for a, b in zip(corners[:-1], corners[1:]):
            steps = int(np.abs(b - a).max()) + 1
            pieces.append(a + (b - a) * np.linspace(0.0, 1.0, steps + 1)[1:, None])
        return np.unique(np.rint(np.concatenate(pieces)).astype(int), axis=0)


Prompt = Point | Box | Scribble


@dataclass(frozen=True)
class Prompts:
    """Every prompt given for one object, in the order given."""

    items: tuple[Prompt, ...] = ()

    def plus(self, prompt: Prompt) -> Prompts:
        """These prompts and one more."""
        return Prompts((*self.items, prompt))

    def without_last(self) -> Prompts:
        """These prompts without the last one (undo)."""
        return Prompts(self.items[:-1])

    @property
    def points(self) -> list[Point]:
        """The clicks."""
        return [p for p in self.items if isinstance(p, Point)]

    @property
    def boxes(self) -> list[Box]:
        """The boxes."""
        return [p for p in self.items if isinstance(p, Box)]

    @property
    def scribbles(self) -> list[Scribble]:
        """The strokes."""
        return [p for p in self.items if isinstance(p, Scribble)]

    def seeds(self, positive: bool) -> np.ndarray:
        """Voxels of the positive (or negative) points and scribbles, (n, 3) indices."""
        found = [np.asarray([p.zyx]) for p in self.points if p.positive == positive]
        found += [s.voxels() for s in self.scribbles if s.positive == positive]
        return np.concatenate(found).astype(int) if found else np.empty((0, 3), dtype=int)

    def check_inside(self, shape: tuple[int, int, int]) -> None:
        """Refuse a prompt that lies outside a scan of ``shape`` (z, y, x), naming it."""
        high = np.asarray(shape) - 1
        for kind, index, corners in self._corners():
            outside = [c for c in corners if np.any(np.asarray(c) < 0) or np.any(c > high)]
            if outside:
                raise PromptError(
                    f"{kind} {index} at {list(outside[0])} (z, y, x) is outside the scan, "
                    f"whose voxel indices run from [0, 0, 0] to {high.tolist()}"
                )

    def _corners(self) -> list[tuple[str, int, list[Index]]]:
        """Each prompt's kind, its position in its list, and the indices that define it."""
        found: list[tuple[str, int, list[Index]]] = []
        found += [("point", i, [p.zyx]) for i, p in enumerate(self.points)]
        found += [("box", i, [b.start, b.stop]) for i, b in enumerate(self.boxes)]
        found += [("scribble", i, list(s.zyx)) for i, s in enumerate(self.scribbles)]
        return found

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """The PROMPTS.json form: ``{"points": [...], "boxes": [...], "scribbles": [...]}``."""
        return {
            "points": [{"zyx": list(p.zyx), "positive": p.positive} for p in self.points],
            "boxes": [{"start": list(b.start), "stop": list(b.stop)} for b in self.boxes],
            "scribbles": [
                {"zyx": [list(v) for v in s.zyx], "positive": s.positive} for s in self.scribbles
            ],
        }


def read_prompts(path: str | Path) -> Prompts:
    """Read a PROMPTS.json file; refuse bad JSON or a bad field in one line naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise PromptError(f'"{path.name}" is not a text file of prompts') from error
    except json.JSONDecodeError as error:
        raise PromptError(
            f'"{path.name}" is not valid JSON (line {error.lineno}, column {error.colno})'
        ) from error
    return prompts_from_json(data, path.name)


def prompts_from_json(data: Any, source: str = "prompts") -> Prompts:
    """Prompts from the PROMPTS.json structure (see :meth:`Prompts.to_json`)."""
    if not isinstance(data, dict):
        raise PromptError(f'{source}: expected an object with "points", "boxes" or "scribbles"')
    unknown = sorted(set(data) - {"points", "boxes", "scribbles"})
    if unknown:
        raise PromptError(
            f'{source}: unknown field "{unknown[0]}" (expected "points", "boxes", "scribbles")'
        )
    items: list[Prompt] = []
    for i, entry in enumerate(_list(data, "points", source)):
        where = f"{source}: points[{i}]"
        fields = _fields(entry, where, required=("zyx",), optional=("positive",))
        items.append(Point(_index(fields["zyx"], f"{where}.zyx"), _flag(fields, where)))
    for i, entry in enumerate(_list(data, "boxes", source)):
        where = f"{source}: boxes[{i}]"
        fields = _fields(entry, where, required=("start", "stop"), optional=())
        start = _index(fields["start"], f"{where}.start")
        items.append(Box(start, _index(fields["stop"], f"{where}.stop")))
    for i, entry in enumerate(_list(data, "scribbles", source)):
        where = f"{source}: scribbles[{i}]"
        fields = _fields(entry, where, required=("zyx",), optional=("positive",))
        stroke = fields["zyx"]
        if not isinstance(stroke, list) or not stroke:
            raise PromptError(f"{where}.zyx must be a non-empty list of [z, y, x] indices")
        voxels = tuple(_index(v, f"{where}.zyx[{j}]") for j, v in enumerate(stroke))
        items.append(Scribble(voxels, _flag(fields, where)))
    if not items:
        raise PromptError(f"{source}: no prompts (give at least one point, box or scribble)")
    return Prompts(tuple(items))


def _list(data: dict[str, Any], key: str, source: str) -> list[Any]:
    """The list under ``key`` (absent means empty)."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise PromptError(f'{source}: "{key}" must be a list')
    return value


def _fields(entry: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    """The entry's fields, refusing a missing or unknown one."""
    if not isinstance(entry, dict):
        raise PromptError(f"{where} must be an object with {', '.join(required)}")
    for key in required:
        if key not in entry:
            raise PromptError(f'{where} has no "{key}"')
    unknown = sorted(set(entry) - set(required) - set(optional))
    if unknown:
        raise PromptError(f'{where} has an unknown field "{unknown[0]}"')
    return entry


def _index(value: Any, where: str) -> Index:
    """A [z, y, x] voxel index of three whole numbers."""
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(float(v).is_integer() for v in value)
    ):
        raise PromptError(f"{where} must be [z, y, x]: three whole voxel indices, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _flag(fields: dict[str, Any], where: str) -> bool:
    """The entry's ``positive`` flag (true when absent)."""
    value = fields.get("positive", True)
    if not isinstance(value, bool):
        raise PromptError(f"{where}.positive must be true or false, got {value!r}")
    return value
