"""Why a pool is starved: what held connections do, who holds them, what size fits; read by the exporter and the CLI, never by the pool."""
