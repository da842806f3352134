"""Dihya's four services; each is its own process (``python -m services.<name>``)."""
