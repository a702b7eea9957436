"""The schema revision this code reads and writes, alone so that readers
without SQLAlchemy (`events.quickread`) know it too: the newest revision
under events/migrations/versions. A new migration bumps it
(tests/test_store.py holds it equal to the head Alembic finds there)."""

HEAD = "0005"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps
