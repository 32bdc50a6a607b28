"""Segmentation: model-space preprocessing and inference."""
