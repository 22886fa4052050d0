"""The journal and offset store in memory: for unit tests and embedding, never for `cos serve`."""
