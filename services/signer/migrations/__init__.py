"""Alembic revisions of the signer keystore (run by ``shared.db.migrate``)."""
