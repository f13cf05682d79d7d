"""Shopify Admin API: register cartback's webhook topics for a shop.

REST `webhooks.json` with the shop's access token in `X-Shopify-Access-Token`. Registering is
idempotent: topics already delivered to the address are left as they are. The GDPR topics are
not registered here: Shopify takes them only from the app's configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from cartback.shops.shopify import PRIVACY_TOPICS, TOPICS

API_VERSION = "2026-01"
TIMEOUT_SECONDS = 15.0
SUBSCRIBED_TOPICS = tuple(sorted(TOPICS - PRIVACY_TOPICS - {"orders/cancelled"}))


class AdminError(RuntimeError):
    """The Admin API refused or failed; the message says which request and why."""


@dataclass(frozen=True, slots=True)
class Subscriptions:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def client(base_url: str, token: bytes) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        headers={"X-Shopify-Access-Token": token.decode(), "Accept": "application/json"},
        timeout=TIMEOUT_SECONDS,
    )


def subscribe(
    http: httpx.Client,
    address: str,
    topics: Iterable[str] = SUBSCRIBED_TOPICS,
    api_version: str = API_VERSION,
) -> Subscriptions:
    path = f"/admin/api/{api_version}/webhooks.json"
    listed = _json(_call(http, "GET", path, params={"limit": 250, "address": address}))
    hooks = listed.get("webhooks")
    have = {
        str(hook.get("topic"))
        for hook in (hooks if isinstance(hooks, list) else [])
        if isinstance(hook, dict) and hook.get("address") == address
    }
    done = Subscriptions()
    for topic in topics:
        if topic in have:
            done.existing.append(topic)
            continue
        body = {"webhook": {"topic": topic, "address": address, "format": "json"}}
        response = _call(http, "POST", path, json=body, accept=(422,))
        if response.status_code == 422:
            # Created meanwhile (by another run, or listed past the first page).
            if "already been taken" not in response.text:
                raise AdminError(f"POST {path} ({topic}): 422 {_reason(response)}")
            done.existing.append(topic)
        else:
            done.created.append(topic)
    return done


def _call(
    http: httpx.Client, method: str, path: str, *, accept: tuple[int, ...] = (), **options: object
) -> httpx.Response:
    try:
        response = http.request(method, path, **options)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        raise AdminError(f"{method} {path}: {type(error).__name__}: {error}") from None
    if response.is_success or response.status_code in accept:
        return response
    raise AdminError(f"{method} {path}: {response.status_code} {_reason(response)}")


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        data = response.json()
    except ValueError:
        raise AdminError(f"{response.request.url.path}: the answer is not JSON") from None
    return data if isinstance(data, dict) else {}


def _reason(response: httpx.Response) -> str:
    return response.text[:200].replace("\n", " ")
