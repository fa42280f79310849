"""lanspreadctl: drive lanspreadd over D-Bus from scripts and terminals."""
