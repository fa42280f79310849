"""Who broke the rules: us (a bug) or the peer (bad input), as in h11."""


class ProtocolError(Exception):
    pass


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed, oversized or out of order."""
