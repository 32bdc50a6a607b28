"""Classification: whole scans, every slice, or boxes; Grad-CAM; metrics; training."""
