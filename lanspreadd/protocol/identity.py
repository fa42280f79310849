"""Who a peer is: the hash of its certificate. Signatures are checked by a
verifier the session is given, so the protocol needs no crypto library."""

from __future__ import annotations

import hashlib

PEER_ID_LEN = 32  # hex characters of the certificate's SHA-256


def peer_id_of(cert_der: bytes) -> str:
    return hashlib.sha256(cert_der).hexdigest()[:PEER_ID_LEN]
