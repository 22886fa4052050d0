"""Pure rules of the server: no I/O, no asyncio, no clock reads."""
