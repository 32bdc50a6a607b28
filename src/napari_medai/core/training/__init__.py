"""Train segmentation models on sparse user annotations (see :mod:`.trainer`)."""
