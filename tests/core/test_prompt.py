"""Prompt engine on phantom organs, fill between slices, and PROMPTS.json parsing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from simulated_user import corrective_click

from napari_medai.core.geometry import Geometry
from napari_medai.core.jobs import run_job
from napari_medai.core.phantom import make_phantom
from napari_medai.core.prompt.engine import engine_named, prompt_job, update_job
from napari_medai.core.prompt.interpolate import fill_between_slices
from napari_medai.core.prompt.prompts import (
    Box,
    Point,
    PromptError,
    Prompts,
    Scribble,
    prompts_from_json,
)
from napari_medai.core.volume import Volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def box_around(truth: np.ndarray, margin: float = 0.1) -> Box:
    """The simulated user's box: the object's extent plus 10% of it on every side."""
    inside = np.argwhere(truth)
    low, high = inside.min(axis=0), inside.max(axis=0)
    pad = np.round((high - low + 1) * margin).astype(int)
    top = np.asarray(truth.shape) - 1
    return Box(
        tuple(np.maximum(low - pad, 0).tolist()), tuple(np.minimum(high + pad, top).tolist())
    )


@pytest.fixture(scope="module")
def scan():
    return make_phantom(seed=3)


@pytest.mark.parametrize("organ", [1, 2, 3, 4])
def test_box_then_four_clicks_segments_a_phantom_organ(scan, organ):
    volume, labels = scan
    truth = labels.array == organ
    spacing = np.asarray(volume.geometry.spacing)
    session = engine_named().start(volume)
    prompts = Prompts().plus(box_around(truth))
    mask = session.update(prompts)
    # Each phantom organ is an ellipsoid filling about half its tight box, 15-30 HU from its
    # neighbours under 12 HU noise: seeds 0-2 gave 0.85-0.97 for a box alone, 0.91-0.97 after
    # four clicks. The bounds are the goals, below every measured value.
    assert dice(mask, truth) >= 0.80
    for _ in range(4):
        prompts = prompts.plus(corrective_click(truth, mask, spacing))
        mask = session.update(prompts)
    assert dice(mask, truth) >= 0.85


def test_a_negative_click_removes_what_it_marks(scan):
    volume, labels = scan
    spleen = labels.array == 2
    session = engine_named().start(volume, initial=spleen | (labels.array == 4))
    centre = tuple(int(v) for v in np.argwhere(labels.array == 4).mean(axis=0).round())
    mask = session.update(Prompts((Point(centre, positive=False),)))
    # The left kidney was handed in as part of the object; one negative click in its middle
    # must take most of it away (it is 15 HU from fat-free surroundings on every side) and
    # leave the spleen, which the click does not touch, as it was.
    assert np.count_nonzero(mask & (labels.array == 4)) < 0.2 * np.count_nonzero(labels.array == 4)
    assert dice(mask & spleen, spleen) >= 0.95


def test_a_box_three_slices_deep_finds_the_object_on_each_slice():
    """A lesion on three thick slices (6.5 mm, as the bench's brain MR): the box around it
    is three slices deep, and the object is on all three, not on the middle one only."""
    shape, spacing = (12, 64, 64), (6.5, 0.8, 0.8)
    z, y, x = np.indices(shape)
    lesion = (z >= 5) & (z <= 7) & ((y - 32) ** 2 + (x - 30) ** 2 <= 10**2)
    image = np.where(lesion, 120.0, 40.0) + np.random.default_rng(0).normal(0, 10, shape)
    volume = Volume(image.astype(np.int16), Geometry(spacing=spacing), {})
    mask = engine_named().start(volume).update(Prompts((box_around(lesion),)))
    found = [np.count_nonzero(mask[k] & lesion[k]) / np.count_nonzero(lesion[k]) for k in (5, 6, 7)]
    # Seeding the box's middle slice only found nothing on the outer two (0 of the disc);
    # seeding all three found 31% of each outer disc and 99% of the middle one (measured:
    # 6.5 mm slices against 0.8 mm pixels still favour the fronts from the slices outside).
    assert min(found) >= 0.25 and found[1] >= 0.9


@pytest.mark.real
def test_a_box_alone_finds_the_real_brain_lesion_on_its_three_slices(shared_data):
    """pyradiomics' brain MR lesion: 6.5 mm slices, so the simulated user's box (10% margin)
    is three slices deep."""
    from napari_medai.core.io.reading import read_volume

    volume = read_volume(shared_data / "pyradiomics" / "brain2_image.nrrd")
    truth = read_volume(shared_data / "pyradiomics" / "brain2_label.nrrd").array == 1
    mask = engine_named().start(volume).update(Prompts((box_around(truth),)))
    # bench/prompt.py: 0.371 when only the middle slice was seeded (nothing found on the
    # outer two), 0.650 seeding all three; deterministic (no randomness in the engine).
    assert dice(mask, truth) >= 0.6
    assert all(mask[k].any() for k in np.flatnonzero(truth.any(axis=(1, 2))))


def organ_curved_round_other_tissue() -> tuple[Volume, np.ndarray, np.ndarray]:
    """A C-shaped organ (120) curved round a blob of other tissue (70) that holds its box's
    centre, as the liver's box centre lies in the gut beside it."""
    shape = (24, 72, 72)
    z, y, x = np.indices(shape)
    radius = np.hypot(y - 36, x - 36)
    organ = (z >= 4) & (z <= 19) & (radius >= 18) & (radius <= 28) & (x < 50)
    blob = (z >= 6) & (z <= 17) & (radius <= 9)
    image = np.where(organ, 120.0, np.where(blob, 70.0, 20.0))
    image += np.random.default_rng(0).normal(0, 8, shape)
    return Volume(image.astype(np.int16), Geometry(spacing=(2.0, 1.0, 1.0)), {}), organ, blob


def test_a_positive_click_frees_the_object_from_its_box_centre():
    volume, organ, blob = organ_curved_round_other_tissue()
    box = box_around(organ)
    assert blob[tuple((box.low + box.high) // 2)]
    click = Point((12, 36, 13))
    assert organ[click.zyx]
    mask = engine_named().start(volume).update(Prompts((box, click)))
    # The box centre kept seeding the blob after the click: 92% of it stayed in the mask
    # (Dice 0.84 with it); once a click says where the organ is, none of it (Dice 0.82, the
    # organ's ends are fainter at its tips). The blob is 50 HU from the organ under 8 HU
    # noise, so a tenth of it is far above what noise could let through.
    assert np.count_nonzero(mask & blob) < 0.1 * np.count_nonzero(blob)
    assert dice(mask, organ) >= 0.75


@pytest.mark.real
def test_box_then_four_clicks_on_the_real_liver(shared_data):
    """TotalSegmentator's example CT: the liver curves round the gut, which holds its box's
    centre (the known miss of issue #19)."""
    from napari_medai.core.io.reading import read_volume

    folder = shared_data / "totalsegmentator"
    volume = read_volume(folder / "example_ct_sm.nii.gz")
    truth = read_volume(folder / "example_seg.nii.gz").array == 5
    spacing = np.asarray(volume.geometry.spacing)
    session = engine_named().start(volume)
    prompts = Prompts((box_around(truth),))
    mask = session.update(prompts)
    for _ in range(4):
        prompts = prompts.plus(corrective_click(truth, mask, spacing))
        mask = session.update(prompts)
    # bench/prompt.py: 0.667 while the box centre seeded the gut after every click and the
    # working grid was smoothed by a whole voxel, 0.780 now. Deterministic (no randomness in
    # the engine or the simulated user); 0.75 leaves room for another CPU's rounding only.
    assert dice(mask, truth) >= 0.75


def test_no_prompts_give_the_starting_mask_and_scribbles_seed(scan):
    volume, labels = scan
    kidney = labels.array == 3
    assert np.array_equal(engine_named().start(volume, kidney).update(Prompts()), kidney)
    inside = np.argwhere(ndi.binary_erosion(kidney, iterations=2))
    stroke = Scribble(tuple(tuple(int(v) for v in inside[i]) for i in (0, len(inside) // 2, -1)))
    result = run_job(prompt_job(volume, Prompts((box_around(kidney), stroke))))
    assert result.mask.geometry == volume.geometry
    assert dice(result.mask.array == 1, kidney) >= 0.80
    assert result.voxels == np.count_nonzero(result.mask.array)


def test_prompts_outside_the_scan_are_refused_by_name(scan):
    volume, _ = scan
    session = engine_named().start(volume)
    with pytest.raises(PromptError, match=r"point 0 at \[40, 0, 0\].*outside the scan"):
        run_job(update_job(session, volume, Prompts((Point((40, 0, 0)),)), "geodesic"))


def test_unknown_engine_is_refused_with_the_list():
    with pytest.raises(PromptError, match='no prompt engine "sam".*geodesic'):
        engine_named("sam")


def test_prompts_json_round_trips():
    prompts = Prompts(
        (Point((1, 2, 3)), Box((4, 5, 6), (4, 9, 9)), Scribble(((0, 0, 0), (0, 3, 3)), False))
    )
    assert prompts_from_json(prompts.to_json()) == prompts
    assert prompts.boxes[0].is_2d
    assert prompts.without_last().scribbles == []


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "expected an object"),
        ({"point": []}, 'unknown field "point"'),
        ({}, "no prompts"),
        ({"points": {"zyx": [1, 2, 3]}}, '"points" must be a list'),
        ({"points": [{"zyx": [1, 2]}]}, r"points\[0\].zyx must be \[z, y, x\]"),
        ({"points": [{"zyx": [1, 2, 3.5]}]}, r"points\[0\].zyx must be"),
        ({"points": [{"zyx": [1, True, 3]}]}, r"points\[0\].zyx must be"),
        ({"points": [{"zyx": [1, 2, 3], "positive": "yes"}]}, r"points\[0\].positive must be"),
        ({"points": [{"xyz": [1, 2, 3]}]}, r'points\[0\] has no "zyx"'),
        ({"boxes": [{"start": [1, 2, 3]}]}, r'boxes\[0\] has no "stop"'),
        ({"boxes": [{"start": [1, 2, 3], "stop": [1, 2, 3], "k": 1}]}, 'unknown field "k"'),
        ({"scribbles": [{"zyx": []}]}, r"scribbles\[0\].zyx must be a non-empty list"),
        ({"scribbles": [{"zyx": [[1, 2, 3], [1, 2]]}]}, r"scribbles\[0\].zyx\[1\] must be"),
    ],
)
def test_bad_prompts_json_names_the_field(data, words):
    with pytest.raises(PromptError, match=words):
        prompts_from_json(data, "p.json")


def organ_painted_every_fifth_slice() -> tuple[np.ndarray, np.ndarray]:
    """A 3 cm ellipsoid on a 1 mm grid and its label painted on every 5th slice and the last."""
    shape, spacing = (60, 96, 96), np.array([1.0, 0.8, 0.8])
    z, y, x = (np.indices(shape) - (np.array(shape) / 2)[:, None, None, None]) * spacing[
        :, None, None, None
    ]
    organ = (z / 15.0) ** 2 + (y / 18.0) ** 2 + (x / 12.0) ** 2 <= 1.0
    slices = np.flatnonzero(organ.any(axis=(1, 2)))
    painted = np.zeros(shape, np.uint8)
    for index in [*slices[::5], slices[-1]]:
        painted[index][organ[index]] = 2
    return organ, painted


def test_fill_between_slices_recovers_an_organ_painted_every_fifth_slice():
    organ, painted = organ_painted_every_fifth_slice()
    painted[30, :5, :5] = 7  # another label's voxels must stay exactly as they were
    began = time.perf_counter()
    result = fill_between_slices(painted, (1.0, 0.8, 0.8))
    seconds = time.perf_counter() - began
    # Shape-based interpolation of an ellipsoid between slices 5 mm apart gave 0.957; the
    # issue's goal is 0.9. It took 0.012 s here: the 1 s goal holds on a far slower CPU.
    assert dice(result.labels == 2, organ) >= 0.9
    assert seconds < 1.0
    assert result.axis == 0 and result.filled == {2: 24}
    assert np.array_equal(result.labels[30, :5, :5], np.full((5, 5), 7))
    assert np.array_equal(result.labels[painted != 0], painted[painted != 0])


def test_fill_between_slices_finds_the_painted_axis_and_says_when_there_is_nothing():
    organ, painted = organ_painted_every_fifth_slice()
    sideways = np.moveaxis(painted, 0, 2)
    result = fill_between_slices(sideways, (0.8, 0.8, 1.0))
    assert result.axis == 2
    assert dice(result.labels == 2, np.moveaxis(organ, 0, 2)) >= 0.9
    assert "nothing to fill" in fill_between_slices(organ.astype(np.uint8), (1, 1, 1)).summary()
    with pytest.raises(PromptError, match="3D label map"):
        fill_between_slices(np.zeros((4, 4), np.uint8), (1, 1))


def test_working_grid_round_trip_keeps_an_object_in_place():
    """Coarsening (block means) and refining (linear) keep a box where it was: off by less
    than one coarse cell, the resolution the engine decides at."""
    from napari_medai.core.prompt.geodesic import _coarsen, _refine

    image = np.zeros((40, 97, 101), np.float32)
    image[10:30, 20:70, 33:90] = 1.0
    coarse = _coarsen(image, (17, 31, 29))
    back = _refine(0.5 - coarse, image.shape)
    cell = np.asarray(image.shape) / np.asarray(coarse.shape)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        found = np.flatnonzero(back.any(axis=other))
        assert abs(found[0] - (10, 20, 33)[axis]) < cell[axis]
        assert abs(found[-1] - (29, 69, 89)[axis]) < cell[axis]


def test_refining_onto_a_full_size_region_holds_no_floats_of_its_size():
    """The working grid's decision goes back onto an organ's region of a 512x512x300 CT
    (30 M voxels) without a float array of that size: SimpleITK's resampler held 4 bytes a
    voxel there and took 2 s of the 1 s an update may take."""
    import tracemalloc

    from napari_medai.core.prompt.geodesic import _refine

    decision = np.random.default_rng(0).normal(size=(60, 70, 64)).astype(np.float32)
    shape = (240, 350, 360)
    tracemalloc.start()
    inside = _refine(decision, shape)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert inside.dtype == bool and inside.shape == shape
    # The answer itself is 1 byte a voxel; a few full-resolution slices of floats come on top.
    assert peak < inside.nbytes + 16 * shape[1] * shape[2] * 4
