"""napari-medai becomes napari's reader for medical files and folders, once, and says so."""

from __future__ import annotations

import os

import pytest
from napari.settings import NapariSettings

from napari_medai._napari import reader_choice
from napari_medai._napari.reader_choice import PLUGIN, READER_PATTERNS, claim_medical_readers


@pytest.fixture
def notes(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(reader_choice, "show_info", shown.append)
    monkeypatch.setattr(reader_choice, "_offered_in_memory", set())
    return shown


def test_claims_our_patterns_once_and_says_how_to_undo(notes):
    settings = NapariSettings(config_path=None)

    claimed = claim_medical_readers(settings)

    assert claimed == list(READER_PATTERNS)
    assert settings.plugins.extension2reader == dict.fromkeys(READER_PATTERNS, PLUGIN)
    assert f"*{os.sep}" in claimed  # folders: DICOM series
    [note] = notes
    assert note.startswith("napari-medai now opens medical images and DICOM folders")
    assert "*.nii.gz" in note and f"*{os.sep} (every folder)" in note
    assert "Preferences > Plugins" in note
    assert claim_medical_readers(settings) == [] and len(notes) == 1


def test_leaves_every_choice_the_user_made_alone(notes):
    settings = NapariSettings(config_path=None)
    mine = {"*.nii.gz": "napari-nifti", "*.gz": "other", "*.dcm": "napari", "*.zip": PLUGIN}
    settings.plugins.extension2reader = dict(mine)

    claimed = claim_medical_readers(settings)

    assert not {"*.nii.gz", "*.dcm", "*.zip"} & set(claimed)
    assert "*.nii" in claimed and "*.nrrd" in claimed
    assert {k: settings.plugins.extension2reader[k] for k in mine} == mine


def test_a_preference_the_user_removed_stays_removed(tmp_path, notes):
    config = tmp_path / "settings.yaml"
    first = NapariSettings(config_path=config)
    claim_medical_readers(first)
    first.plugins.extension2reader = {}  # the user clears the table in Preferences
    first.save()

    next_session = NapariSettings(config_path=config)

    assert claim_medical_readers(next_session) == []
    assert next_session.plugins.extension2reader == {}
    assert (tmp_path / reader_choice.MARKER_NAME).is_file()


def test_activation_never_fails_the_plugin(monkeypatch, caplog):
    def broken():
        raise OSError("read-only settings")

    monkeypatch.setattr(reader_choice, "get_settings", broken)
    reader_choice.activate(None)
    assert "reader preferences" in caplog.text
