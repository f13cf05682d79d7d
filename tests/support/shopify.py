"""Shopify webhook deliveries for tests: the hand-written fixtures, signed as Shopify signs
them (base64 HMAC-SHA256 of the raw body with the app's secret)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from cartback.shops.base import sign_base64

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/shops/shopify"
SECRET = "shpss_test_current_secret"
PREVIOUS_SECRET = "shpss_test_previous_secret"
SECRET_ENV = "TEST_SHOPIFY_SECRET"
PREVIOUS_ENV = "TEST_SHOPIFY_PREVIOUS_SECRET"
SHOP_DOMAIN = "test-shop.myshopify.com"
SUPPRESSION_KEY = "test-suppression-key-0123456789"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def headers_for(
    topic: str,
    body: bytes,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    event_id: str | None = None,
    shop: str = SHOP_DOMAIN,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign_base64(secret.encode(), body),
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-API-Version": "2026-01",
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": "2026-11-23T12:00:00+00:00",
    }
