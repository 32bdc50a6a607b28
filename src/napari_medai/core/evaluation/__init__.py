"""Label statistics (sizes in mL, intensities under each label) and evaluation metrics in mm."""
