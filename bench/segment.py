"""Benchmark: the plugin's segmentation job against bare MONAI sliding-window inference.

On the CPU, on a 256x256x128 float32 synthetic CT (the phantom), with a MONAI
UNet (channels 16-32-64-128, strides 2-2-2), window 96^3, overlap 0.25, four
windows per batch, at torch's default thread count. Each measurement runs in
its own subprocess so its peak memory is its own; plugin and bare alternate
``REPEATS`` times and the fastest of each counts (the machine may be shared):

- ``plugin``: ``segment_job`` end to end on a Volume in memory (card spacing
  None: no resampling), window normalisation included;
- ``plugin_resampled``: the same with a card asking for another spacing and
  orientation (resampled in and back out);
- ``bare``: ``monai.inferers.sliding_window_inference`` on the already
  normalised array, same network, window, overlap and batch, Gaussian blending
  with the plugin's weights (so the two masks can be compared);
- ``network``: volume and model loaded plus one forward pass of a window
  batch: the floor any window-batch inference pays.

Each timed run also reports its CPU time and the wall time spent outside the
network's forward passes: what each pipeline adds around the network, less
distorted by other load on the machine than the totals.

Peak memory is each process's RSS high-water mark (VmHWM) above its RSS right
after imports, so it includes the volume (held by the caller), the model, the
network's working memory for one batch and everything the pipeline allocates.
It is measured twice: with glibc's default allocator, and with its mmap
threshold fixed (see :func:`measure`).

Prints one JSON object. Usage: ``python bench/segment.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPE = (128, 256, 256)  # (z, y, x)
SPACING = (2.5, 1.5, 1.5)
RESAMPLED_SPACING = [2.25, 1.4, 1.4]
PATCH = [96, 96, 96]
OVERLAP = 0.25
BATCH = 4
REPEATS = 2
WINDOW = {"kind": "window", "low": -160, "high": 240}


def card(resampled: bool):
    from napari_medai.core.models.card import ModelCard

    return ModelCard(
        name="bench-unet",
        architecture="UNet",
        architecture_args={"channels": [16, 32, 64, 128], "strides": [2, 2, 2]},
        label_names={0: "background", 1: "body"},
        patch_size=PATCH,
        intensity=WINDOW,
        spacing=RESAMPLED_SPACING if resampled else None,
        orientation="RAS" if resampled else None,
    )


def rss_mb() -> float:
    """Current resident set size (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """Peak resident set size of this process image (VmHWM).

    Not ``ru_maxrss``: Linux carries that over ``execve``, so a child would
    report the parent's peak (here, making the phantom).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class Timed(torch.nn.Module):
    """Adds up the time spent inside the network, to separate it from everything else."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.network(x)
        self.seconds += time.perf_counter() - start
        return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(mode: str, work: Path) -> dict:
    """One measurement in a fresh process."""
    from monai.data.utils import compute_importance_map
    from monai.inferers import sliding_window_inference

    from napari_medai.core.geometry import Geometry
    from napari_medai.core.jobs import run_job
    from napari_medai.core.models.loaded import LoadedModel
    from napari_medai.core.models.networks import build_network
    from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
    from napari_medai.core.volume import Volume

    after_imports = rss_mb()
    network = build_network(card(False))
    network.load_state_dict(torch.load(work / "weights.pt", weights_only=True))
    network = Timed(network.eval())
    array = np.load(work / "volume.npy")
    geometry = Geometry.from_dict(json.loads((work / "geometry.json").read_text()))
    report: dict = {"rss_after_imports_mb": after_imports}

    if mode == "network":
        batch = torch.zeros(BATCH, 1, *PATCH)
        before = rss_mb()
        with torch.no_grad():
            network(batch)
        del batch
    elif mode == "bare":
        # The plugin's blending weights (separable Gaussian), so the masks can be compared.
        profiles = [compute_importance_map((n,), mode="gaussian") for n in PATCH]
        weights = profiles[0][:, None, None] * profiles[1][:, None] * profiles[2]
        np.clip((array + 160.0) / 400.0, 0.0, 1.0, out=array)  # the card's window, untimed
        before = rss_mb()
        start, cpu = time.perf_counter(), cpu_seconds()
        with torch.no_grad():
            logits = sliding_window_inference(
                torch.from_numpy(array)[None, None],
                PATCH,
                BATCH,
                network,
                overlap=OVERLAP,
                mode="gaussian",
                roi_weight_map=weights,
            )
        report["seconds"] = time.perf_counter() - start
        report["cpu_seconds"] = cpu_seconds() - cpu
        report["peak_rss_mb"] = peak_mb()
        np.save(work / "bare_labels.npy", logits[0].argmax(0).numpy().astype(np.uint8))
    else:
        model = LoadedModel(card(mode == "plugin_resampled"), network, "bench", "-")
        volume = Volume(array, geometry, {"name": "bench"})
        config = SegmentConfig(device="cpu", overlap=OVERLAP, window_batch=BATCH)
        before = rss_mb()
        start, cpu = time.perf_counter(), cpu_seconds()
        result = run_job(segment_job(volume, model, config))
        report["seconds"] = time.perf_counter() - start
        report["cpu_seconds"] = cpu_seconds() - cpu
        report["peak_rss_mb"] = peak_mb()
        report["stages_seconds"] = result.provenance["durations"]
        report["model_space_shape"] = result.provenance["model_space"]["shape"]
        np.save(work / f"{mode}_labels.npy", result.labels.array)
    report.setdefault("peak_rss_mb", peak_mb())
    report["network_seconds"] = network.seconds
    report["rss_before_run_mb"] = before
    report["peak_above_imports_mb"] = report["peak_rss_mb"] - after_imports
    return report


def measure(mode: str, work: Path, fixed_mmap_threshold: bool = False) -> dict:
    """Run one child; optionally with glibc's mmap threshold fixed at 1 MiB.

    By default glibc raises that threshold as big blocks are freed and then
    keeps freed memory in its heap, so RSS peaks depend on allocation history;
    a fixed threshold returns every big block at once and shows what the code
    itself holds.
    """
    env = dict(os.environ)
    if fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    command = [sys.executable, __file__, "--child", mode, "--work", str(work)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout)


def rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def memory_summary(runs: dict, volume_mb: float, model_mb: float) -> dict:
    """Peaks above the post-import RSS, and what the plugin adds over the network alone."""
    limit = 3 * volume_mb + model_mb
    plugin = runs["plugin"]["peak_above_imports_mb"]
    network = runs["network"]["peak_above_imports_mb"]
    return {
        "plugin_peak_mb": plugin,
        "bare_monai_peak_mb": runs["bare"]["peak_above_imports_mb"],
        "network_only_peak_mb": network,
        "plugin_minus_network_only_mb": plugin - network,
        "plugin_under_limit": bool(plugin < limit),
        "plugin_without_network_working_memory_under_limit": bool(
            volume_mb + model_mb + plugin - network < limit
        ),
    }


def outside(run: dict) -> float:
    return run["seconds"] - run["network_seconds"]


def main() -> dict:
    from napari_medai.core.models.networks import build_network
    from napari_medai.core.phantom import make_phantom

    torch.manual_seed(0)
    network = build_network(card(False))
    model_mb = sum(p.numel() * p.element_size() for p in network.parameters()) / 2**20
    ct, _ = make_phantom(shape=SHAPE, spacing=SPACING, seed=0)
    volume_mb = float(np.prod(SHAPE) * 4 / 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "volume.npy", ct.array.astype(np.float32))
        (work / "geometry.json").write_text(json.dumps(ct.geometry.to_dict()))
        torch.save(network.state_dict(), work / "weights.pt")
        del ct
        # Timing: alternate the two, REPEATS times each, and keep the fastest (shared machine).
        timed: dict[str, list[dict]] = {"plugin": [], "bare": []}
        for _ in range(REPEATS):
            for mode in timed:
                timed[mode].append(measure(mode, work))
        agreement = float(
            np.mean(np.load(work / "plugin_labels.npy") == np.load(work / "bare_labels.npy"))
        )
        resampled = measure("plugin_resampled", work)
        default_memory = {mode: runs[0] for mode, runs in timed.items()}
        default_memory["network"] = measure("network", work)
        fixed_memory = {
            mode: measure(mode, work, fixed_mmap_threshold=True)
            for mode in ("network", "plugin", "bare")
        }
    plugin_seconds = min(run["seconds"] for run in timed["plugin"])
    bare_seconds = min(run["seconds"] for run in timed["bare"])
    ratio = plugin_seconds / bare_seconds
    return rounded(
        {
            "benchmark": "segment",
            "command": "python bench/segment.py",
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "volume_shape_zyx": list(SHAPE),
            "volume_float32_mb": volume_mb,
            "model": "MONAI UNet channels (16, 32, 64, 128) strides (2, 2, 2), 2 classes",
            "model_mb": model_mb,
            "patch": PATCH,
            "overlap": OVERLAP,
            "window_batch": BATCH,
            "plugin_seconds_each": [run["seconds"] for run in timed["plugin"]],
            "bare_monai_seconds_each": [run["seconds"] for run in timed["bare"]],
            "plugin_seconds": plugin_seconds,
            "bare_monai_seconds": bare_seconds,
            "plugin_over_bare_ratio": ratio,
            "overhead_percent": 100 * (ratio - 1),
            "goal_overhead_at_most_10_percent": bool(ratio <= 1.10),
            "plugin_cpu_seconds_each": [run["cpu_seconds"] for run in timed["plugin"]],
            "bare_monai_cpu_seconds_each": [run["cpu_seconds"] for run in timed["bare"]],
            "plugin_over_bare_cpu_ratio": min(run["cpu_seconds"] for run in timed["plugin"])
            / min(run["cpu_seconds"] for run in timed["bare"]),
            # Wall time outside the network's forward passes: the part each pipeline adds.
            "plugin_outside_network_seconds_each": [outside(run) for run in timed["plugin"]],
            "bare_monai_outside_network_seconds_each": [outside(run) for run in timed["bare"]],
            "plugin_stages_seconds": timed["plugin"][0]["stages_seconds"],
            "mask_agreement_plugin_vs_bare": agreement,
            "memory_limit_3x_volume_plus_model_mb": 3 * volume_mb + model_mb,
            "memory_default_allocator": memory_summary(default_memory, volume_mb, model_mb),
            "memory_fixed_mmap_threshold": memory_summary(fixed_memory, volume_mb, model_mb),
            "plugin_resampled": {
                "card_spacing_zyx": RESAMPLED_SPACING,
                "card_orientation": "RAS",
                "model_space_shape_zyx": resampled["model_space_shape"],
                "seconds": resampled["seconds"],
                "stages_seconds": resampled["stages_seconds"],
                "peak_above_imports_mb": resampled["peak_above_imports_mb"],
            },
        }
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["network", "plugin", "plugin_resampled", "bare"])
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    output = child(args.child, args.work) if args.child else main()
    print(json.dumps(output))
