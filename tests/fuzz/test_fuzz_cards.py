"""Model packages from elsewhere: a valid package (written by our own code) mutated field by field.

Each case must end in a ModelLoadError naming the field it broke (in one short
line, with the card's file), or load correctly: the card then says what the
JSON says (read back with the json module, the independent reader here) and
the network gives the same outputs as the one saved. Any other exception, a
silently different card or different outputs fail the case.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch

from napari_medai.core.errors import ModelLoadError
from napari_medai.core.models.card import CARD_FILE, WEIGHTS_FILE, ModelCard, normalise_modality
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.package import save_model_package
from napari_medai.core.models.sources import load_model

SEED = 17
#: Junk values tried in each field; a seeded few per field keep the file fast.
JUNK = {
    "null": None,
    "text": "banana",
    "true": True,
    "negative": -1,
    "zero": 0,
    "nan": math.nan,
    "inf": math.inf,
    "huge": 1e300,
    "bigint": 10**40,
    "list": [1, 2, 3],
    "nested": {"a": [[{"b": None}]]},
    "longtext": "x" * 5000,
    "object": {},
}
JUNK_PER_FIELD = 4
#: Fields whose change alters the network: a refusal that the weights do not fit is right too.
SHAPES_NETWORK = ("architecture", "architecture_args", "label_names", "spatial_dims", "in_channels")
FIELDS = [f.name for f in fields(ModelCard)]
REQUIRED = [f.name for f in fields(ModelCard) if f.default is f.default_factory is MISSING]


def _card() -> ModelCard:
    return ModelCard(
        name="fuzz liver",
        architecture="UNet",
        architecture_args={"channels": [4, 8], "strides": [2], "num_res_units": 0},
        label_names={0: "background", 1: "liver"},
        patch_size=[1, 32, 32],
        spatial_dims=2,
        spacing=[5.0, 0.8, 0.8],
        orientation="LPS",
        intensity={"kind": "window", "low": -160, "high": 240},
        training={"val_dice": 0.8, "iterations": 12, "data": []},
        modality="CT",
        body_region="abdomen",
    )


def _field_cases(rng: random.Random) -> list[tuple[str, str, object]]:
    """(case id, field, value): seeded junk in every field, plus each field removed."""
    cases = []
    for name in FIELDS:
        for junk in rng.sample(sorted(JUNK), JUNK_PER_FIELD):
            cases.append((f"{name}={junk}", name, JUNK[junk]))
        cases.append((f"{name}=missing", name, MISSING))
    return cases


#: Hand-made cases on the card file and the weights: (id, expected words in the refusal).
FILE_CASES = {
    "card-invalid-json": "not valid JSON",
    "card-json-list": "a model card is a JSON object",
    "card-json-null": "a model card is a JSON object",
    "card-empty": "not valid JSON",
    "card-binary": "not UTF-8",
    "card-too-deep": "nested too deeply",
    "card-too-big": "larger than",
    "card-extra-field": "unknown card fields ['_target_']",
    "card-link-outside": "outside the model folder",
    "card-link-inside": "",
    "card-duplicate-label": "names label value 1 twice",
    "card-label-key-fraction": "has key str '1.5'",
    "card-whole-floats": "",
    "weights-link-outside": "outside the model folder",
    "weights-link-inside": "",
    "weights-link-loop": "has no model.safetensors",
    "weights-missing": "has no model.safetensors",
    "weights-folder": "has no model.safetensors",
    "weights-truncated": "not a readable safetensors file",
    "weights-empty": "not a readable safetensors file",
    "weights-other-network": "do not fit UNet",
    "weights-huge-network": "do not fit UNet",
}


def _write_file_case(case: str, folder: Path, data: dict, outside: Path) -> None:
    card, weights = folder / CARD_FILE, folder / WEIGHTS_FILE
    texts = {
        "card-invalid-json": "{",
        "card-json-list": "[1, 2]",
        "card-json-null": "null",
        "card-empty": "",
        "card-too-deep": "[" * 50_000,
        "card-too-big": " " * (2 << 20) + json.dumps(data),
        "card-extra-field": json.dumps({**data, "_target_": "os.system"}),
        "card-duplicate-label": json.dumps(
            {**data, "label_names": {"0": "background", "1": "liver", "01": "spleen"}}
        ),
        "card-label-key-fraction": json.dumps({**data, "label_names": {"0": "bg", "1.5": "x"}}),
        "card-whole-floats": json.dumps({**data, "patch_size": [1.0, 32.0, 32.0]}),
    }
    if case in texts:
        card.write_text(texts[case])
    elif case == "card-binary":
        card.write_bytes(b"\xff\xfe\x00{" + os.urandom(64))
    elif case.endswith("link-outside"):
        target = outside / f"{case}.bin"
        (card if case.startswith("card") else weights).rename(target)
        (card if case.startswith("card") else weights).symlink_to(target)
    elif case.endswith("link-inside"):
        (card if case.startswith("card") else weights).rename(folder / "real.bin")
        (card if case.startswith("card") else weights).symlink_to("real.bin")
    elif case == "weights-link-loop":
        weights.unlink()
        weights.symlink_to(WEIGHTS_FILE)
    elif case == "weights-missing":
        weights.unlink()
    elif case == "weights-folder":
        weights.unlink()
        weights.mkdir()
    elif case == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif case == "weights-empty":
        weights.write_bytes(b"")
    elif case == "weights-other-network":
        card.write_text(
            json.dumps({**data, "architecture_args": {"channels": [8, 16], "strides": [2]}})
        )
    elif case == "weights-huge-network":
        args = {"channels": [60000, 60000], "strides": [2], "num_res_units": 0}
        card.write_text(json.dumps({**data, "architecture_args": args}))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every case's package folder, the original card's JSON and its network's outputs."""
    torch.manual_seed(SEED)
    root = tmp_path_factory.mktemp("cards")
    card = _card()
    network = build_network(card).eval()
    original = save_model_package(root / "original", card, network)
    data = json.loads((original / CARD_FILE).read_text())
    outside = root / "outside"
    outside.mkdir()
    folders = {}
    for case, name, value in _field_cases(random.Random(SEED)):
        folder = Path(shutil.copytree(original, root / f"case{len(folders)}"))
        mutated = {k: v for k, v in data.items() if k != name}
        if value is not MISSING:
            mutated[name] = value
        (folder / CARD_FILE).write_text(json.dumps(mutated))
        folders[case] = folder
    for case in FILE_CASES:
        folders[case] = Path(shutil.copytree(original, root / f"case{len(folders)}"))
        _write_file_case(case, folders[case], data, outside)
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        reference = network(x)
    return folders, x, reference


def _expected_card(folder: Path) -> dict:
    """What the card must say, read independently with the json module (defaults filled in)."""
    data = json.loads((folder / CARD_FILE).read_text())
    defaults = {
        f.name: f.default if f.default is not MISSING else f.default_factory()
        for f in fields(ModelCard)
        if f.default is not MISSING or f.default_factory is not MISSING
    }
    return {**defaults, **data}


def _check_loaded(folder: Path, x: torch.Tensor, reference: torch.Tensor) -> None:
    model = load_model(folder)
    expected = _expected_card(folder)
    card = model.card
    assert card.label_names == {int(k): v for k, v in expected["label_names"].items()}
    assert card.patch_size == [int(v) for v in expected["patch_size"]]
    assert card.modality == (normalise_modality(expected["modality"]) or None)
    assert card.orientation == (expected["orientation"] and expected["orientation"].upper())
    for name in ("name", "architecture", "architecture_args", "task", "intensity", "training"):
        assert getattr(card, name) == expected[name], name
    for name in ("spatial_dims", "in_channels", "context_slices", "format_version", "spacing"):
        assert getattr(card, name) == expected[name], name
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), reference)


def _check_refusal(error: ModelLoadError, folder: Path, words: list[str]) -> None:
    message = str(error)
    assert "\n" not in message and len(message) < 600, message
    assert str(folder) in message, message
    assert any(word in message for word in words), message


FIELD_CASES = _field_cases(random.Random(SEED))


@pytest.mark.parametrize(("case", "name", "value"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_junk_in_a_card_field(corpus, case, name, value):
    folders, x, reference = corpus
    folder = folders[case]
    try:
        _check_loaded(folder, x, reference)
    except ModelLoadError as error:
        words = [f"'{name}", f"{name}'", "do not fit"] if name in SHAPES_NETWORK else [f"'{name}"]
        if name == "architecture":
            words.append("unknown architecture")
        if name == "architecture_args":
            words.append("cannot build UNet")
        _check_refusal(error, folder, words)


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_damaged_card_or_weights_file(corpus, case):
    folders, x, reference = corpus
    words = FILE_CASES[case]
    if not words:
        _check_loaded(folders[case], x, reference)
        return
    with pytest.raises(ModelLoadError) as error:
        load_model(folders[case])
    _check_refusal(error.value, folders[case], [words])
