"""Generator jobs and atomic writes."""

from __future__ import annotations

import io

import pytest

from napari_medai.cli.progress import run_with_bar
from napari_medai.core.errors import OutputExistsError
from napari_medai.core.files import atomic_directory, atomic_write, compound_suffix
from napari_medai.core.jobs import Progress, run_job, scaled


def _counting_job(steps: int, log: list[str]):
    try:
        for step in range(steps):
            yield Progress((step + 1) / steps, f"step {step}")
        return "result"
    finally:
        log.append("cleaned")


def test_run_job_returns_result_and_reports_progress():
    events: list[Progress] = []
    log: list[str] = []
    assert run_job(_counting_job(4, log), events.append) == "result"
    assert [e.fraction for e in events] == [0.25, 0.5, 0.75, 1.0]
    assert log == ["cleaned"]


def test_scaled_maps_fractions_and_closing_cancels_the_inner_job():
    log: list[str] = []
    outer = scaled(_counting_job(4, log), 0.5, 1.0)
    assert next(outer).fraction == pytest.approx(0.625)
    outer.close()
    assert log == ["cleaned"]


def _busy_then_half():
    yield Progress(0.5, "half")
    yield Progress(None, "loading")
    return "done"


def test_a_step_without_fraction_passes_through_scaled_and_the_cli_bar():
    assert [e.fraction for e in scaled(_busy_then_half(), 0.0, 0.5)] == [0.25, None]
    out = io.StringIO()
    assert run_with_bar(_busy_then_half(), "job", stream=out) == "done"
    last = out.getvalue().split("\r")[-1]
    # The bar stays at the last fraction and says it is working.
    assert "#" * 15 + "." * 15 in last and "..." in last and "loading" in last


def test_atomic_write_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "mask.nii.gz"
    atomic_write(target, lambda tmp: tmp.write_text("first"))
    assert target.read_text() == "first"
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(OutputExistsError):
        atomic_write(target, lambda tmp: tmp.write_text("second"))

    def failing(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing, overwrite=True)
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_temporary_file_keeps_the_format_suffix(tmp_path):
    seen = []
    atomic_write(
        tmp_path / "a.nii.gz", lambda tmp: seen.append(compound_suffix(tmp)) or tmp.touch()
    )
    assert seen == [".nii.gz"]


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "card.json").write_text("{}")
    assert (target / "card.json").exists()
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "card.json").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "card.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
