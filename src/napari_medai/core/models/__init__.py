"""Model packages, model sources and network construction."""
