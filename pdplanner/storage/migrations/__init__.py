"""Alembic migrations of pdplanner's schema; run them with
``pdplanner.storage.migrate.upgrade(url)``."""
