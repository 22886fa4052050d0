-- Additive (decision D2): each member records the read sides it runs, so that every (read side, shard)
-- projection is placed only on members that run that read side (docs/cluster.md, "Read sides"). A
-- member of an earlier release has none recorded and is given no projection.
ALTER TABLE cos_cluster_members
    ADD COLUMN IF NOT EXISTS read_sides TEXT[] NOT NULL DEFAULT '{}';
