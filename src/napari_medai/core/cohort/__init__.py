"""Cohort runs: many scans through one model, locally or on Ray, with a resumable record."""
