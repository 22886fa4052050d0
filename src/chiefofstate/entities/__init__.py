"""Entities in memory: serial processing per entity, the bounded cache, recovery and snapshots."""
