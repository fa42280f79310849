"""lanspread-catalog: the organiser's tool that writes, pins and signs a party's catalog.

It works on files only (the key, the catalog, a game's directory) and never talks to a
daemon, so the private key never leaves the machine it runs on; `lanspreadctl catalog
publish` hands the signed file to a daemon. It uses the daemon's own catalog, hashing
and install code (core/, archive/), so what it pins is what seats serve and install.
"""
