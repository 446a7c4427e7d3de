"""Alembic migrations of the relational schema."""
