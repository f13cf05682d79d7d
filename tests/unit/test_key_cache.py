"""The event API's key cache: a known key is remembered for its TTL, then asked again."""

from __future__ import annotations

from cartback.core.model import Store
from cartback.web.keys import KeyCache


def test_a_key_is_remembered_until_its_ttl_passes() -> None:
    now = [100.0]
    cache = KeyCache(ttl=5, clock=lambda: now[0])
    store = Store(id=7, name="S", brand="S")
    assert cache.get("k") is None
    cache.put("k", store)
    now[0] = 104.9
    assert cache.get("k") is store
    now[0] = 105.0
    assert cache.get("k") is None  # a revoked key stops working within the TTL
