"""Relational storage (SQLAlchemy, migrations, row-level security); telemetry stores come later."""
