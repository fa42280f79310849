"""The pure domain: catalog, state model, install, operations, policies. No sockets, no asyncio, no D-Bus."""
