"""The webhook channel: each message as a JSON POST to a URL you run or relay (Zapier, Make, a
small service in front of your provider).

The receiver gets ``{key, channel, to, body, subject, html, headers}`` and the header
``Idempotency-Key: <key>`` (``cb-<outbox id>``, stable across retries). It answers 2xx when it
took the message, optionally with ``{"id": ...}`` for the provider id; 4xx refuses it for good;
429 and 5xx ask for a retry. ``GET <url>/<key>`` answering 200 or 404 tells cartback, after a
crash mid-send, whether the message was taken.
"""

from __future__ import annotations

from typing import Any

import httpx

from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, SendResult, SendStatus


class WebhookChannel:
    name = "webhook"

    def __init__(
        self,
        kind: Channel,
        url: str,
        *,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.kind = kind
        self.url = url.rstrip("/")
        # The explicit timeout bounds every phase of a call, so a hung receiver cannot hold a
        # message past the dispatcher's lease.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport)

    def send(self, message: OutboundMessage) -> SendResult:
        payload = {
            "key": message.key,
            "channel": str(message.channel),
            "to": message.to,
            "body": message.body,
            "subject": message.subject,
            "html": message.html,
            "headers": dict(message.headers),
        }
        try:
            response = self._client.post(
                self.url, json=payload, headers={"Idempotency-Key": message.key}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # Nothing reached the receiver: trying again cannot send it twice.
            return SendResult(SendStatus.REJECTED, error=_describe(error), retryable=True)
        except httpx.HTTPError as error:
            # The request may have gone out: whether it was taken is not known.
            return SendResult(SendStatus.UNKNOWN, error=_describe(error))
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(SendStatus.ACCEPTED, provider_id=_provider_id(response))
        retryable = status == 429 or status >= 500
        return SendResult(SendStatus.REJECTED, error=f"HTTP {status}", retryable=retryable)

    def lookup(self, key: str) -> LookupStatus:
        try:
            response = self._client.get(f"{self.url}/{key}")
        except httpx.HTTPError:
            return LookupStatus.UNKNOWN
        if response.status_code == 200:
            return LookupStatus.SENT
        if response.status_code == 404:
            return LookupStatus.NOT_SENT
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        self._client.close()


def _provider_id(response: httpx.Response) -> str | None:
    try:
        answer: Any = response.json()
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("id") is not None:
        return str(answer["id"])[:128]
    return None


def _describe(error: httpx.HTTPError) -> str:
    # The exception text names only the URL and the failure, never the message's content.
    return f"{type(error).__name__}: {error}"[:500]
