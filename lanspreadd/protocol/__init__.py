"""The peer protocol, sans-IO: messages, framing and the session state machine.

Nothing here imports asyncio or touches a socket; time is passed in as `now`.
"""

# 2: the identity proof is bound to the connection (the TLS certificate it saw, both
# challenges); version 1 signed any challenge for any verifier and could be relayed.
# 3: peers tell each other their catalog's revision and signer, and pass the organiser's
# signed catalog on (CatalogAnnounce, CatalogRequest, CatalogDocument).
# 4: peers downloading a game serve the chunks they hold and say which (ChunkMap,
# ChunkDelta); a data channel may answer BUSY when its upload slots are full.
# 5: a bounded mesh: peers pass on some of the peers they are connected to, and what
# those hold (PeerExchange).
PROTOCOL_VERSION = 5
ALPN = "lanspread/1"
