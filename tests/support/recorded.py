"""Recorded provider exchanges (tests/fixtures/providers/<provider>/*.json) served through
httpx's mock transport, and recorded callbacks turned into `WebhookRequest`s."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from cartback.core.model import Channel
from cartback.ports import ProviderConfig, WebhookRequest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"


def load(provider: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / provider / f"{name}.json").read_text("utf-8"))
    return data


class Replay:
    """A mock transport answering every request with one recorded response, keeping what it
    was sent so a test can compare it with the recorded request."""

    def __init__(self, provider: str, name: str) -> None:
        self.exchange = load(provider, name)
        self.seen: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.exchange["response"]
        return httpx.Response(answer["status"], json=answer.get("json"))

    @property
    def request(self) -> httpx.Request:
        (only,) = self.seen
        return only


def failing(error: Callable[[httpx.Request], Exception]) -> httpx.MockTransport:
    """A transport whose every call fails the way `error` says (a timeout, a refused connect)."""

    def answer(request: httpx.Request) -> httpx.Response:
        raise error(request)

    return httpx.MockTransport(answer)


def sent_fields(request: httpx.Request) -> Any:
    """The body the adapter sent, as JSON or as a form (a dict of strings)."""
    if "json" in request.headers.get("content-type", ""):
        return json.loads(request.content)
    return dict(parse_qsl(request.content.decode("utf-8"), keep_blank_values=True))


def callback(
    provider: str,
    name: str,
    *,
    url: str = "https://shop.example/hooks/channel/x/demo/status",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> WebhookRequest:
    """A recorded callback as the route hands it to the adapter; `extra` adds body fields."""
    recorded = load(provider, name)
    all_headers = {k.lower(): v for k, v in recorded.get("headers", {}).items()}
    all_query = {**recorded.get("query", {}), **(query or {})}
    body = b""
    if "json" in recorded:
        body = json.dumps({**recorded["json"], **(extra or {})}).encode()
        all_headers["content-type"] = "application/json"
    elif "form" in recorded:
        body = urlencode({**recorded["form"], **(extra or {})}).encode()
        all_headers["content-type"] = "application/x-www-form-urlencoded"
    elif extra:
        all_query.update(extra)
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    return WebhookRequest(
        method=recorded["method"], url=url, headers=all_headers, body=body, query=all_query
    )


# A working configuration per provider, as a store would have it; tests override options.
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    "vonage": {"api_key": "vk-test", "api_secret": "vs-test", "from": "CartBack"},
    "linkmobility": {
        "username": "link-user",
        "password": "link-pass",
        "platform_id": "COMMON_API",
        "platform_partner_id": "1234",
        "gate_id": "gate-dlr-1",
        "from": "CartBack",
        "base_url": "https://link.test",
    },
    "inmobile": {"api_key": "im-key", "from": "CartBack", "validity_seconds": "86400"},
    "sinch": {
        "service_plan_id": "plan-7",
        "api_token": "sinch-token",
        "region": "eu",
        "from": "CartBack",
    },
}


def provider_config(provider: str, **options: str | None) -> ProviderConfig:
    """The default configuration for `provider`; an option set to None is left out."""
    merged = {**DEFAULT_OPTIONS[provider], **options}
    base = f"https://shop.example/hooks/channel/{provider}/demo"
    return ProviderConfig(
        provider=provider,
        kind=Channel.SMS,
        store="demo",
        options={k: v for k, v in merged.items() if v is not None},
        status_url=f"{base}/status",
        inbound_url=f"{base}/inbound",
        timeout=2.0,
    )
