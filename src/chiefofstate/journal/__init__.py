"""The event journal: port, SQLite and PostgreSQL adapters, group commit and migrations."""
