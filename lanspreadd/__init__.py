"""lanspreadd: the lanspread system daemon."""

__version__ = "0.1.0"
