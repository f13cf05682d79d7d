"""Shopify Admin API: register cartback's webhook topics for a shop, read back the abandoned
checkouts and orders webhooks may have missed, and issue and remove per-cart codes.

REST with the shop's access token in `X-Shopify-Access-Token`. Registering is idempotent:
topics already delivered to the address are left as they are. The GDPR topics are not
registered here: Shopify takes them only from the app's configuration. Lists are paged by
cursor: each answer's `Link` header names the next page's `page_info`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from cartback.ports import IssuedCode
from cartback.shops.shopify import PRIVACY_TOPICS, TOPICS

API_VERSION = "2026-01"
TIMEOUT_SECONDS = 15.0
SUBSCRIBED_TOPICS = tuple(sorted(TOPICS - PRIVACY_TOPICS - {"orders/cancelled"}))
# The most a list request returns; Shopify's own ceiling.
PAGE_LIMIT = 250
# A listing that goes on longer stops with an error rather than loop on a server that keeps
# naming a next page (250 000 items: far beyond any reconciliation window).
MAX_PAGES = 1000


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


def abandoned_checkouts(
    http: httpx.Client, since: datetime, api_version: str = API_VERSION
) -> Iterator[Mapping[str, Any]]:
    """Every abandoned checkout updated at or after `since`, page by page."""
    path = f"/admin/api/{api_version}/checkouts.json"
    return _listing(http, path, "checkouts", {"updated_at_min": _iso(since)})


def orders(
    http: httpx.Client, since: datetime, api_version: str = API_VERSION
) -> Iterator[Mapping[str, Any]]:
    """Every order (open, closed or cancelled) updated at or after `since`, page by page."""
    path = f"/admin/api/{api_version}/orders.json"
    return _listing(http, path, "orders", {"status": "any", "updated_at_min": _iso(since)})


def _listing(
    http: httpx.Client, path: str, key: str, filters: Mapping[str, str]
) -> Iterator[Mapping[str, Any]]:
    params: dict[str, str | int] = {"limit": PAGE_LIMIT, **filters}
    seen: set[str] = set()
    for page in range(1, MAX_PAGES + 1):
        where = f"{path} (page {page})"
        response = _call(http, "GET", path, params=params, where=where)
        items = _json(response, where).get(key)
        if not isinstance(items, list):
            raise AdminError(f"GET {where}: the answer has no {key} array")
        yield from (item for item in items if isinstance(item, Mapping))
        cursor = next_page(response)
        if cursor is None:
            return
        if cursor in seen:
            raise AdminError(f"GET {where}: the next page repeats an earlier one")
        seen.add(cursor)
        # A page_info request may carry nothing but the cursor and the limit.
        params = {"limit": PAGE_LIMIT, "page_info": cursor}
    raise AdminError(f"GET {path}: more than {MAX_PAGES} pages; use a shorter --since")


def next_page(response: httpx.Response) -> str | None:
    """The `page_info` of the `Link: <...>; rel="next"` header, if there is a next page."""
    url = response.links.get("next", {}).get("url")
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("page_info")
    return values[0] if values else None


def _call(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    accept: tuple[int, ...] = (),
    where: str | None = None,
    **options: object,
) -> httpx.Response:
    where = where or path
    try:
        response = http.request(method, path, **options)  # type: ignore[arg-type]
    except httpx.HTTPError as error:
        raise AdminError(f"{method} {where}: {type(error).__name__}: {error}") from None
    if response.is_success or response.status_code in accept:
        return response
    raise AdminError(f"{method} {where}: {response.status_code} {_reason(response)}")


def _json(response: httpx.Response, where: str | None = None) -> dict[str, object]:
    try:
        data = response.json()
    except ValueError:
        name = where or response.request.url.path
        raise AdminError(f"{name}: the answer is not JSON") from None
    return data if isinstance(data, dict) else {}


def _reason(response: httpx.Response) -> str:
    return response.text[:200].replace("\n", " ")


@dataclass
class ShopifyDiscountIssuer:
    """`ports.DiscountIssuer` for Shopify: one price rule per cart, limited to one use, with
    one discount code under it; removing the price rule removes the code. Called only outside
    any database transaction."""

    http: httpx.Client
    api_version: str = API_VERSION
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def issue(
        self,
        *,
        cart_token: str,
        percent: Decimal | None,
        amount: Decimal | None,
        currency: str,
        expires_at: datetime | None,
        email: str | None = None,
    ) -> IssuedCode:
        if (percent is None) == (amount is None):
            raise AdminError("a unique code needs exactly one of percent or amount")
        del email  # limiting a price rule to one shopper needs their Shopify customer id
        code = unique_code_text(cart_token)
        value = -(percent if percent is not None else amount or Decimal(0))
        rule: dict[str, object] = {
            "title": code,
            "target_type": "line_item",
            "target_selection": "all",
            "allocation_method": "across",
            "value_type": "percentage" if percent is not None else "fixed_amount",
            "value": f"{value}",
            "customer_selection": "all",
            "usage_limit": 1,
            "once_per_customer": True,
            "starts_at": _iso(self.clock()),
            "ends_at": _iso(expires_at) if expires_at is not None else None,
        }
        if amount is not None:
            # A fixed amount is in the shop's currency; it is named so a mismatch is visible.
            rule["title"] = f"{code} ({currency})"
        base = f"/admin/api/{self.api_version}"
        made = _json(
            _call(self.http, "POST", f"{base}/price_rules.json", json={"price_rule": rule})
        )
        created = made.get("price_rule")
        rule_id = created.get("id") if isinstance(created, dict) else None
        if rule_id is None:
            raise AdminError(f"POST {base}/price_rules.json: the answer has no price_rule.id")
        path = f"{base}/price_rules/{rule_id}/discount_codes.json"
        answer = _json(_call(self.http, "POST", path, json={"discount_code": {"code": code}}))
        made_code = answer.get("discount_code")
        if not isinstance(made_code, dict) or not made_code.get("code"):
            raise AdminError(f"POST {path}: the answer has no discount_code.code")
        # The price rule is what is removed: its codes go with it.
        return IssuedCode(str(made_code["code"]), str(rule_id))

    def remove(self, ref: str) -> bool:
        if not ref.isdigit():
            raise AdminError(f"{ref[:40]!r} is not a price rule id")
        path = f"/admin/api/{self.api_version}/price_rules/{ref}.json"
        return _call(self.http, "DELETE", path, accept=(404,)).status_code != 404

    def close(self) -> None:
        self.http.close()


def unique_code_text(cart_token: str) -> str:
    """A code no one can guess from the cart: random, short enough to type, upper case."""
    del cart_token  # the code must not reveal the cart token
    return "CB-" + secrets.token_hex(5).upper()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")
