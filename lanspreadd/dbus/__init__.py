"""The D-Bus adapter: objects, argument checks, error names, polkit, the bus connection."""
