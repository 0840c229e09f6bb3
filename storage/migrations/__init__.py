"""Alembic migrations of pdplanner's schema; run them with ``storage.migrate.upgrade(url)``."""
