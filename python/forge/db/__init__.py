"""The database seam: migrations, named SQL statements, and the embedded PostgreSQL for development."""
