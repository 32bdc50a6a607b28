"""Which prediction label is scored against which reference label: by name, else by value.

Two maps from different sources number their labels differently (a liver model
writes 1 = liver; TotalSegmentator writes 5 = liver, 1 = spleen), so scoring
value 1 against value 1 compares two different organs. When both maps name
their labels (sidecars, NRRD segment names, DICOM-SEG segment labels, model
cards), labels are paired by name. When either side has no names, or no name is
shared, or a name stands for two labels on one side, labels are paired by value
and the reason says why, so the output never hides it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BY_NAME = "by name"
BY_VALUE = "by value"


@dataclass(frozen=True)
class LabelPair:
    """One scored pair: the prediction's value and the reference's value for one structure."""

    name: str
    predicted_value: int
    reference_value: int


@dataclass(frozen=True)
class UnmatchedLabel:
    """A label present in one map that has no counterpart in the other (not scored)."""

    value: int
    name: str | None


@dataclass(frozen=True)
class LabelMatching:
    """How labels were paired (``by`` is :data:`BY_NAME` or :data:`BY_VALUE`), and why."""

    by: str
    reason: str
    pairs: list[LabelPair]
    unmatched_prediction: list[UnmatchedLabel] = field(default_factory=list)
    unmatched_reference: list[UnmatchedLabel] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """What the reader of the scores must know: a fallback to values, labels not scored."""
        notes = []
        if self.by == BY_VALUE and self.reason != _NO_NAMES:
            notes.append(f"labels matched by value: {self.reason}")
        for side, unmatched in (
            ("prediction", self.unmatched_prediction),
            ("reference", self.unmatched_reference),
        ):
            if unmatched:
                listed = ", ".join(_describe(label) for label in unmatched)
                notes.append(
                    f"not scored, no label of the same name in the other map: {side} {listed}"
                )
        return notes

    def summary(self) -> str:
        """One line: the matching and the pairs whose values differ (e.g. liver 1 -> 5)."""
        moved = [
            f"{pair.name} {pair.predicted_value} -> {pair.reference_value}"
            for pair in self.pairs
            if pair.predicted_value != pair.reference_value
        ]
        return f"labels matched {self.by}" + (f" ({', '.join(moved)})" if moved else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: the matching, its reason, the pairs and what was left out."""
        return {
            "matching": self.by,
            "matching_reason": self.reason,
            "pairs": [vars(pair) for pair in self.pairs],
            "unmatched_prediction_labels": [vars(label) for label in self.unmatched_prediction],
            "unmatched_reference_labels": [vars(label) for label in self.unmatched_reference],
        }


_NO_NAMES = "neither map names its labels"


def match_labels(
    predicted_values: Iterable[int],
    reference_values: Iterable[int],
    predicted_names: Mapping[int, str],
    reference_names: Mapping[int, str],
) -> LabelMatching:
    """Pair the labels present in the prediction and the reference (background excluded).

    By name when both maps name their labels and share at least one name;
    otherwise by value, over every value present in either map.
    """
    predicted, reference = sorted(set(predicted_values)), sorted(set(reference_values))
    reason = _why_not_by_name(_named(predicted_names), _named(reference_names))
    if reason:
        return _by_value(predicted, reference, predicted_names, reference_names, reason)
    return _by_name(predicted, reference, predicted_names, reference_names)


def normalised_name(name: str) -> str:
    """A name compared without case, spaces, underscores or punctuation ("Kidney_Right")."""
    return " ".join(re.split(r"[\W_]+", name.casefold())).strip()


def _named(names: Mapping[int, str]) -> dict[int, str]:
    """Foreground values with a usable name, the name normalised."""
    named = {int(value): normalised_name(str(name)) for value, name in names.items() if value}
    return {value: name for value, name in named.items() if name}


def _why_not_by_name(prediction: dict[int, str], reference: dict[int, str]) -> str:
    """Why names cannot pair the labels ("" when they can)."""
    if not prediction and not reference:
        return _NO_NAMES
    if not prediction or not reference:
        side = "prediction" if not prediction else "reference"
        return f"the {side} carries no label names"
    for side, names in (("prediction", prediction), ("reference", reference)):
        duplicates = _duplicated(names)
        if duplicates:
            return f"the {side} gives one name to several labels ({duplicates})"
    if not set(prediction.values()) & set(reference.values()):
        return (
            "the two maps share no label name (prediction: "
            f"{', '.join(sorted(set(prediction.values())))}; reference: "
            f"{', '.join(sorted(set(reference.values())))})"
        )
    return ""


def _duplicated(names: dict[int, str]) -> str:
    """The first name held by several values, as "kidney: 2, 3", or ""."""
    by_name: dict[str, list[int]] = {}
    for value, name in sorted(names.items()):
        by_name.setdefault(name, []).append(value)
    for name, values in by_name.items():
        if len(values) > 1:
            return f"{name}: {', '.join(map(str, values))}"
    return ""


def _by_value(
    predicted: list[int],
    reference: list[int],
    predicted_names: Mapping[int, str],
    reference_names: Mapping[int, str],
    reason: str,
) -> LabelMatching:
    names = {**predicted_names, **reference_names}
    pairs = [
        LabelPair(str(names.get(value) or value), value, value)
        for value in sorted(set(predicted) | set(reference))
    ]
    return LabelMatching(BY_VALUE, reason, pairs)


def _by_name(
    predicted: list[int],
    reference: list[int],
    predicted_names: Mapping[int, str],
    reference_names: Mapping[int, str],
) -> LabelMatching:
    """Pairs for every name of a label present in either map and named in both.

    Names are compared normalised; pairs and left-out labels show their own map's spelling.
    """
    prediction_keys, reference_keys = _named(predicted_names), _named(reference_names)
    prediction_by_key = {key: value for value, key in prediction_keys.items()}
    reference_by_key = {key: value for value, key in reference_keys.items()}
    present = {prediction_keys.get(v) for v in predicted} | {
        reference_keys.get(v) for v in reference
    }
    shared = sorted(
        (key for key in present if key in prediction_by_key and key in reference_by_key),
        key=lambda key: reference_by_key[key],
    )
    pairs = [
        LabelPair(
            str(reference_names[reference_by_key[key]]),
            prediction_by_key[key],
            reference_by_key[key],
        )
        for key in shared
    ]
    return LabelMatching(
        BY_NAME,
        "both maps name their labels",
        pairs,
        _unmatched(predicted, prediction_keys, predicted_names, set(reference_by_key)),
        _unmatched(reference, reference_keys, reference_names, set(prediction_by_key)),
    )


def _unmatched(
    values: list[int],
    keys: dict[int, str],
    names: Mapping[int, str],
    other_keys: set[str],
) -> list[UnmatchedLabel]:
    """Labels present in one map whose name the other map does not hold (or with no name)."""
    return [
        UnmatchedLabel(value, str(names[value]) if value in keys else None)
        for value in values
        if keys.get(value) not in other_keys
    ]


def _describe(label: UnmatchedLabel) -> str:
    return f"{label.name} ({label.value})" if label.name else f"{label.value} (no name)"
