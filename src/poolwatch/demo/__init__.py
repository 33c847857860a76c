"""`poolwatch demo`: an embedded PostgreSQL, a pool under named load scenarios, the exporter."""
