"""Deliveries from the other shop platforms for tests: hand-written fixtures, signed or
authenticated as each platform does it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cartback.shops.base import sign_base64

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/shops"
SECRET = "test-current-shop-secret"
PREVIOUS_SECRET = "test-previous-shop-secret"
SECRET_ENV = "TEST_SHOP_SECRET"
PREVIOUS_ENV = "TEST_SHOP_PREVIOUS_SECRET"
SITE = "shop.example"


def fixture(platform: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / platform / f"{name}.json").read_text())
    return data


def json_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def form_body(fields: dict[str, Any]) -> bytes:
    return urlencode(fields).encode()


def woo_headers(
    topic: str,
    body: bytes,
    *,
    secret: str = SECRET,
    delivery_id: str | None = None,
    source: str = f"https://{SITE}/",
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.4.1 Hookshot (WordPress/6.7)",
        "X-WC-Webhook-Source": source,
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": topic.split(".")[0],
        "X-WC-Webhook-Event": topic.split(".")[-1],
        "X-WC-Webhook-Signature": sign_base64(secret.encode(), body),
        "X-WC-Webhook-ID": "7",
        "X-WC-Webhook-Delivery-ID": delivery_id or uuid.uuid4().hex,
    }


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


BC_STORE_HASH = "t3sth4sh"
BC_TOKEN = "bc-made-up-api-token"
BC_TOKEN_ENV = "TEST_BC_API_TOKEN"
BC_CART = "0d4f5a7e-9b2c-4e1d-8f3a-6c5b4a392817"


def bc_headers(*, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Cartback-Token": secret}


def bc_api(
    checkout: dict[str, Any] | None = None, *, status: int = 200
) -> Callable[[str, str, Any], tuple[int, Any]]:
    """The BigCommerce API as recorded: the checkout, its redirect URLs and the order."""

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if status != 200:
            return status, {"status": status, "title": "made-up failure"}
        if method == "GET" and path.endswith(f"/v3/checkouts/{BC_CART}"):
            return 200, checkout or fixture("bigcommerce", "api_checkout")
        if method == "POST" and path.endswith(f"/v3/carts/{BC_CART}/redirect_urls"):
            return 201, fixture("bigcommerce", "api_redirect_urls")
        if method == "GET" and path.endswith("/v2/orders/250"):
            return 200, fixture("bigcommerce", "api_order")
        return 404, {"status": 404, "title": "not found"}

    return answer


def generic_headers(
    body: bytes, *, secret: str = SECRET, encoding: str = "hex", delivery_id: str | None = None
) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    headers = {"Content-Type": "application/json", "X-Cartback-Signature": f"sha256={value}"}
    if delivery_id:
        headers["X-Cartback-Delivery-Id"] = delivery_id
    return headers
