"""The node's public surfaces: the gRPC services and the management endpoints."""
