"""The D-Bus adapter: objects, argument checks, error names, polkit, the bus.

The only layer that knows D-Bus names.
"""
