"""Live subscriptions: committed events fanned out to gRPC streams (SPEC.md §7, decision D8)."""
