"""Stores kept in the process's memory, for tests: the same contracts as the database adapters."""
