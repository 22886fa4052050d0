"""The application's write handler: port, gRPC adapter, circuit breaker."""
