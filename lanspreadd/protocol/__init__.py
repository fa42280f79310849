"""The peer protocol, sans-IO: messages, framing and the session state machine.

Nothing here imports asyncio or touches a socket; time is passed in as `now`.
"""

PROTOCOL_VERSION = 1
ALPN = "lanspread/1"
