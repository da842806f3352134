"""``dihya``: the command line of Dihya Webhooks.

It talks to the services' HTTP APIs only (ingest on :8080, audit on :8083 by default), with a
token from ``--token``, ``DIHYA_TOKEN`` or a profile in ``~/.config/dihya/config.toml``, so it
works the same against a laptop's ``dihya dev`` and a production deployment. Humans get tables
and messages in their language (en, fr, ar, tzm); scripts get ``--json`` (the APIs' own JSON)
and exit codes that say what went wrong (see :mod:`cli.errors`).
"""

__version__ = "0.1.0"
