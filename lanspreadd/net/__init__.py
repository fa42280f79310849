"""Adapters to the world: QUIC transport, peers, discovery, the data channel's
server and client, inotify and sd_notify. Only this layer opens sockets.
"""
