"""Live subscriptions: committed events fanned out to gRPC streams (docs/contract.md §7, decision D8)."""
