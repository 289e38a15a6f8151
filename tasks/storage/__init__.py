"""curation.duckdb: schema, the single writer, run bookkeeping."""
