"""Alembic revisions of ingest's database (run by ``shared.db.migrate``; Alembic skips this
file). A package so the revisions ship with the code."""
