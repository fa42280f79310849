"""The organiser's signed catalog spreading between seats: trust, adoption, forgeries.

The pure parts (whom to ask and when, the trust store, which catalog is used) in memory;
then real daemons on private buses over loopback, as tests/test_peers.py runs them.
Catalogs are signed here with core.signedcatalog directly, as the organiser's tool does.
"""

from __future__ import annotations

import pytest

from lanspreadd.core.catalogasks import CatalogAsks, Offer
from lanspreadd.core.signedcatalog import MAX_DOCUMENT
from lanspreadd.protocol.codec import FrameDecoder, encode
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import (
    MAX_CATALOG,
    CatalogAnnounce,
    CatalogDocument,
)


# ---- whom to ask, and when: in memory ----------------------------------------------------
def test_the_newest_trusted_offer_is_asked_for_first() -> None:
    asks = CatalogAsks(min_gap=0.5)
    offers = [
        Offer("a", 3, "trusted"),
        Offer("b", 5, "stranger"),  # newest, but nobody we trust signed it
        Offer("c", 4, "trusted"),
        Offer("d", 1, "trusted"),  # older than ours
    ]
    assert asks.due(offers, 2, {"trusted"}, now=0.0) == Offer("c", 4, "trusted")
    asks.asked(now=0.0)
    assert asks.due(offers, 2, {"trusted"}, now=0.1) is None, "one ask per gap"
    assert asks.wake_at(offers, 2, {"trusted"}, now=0.1) == 0.5
    assert asks.due(offers, 4, {"trusted"}, now=1.0) is None, "nothing newer than ours"
    assert asks.wake_at(offers, 4, {"trusted"}, now=1.0) is None
    assert asks.due(offers, 0, set(), now=1.0) is None, "a machine that trusts no key asks none"


def test_a_failed_peer_is_not_asked_for_the_same_revision_again() -> None:
    asks = CatalogAsks(min_gap=0.0, backoff=1.0, max_backoff=8.0)
    liar, honest = Offer("liar", 7, "k"), Offer("honest", 7, "k")
    assert asks.due([liar], 2, {"k"}, 0.0) == liar
    asks.failed(liar, 0.0)
    assert asks.due([liar], 2, {"k"}, 100.0) is None
    assert asks.wake_at([liar], 2, {"k"}, 100.0) is None
    # Another peer with the same revision is asked at once.
    assert asks.due([liar, honest], 2, {"k"}, 0.0) == honest
    # A new revision from the liar waits out a backoff that doubles with each failure.
    waits = []
    now = 0.0
    for revision in range(8, 13):
        offer = Offer("liar", revision, "k")
        at = asks.wake_at([offer], 2, {"k"}, now)
        assert at is not None
        waits.append(at - now)
        assert asks.due([offer], 2, {"k"}, at - 0.01) is None
        assert asks.due([offer], 2, {"k"}, at) == offer
        now = at
        asks.failed(offer, now)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    asks.succeeded(Offer("liar", 13, "k"))
    assert asks.due([Offer("liar", 14, "k")], 2, {"k"}, now) is not None
    # A peer that left while asked may be asked for the same revision once it is back.
    gone = Offer("gone", 7, "k")
    asks.failed(gone, 0.0, final=False)
    assert asks.due([gone], 2, {"k"}, 0.5) is None
    assert asks.due([gone], 2, {"k"}, 1.0) == gone


def test_failures_are_remembered_for_a_bounded_number_of_peers() -> None:
    asks = CatalogAsks(min_gap=0.0, remembered=3)
    for i in range(10):
        asks.failed(Offer(f"p{i}", 5, "k"), 0.0)
    assert asks.due([Offer("p9", 5, "k")], 1, {"k"}, 10.0) is None
    assert asks.due([Offer("p0", 5, "k")], 1, {"k"}, 10.0) is not None  # forgotten


# ---- the protocol ---------------------------------------------------------------------
def test_a_whole_catalog_fits_one_frame_and_fingerprints_are_checked() -> None:
    assert MAX_CATALOG == MAX_DOCUMENT
    frame = encode(CatalogDocument(7, b"\xff" * MAX_CATALOG))
    (message,) = FrameDecoder().feed(frame)
    assert message == CatalogDocument(7, b"\xff" * MAX_CATALOG)
    assert FrameDecoder().feed(encode(CatalogAnnounce(3, "0123456789abcdef"))) == [
        CatalogAnnounce(3, "0123456789abcdef")
    ]
    with pytest.raises(RemoteProtocolError, match="fingerprint"):
        CatalogAnnounce.from_json({"revision": 3, "signer": "\x1b[2J"})
    with pytest.raises(RemoteProtocolError, match="too long"):
        CatalogDocument.from_json({"request_id": 1, "document": "QUFB" * (MAX_CATALOG // 2)})
