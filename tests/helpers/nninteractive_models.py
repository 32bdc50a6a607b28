"""A tiny nnInteractive model folder with random weights, in the layout of its released ones.

The released checkpoints are folders holding ``dataset.json``, ``plans.json``,
``inference_info.json`` (what the model can take), a ``LICENSE`` whose first line names
the licence, and ``fold_0/checkpoint_final.pth``: nnU-Net's checkpoint dict (network
weights, its training log with numpy floats, the trainer's name and init arguments), as
nnInteractive's ``checkpoint_cleansing`` leaves it. Here the network is a two-stage
plain U-Net of 4 and 8 channels (a 64-voxel patch, as nnInteractive refines
with a 24-voxel margin inside it), so a prediction takes a fraction of a second on a CPU; nothing
is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

#: The plan's configuration: what ``init_args["configuration"]`` names.
CONFIGURATION = "3d_fullres"
LICENSE = "CC BY-NC-SA 4.0"
PATCH = [64, 64, 64]
#: The output bias for background (see :func:`_network_weights`).
BACKGROUND_LOGIT = 20.0

ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2,
        "features_per_stage": [4, 8],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2]],
        "n_conv_per_stage": [1, 1],
        "n_conv_per_stage_decoder": [1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

#: nnInteractive's capability file: its default channels (prev_seg, bbox, points, scribble).
INFERENCE_INFO = {
    "inference_class": "nnInteractiveInferenceSession",
    "supported_interactions": {
        "scribble": True,
        "lasso": True,
        "points": True,
        "bbox2d": True,
        "bbox3d": False,
    },
    "interaction_channels": 6,
    "channel_mapping": {
        "prev_seg": 0,
        "bbox2d": [1, 2],
        "bbox3d": [1, 2],
        "lasso": [1, 2],
        "points": [3, 4],
        "scribble": [5, 6],
    },
    "point_radius": 2,
    "preferred_scribble_thickness": [2, 2, 2],
    "interaction_decay": 0.9,
    "pad_mode_image": "constant",
}


def plans() -> dict:
    """An nnU-Net plans file with one small 3D configuration."""
    return {
        "dataset_name": "Dataset999_TinyInteractive",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": "tiny",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 1,
                "patch_size": PATCH,
                "median_image_size_in_voxels": [32, 32, 32],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "architecture": ARCHITECTURE,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1.0, "max": 1.0}
        },
    }


DATASET = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "object": 1},
    "numTraining": 1,
    "file_ending": ".nii.gz",
}


def _network_weights(plan: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of the plan's network (2 outputs; image + 7 interaction channels in).

    The output layer's bias makes background win everywhere, so a prediction never
    reaches its patch's border: nnInteractive then neither zooms out nor refines, and an
    update takes one forward pass of the 64-voxel patch (a random object would send it
    through four zoomed-out passes and dozens of refinement patches: 20 s on this CPU).
    """
    from nnInteractive.trainer.nnInteractiveTrainer import nnInteractiveTrainer_stub
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plan)
    torch.manual_seed(seed)
    network = nnInteractiveTrainer_stub.build_network_architecture(
        manager,
        manager.get_configuration(CONFIGURATION),
        1 + INFERENCE_INFO["interaction_channels"] + 1,
        2,
        enable_deep_supervision=False,
    )
    weights = network.state_dict()
    for name in weights:
        if name.startswith("decoder.seg_layers") and name.endswith("bias"):
            weights[name] = torch.tensor([BACKGROUND_LOGIT, -BACKGROUND_LOGIT])
    return weights


def checkpoint(plan: dict, seed: int = 0) -> dict:
    """nnU-Net's checkpoint dict as nnInteractive releases it (no optimizer, no dataset.json)."""
    return {
        "network_weights": _network_weights(plan, seed),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "train_losses": [0.7]},
        "_best_ema": np.float64(0.5),
        "current_epoch": 1,
        "init_args": {
            "plans": plan,
            "configuration": CONFIGURATION,
            "fold": 0,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnInteractiveTrainer_stub",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def save_tiny_nninteractive(
    folder: Path, seed: int = 0, license_text: str | None = LICENSE
) -> Path:
    """Write the tiny model folder; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = plans()
    (folder / "plans.json").write_text(json.dumps(plan))
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    (folder / "inference_info.json").write_text(json.dumps(INFERENCE_INFO))
    if license_text is not None:
        (folder / "LICENSE").write_text(f"{license_text}\nhttps://example.org/licence\n")
    (folder / "fold_0").mkdir(exist_ok=True)
    torch.save(checkpoint(plan, seed), folder / "fold_0" / "checkpoint_final.pth")
    return folder


class _RunsCode:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def poison_checkpoint(folder: Path, marker: Path) -> Path:
    """Rewrite the folder's checkpoint with an object whose unpickling makes ``marker``."""
    content = checkpoint(plans())
    content["logging"]["payload"] = _RunsCode(marker)
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(content, path)
    return path
