"""A dock's model picker: models in the registry's order, the load entries last."""

from __future__ import annotations

from qtpy.QtWidgets import QWidget

from napari_medai._qt.model_picker import LOAD_FILE, LOAD_FOLDER, ModelPicker
from napari_medai.core.models.card import CARD_FILE, ModelCard


def save_card(folder, name: str) -> None:
    card = ModelCard(name, "UNet", {}, {0: "background", 1: "liver"}, [1, 64, 64])
    folder.mkdir(parents=True)
    (folder / CARD_FILE).write_text(card.to_json(), encoding="utf-8")


def test_a_model_trained_while_the_dock_is_open_is_listed_before_the_load_entries(
    qtbot, tmp_path, monkeypatch
):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    parent = QWidget()
    qtbot.addWidget(parent)
    picker = ModelPicker(parent, lambda: "CT", lambda: None, tasks=("segmentation",))
    save_card(tmp_path / "a-kidney", "kidney")
    save_card(tmp_path / "b-spleen", "spleen")
    picker.refresh()
    picker.combo.value = str(tmp_path / "b-spleen")  # the user's pick
    save_card(tmp_path / "0-liver", "liver")  # trained in the Train dock meanwhile
    picker.refresh()

    combo = picker.combo.native
    texts = [combo.itemText(index) for index in range(combo.count())][1:]  # after "none"
    names = [text.split(" · ")[0] for text in texts]
    assert names == ["liver", "kidney", "spleen", LOAD_FILE, LOAD_FOLDER]
    assert picker.source == str(tmp_path / "b-spleen") and not picker.automatic
