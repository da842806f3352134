"""Message catalogs of the CLI, one JSON object per language (same keys in each; a unit test
checks it). A package so that the catalogs ship with the wheel as package data.

``tzm.json`` is Tamazight in Latin script (the default, as the guide writes it) and
``tzm@tifinagh.json`` the same messages in Tifinagh (``DIHYA_TZM_SCRIPT=tifinagh``).
``gettext/<lang>/LC_MESSAGES/dihya-argparse.po`` holds argparse's own messages (compiled to
``.mo`` beside it with ``msgfmt``; :mod:`cli.parser` uses them).

The Arabic and Tamazight catalogs here (``ar.json``, ``tzm.json``, ``tzm@tifinagh.json`` and
their ``.po`` files) are machine-assisted translations that still await a native speaker's
review.
"""
