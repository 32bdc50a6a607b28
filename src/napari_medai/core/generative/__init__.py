"""Generative models: GAN training and sampling on the open scan, quality metrics."""
