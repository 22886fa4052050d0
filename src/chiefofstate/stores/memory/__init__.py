"""Stores kept in the process's memory: the journal, the offset store and the cluster store, with the
same contracts as the database adapters. For unit tests and embedding, never for `cos serve`."""
