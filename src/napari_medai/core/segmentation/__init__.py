"""Segmentation: inference, its jobs and the review round of active learning."""
