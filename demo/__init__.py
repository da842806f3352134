"""Development tooling: run the four services as real processes (demo, end-to-end tests, bench).

Not a service: nothing under ``services/`` imports it.
"""
