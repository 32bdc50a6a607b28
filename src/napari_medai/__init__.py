"""napari-medai: AI-assisted CT/MRI segmentation and training in napari."""

__version__ = "0.1.0"
