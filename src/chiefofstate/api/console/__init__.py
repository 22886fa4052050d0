"""The admin console: server-rendered pages on the management port under /admin/ (docs/console.md)."""
