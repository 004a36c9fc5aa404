"""Alembic migrations of the keystore schema."""
