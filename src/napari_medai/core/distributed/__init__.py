"""DDP training helpers (torchrun)."""
