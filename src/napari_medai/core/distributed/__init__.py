"""Scale out: cohort runs on many scans (local or Ray) and DDP training helpers (torchrun)."""
