"""The HTTP adapter: one ASGI app and its one route table."""
