"""The pure domain: catalog, state model, install, operations and policies.

No sockets, no asyncio, no D-Bus.
"""
