"""Integrations: SQLAlchemy, Django; each imports its framework only when used."""
