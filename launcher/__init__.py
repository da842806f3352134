"""The process launcher: run Dihya's four services as real OS processes.

Used by ``dihya dev`` (the CLI), the demo, the benchmark and the end-to-end tests; see
:mod:`launcher.processes`. Not a service: nothing under ``services/`` imports it.
"""
