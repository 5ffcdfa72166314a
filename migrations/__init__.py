"""Alembic environment of the reference schema; shipped as ``confusion_exporter.migrations``."""
