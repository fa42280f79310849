"""Adapters to the world: QUIC transport, peers, discovery, data server and client, inotify, sd_notify."""
