"""Postmark: email through its HTTP API (``POST /email``), with bounce, spam-complaint,
delivery and subscription-change webhooks.

Options (``ProviderConfig.options``):

- ``server_token`` (required, a secret): the server's API token (``X-Postmark-Server-Token``);
- ``from`` (required, a confirmed sender signature or domain) and ``from_name``; ``reply_to``;
- ``message_stream`` (default ``outbound``): the stream to send on;
- ``webhook_username`` and ``webhook_password``: HTTP basic auth credentials you put in the
  webhook URL (``https://user:pass@host/hooks/channel/postmark/<store>/status``), and/or
  ``webhook_token``: a secret sent as ``?token=`` in that URL. At least one, or every
  callback is refused;
- ``api_url`` (default ``https://api.postmarkapp.com``).

Each message carries our key in ``Metadata`` (``cartback_key``), which Postmark echoes in
its webhooks; Postmark's open and link tracking are switched off (cartback tracks its own).
Answers: 200 is ACCEPTED with Postmark's MessageID; ErrorCode 406 (inactive recipient: an
earlier hard bounce, complaint or unsubscribe) is an opt-out, never retried; an invalid
address (300) and other 422 refusals are permanent; a refusal of our account (bad token,
sender signature, suspended sending) is retryable, since the address is not at fault; 429 and
5xx are retryable; a timeout after the request went out is UNKNOWN. ``lookup`` searches sent
messages by our key, and answers SENT only for a message whose metadata carries it.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from datetime import datetime
from typing import Any

import httpx

from cartback.channels.mime import RESERVED, parse_address
from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.ports import (
    LookupResult,
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

NAME = "postmark"
KEY_FIELD = "cartback_key"
INACTIVE_RECIPIENT = 406
# Refusals that are about our account, not the recipient: bad token, sender signature missing
# or unconfirmed, sending not allowed, account pending approval.
ACCOUNT_CODES = frozenset({10, 400, 401, 405, 412})
# Bounce types that no retry can fix: the address does not work.
PERMANENT_BOUNCES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
# Bounce types that end the message without saying the address is dead.
TEMPORARY_BOUNCES = frozenset(
    {"SoftBounce", "DnsError", "Blocked", "Unknown", "DMARCPolicy", "SMTPApiError"}
)
# The recipient asked to stop: a complaint, or an unsubscribe request.
OPT_OUT_BOUNCES = frozenset({"SpamComplaint", "Unsubscribe"})


class PostmarkChannel:
    name = NAME

    def __init__(
        self, config: ProviderConfig, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        options = dict(config.options)
        self.kind = Channel.EMAIL
        token = options.get("server_token", "")
        if not token:
            raise ValueError("server_token: required")
        self.sender = parse_address(
            options.get("from", ""), name=options.get("from_name"), field="from"
        )
        reply_to = options.get("reply_to")
        self.reply_to = str(parse_address(reply_to, field="reply_to")) if reply_to else None
        self.stream = options.get("message_stream") or "outbound"
        self._basic = _basic_credentials(options)
        self._token = options.get("webhook_token") or None
        self._client = httpx.Client(
            base_url=(options.get("api_url") or "https://api.postmarkapp.com").rstrip("/"),
            timeout=httpx.Timeout(config.timeout),
            transport=transport,
            headers={"Accept": "application/json", "X-Postmark-Server-Token": token},
        )

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "From": str(self.sender),
            "To": message.to,
            "Subject": message.subject or "",
            "TextBody": message.body,
            "MessageStream": self.stream,
            "Metadata": {KEY_FIELD: message.key},
            "TrackOpens": False,
            "TrackLinks": "None",
            "Headers": [
                {"Name": name, "Value": value}
                for name, value in message.headers
                if name.lower() not in RESERVED
            ],
        }
        if message.html:
            body["HtmlBody"] = message.html
        if self.reply_to:
            body["ReplyTo"] = self.reply_to
        return body

    def send(self, message: OutboundMessage) -> SendResult:
        try:
            response = self._client.post("/email", json=self.payload(message))
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # Nothing reached Postmark: trying again cannot send it twice.
            return SendResult(SendStatus.REJECTED, error=_describe(error), retryable=True)
        except httpx.HTTPError as error:
            return SendResult(SendStatus.UNKNOWN, error=_describe(error))
        return _answer(response)

    def lookup(self, key: str) -> LookupResult:
        try:
            response = self._client.get(
                "/messages/outbound",
                params={"count": 50, "offset": 0, f"metadata_{KEY_FIELD}": key},
            )
            found = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return LookupResult(LookupStatus.UNKNOWN)
        messages = found.get("Messages") if isinstance(found, dict) else None
        for item in messages or []:
            metadata = item.get("Metadata") if isinstance(item, dict) else None
            if isinstance(metadata, dict) and metadata.get(KEY_FIELD) == key:
                return LookupResult(LookupStatus.SENT, provider_id=_text(item.get("MessageID")))
        # Not found proves nothing: the search index lags behind sending.
        return LookupResult(LookupStatus.UNKNOWN)

    def verify(self, request: WebhookRequest) -> bool:
        if self._basic is None and self._token is None:
            return False
        ok = True
        if self._basic is not None:
            given = request.headers.get("authorization", "").encode()
            ok = hmac.compare_digest(given, self._basic) and ok
        if self._token is not None:
            given = request.query.get("token", "").encode()
            ok = hmac.compare_digest(given, self._token.encode()) and ok
        return ok

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        record = _record(request.body)
        kind = record.get("RecordType")
        if kind == "Delivery":
            return [_update(record, DeliveryStatus.DELIVERED, at=record.get("DeliveredAt"))]
        if kind in ("Bounce", "SpamComplaint"):
            return _bounce(record)
        if kind == "SubscriptionChange":
            return _subscription(record)
        return []  # Open, Click and anything newer: cartback tracks its own

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        return []

    def close(self) -> None:
        self._client.close()


def _answer(response: httpx.Response) -> SendResult:
    status = response.status_code
    try:
        answer: Any = response.json()
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    code = answer.get("ErrorCode")
    code = code if isinstance(code, int) else None
    if status == 200 and not code:
        return SendResult(SendStatus.ACCEPTED, provider_id=_text(answer.get("MessageID")))
    error = f"HTTP {status} ErrorCode {code}" if code is not None else f"HTTP {status}"
    error_code = str(code) if code is not None else None
    if code == INACTIVE_RECIPIENT:
        return SendResult(SendStatus.REJECTED, error=error, error_code=error_code, opted_out=True)
    retryable = status in (401, 403, 429) or status >= 500 or code in ACCOUNT_CODES
    return SendResult(SendStatus.REJECTED, error=error, error_code=error_code, retryable=retryable)


def _record(body: bytes) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except ValueError:
        raise ValueError("body: not JSON") from None
    if not isinstance(record, dict):
        raise ValueError("body: expected a JSON object")
    if not isinstance(record.get("RecordType", ""), str):
        raise ValueError("RecordType: expected a string")
    return record


def _bounce(record: dict[str, Any]) -> list[DeliveryUpdate]:
    kind = record.get("Type")
    if not isinstance(kind, str):
        raise ValueError("Type: expected a bounce type")
    inactive = record.get("Inactive") is True
    at = record.get("BouncedAt")
    if kind in OPT_OUT_BOUNCES or record.get("RecordType") == "SpamComplaint":
        # A complaint comes after the message arrived; it ends marketing to the address.
        return [_update(record, DeliveryStatus.DELIVERED, at=at, code=kind, opted_out=True)]
    if kind in PERMANENT_BOUNCES or (inactive and kind in TEMPORARY_BOUNCES):
        return [_update(record, DeliveryStatus.FAILED, at=at, code=kind, permanent=True)]
    if kind in TEMPORARY_BOUNCES:
        return [_update(record, DeliveryStatus.FAILED, at=at, code=kind)]
    return []  # a delay notice, an auto-reply, a challenge: the message may still arrive


def _subscription(record: dict[str, Any]) -> list[DeliveryUpdate]:
    # Only a suppression counts: a reactivation in Postmark never re-subscribes anyone to
    # cartback's marketing; only the shopper's own act can.
    if record.get("SuppressSending") is not True or not record.get("MessageID"):
        return []
    reason = _text(record.get("SuppressionReason")) or "ManualSuppression"
    at = record.get("ChangedAt")
    if reason == "HardBounce":
        return [_update(record, DeliveryStatus.FAILED, at=at, code=reason, permanent=True)]
    return [_update(record, DeliveryStatus.DELIVERED, at=at, code=reason, opted_out=True)]


def _update(
    record: dict[str, Any],
    status: DeliveryStatus,
    *,
    at: object,
    code: str | None = None,
    permanent: bool = False,
    opted_out: bool = False,
) -> DeliveryUpdate:
    provider_id = _text(record.get("MessageID"))
    metadata = record.get("Metadata")
    key = _text(metadata.get(KEY_FIELD)) if isinstance(metadata, dict) else None
    if provider_id is None and key is None:
        raise ValueError("MessageID: required")
    return DeliveryUpdate(
        provider=NAME,
        status=status,
        provider_id=provider_id,
        message_key=key,
        at=_time(at),
        error_code=code,
        error=_text(record.get("Description")) if status is DeliveryStatus.FAILED else None,
        permanent=permanent,
        opted_out=opted_out,
        raw=_without_content(record),
    )


def _without_content(record: dict[str, Any]) -> dict[str, Any]:
    # The bounce's copy of the message and the recipient stay out of what is stored.
    return {
        name: value
        for name, value in record.items()
        if name not in ("Content", "Email", "Recipient", "Subject", "From")
    }


FRACTION = re.compile(r"(\.\d{6})\d+")


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        # Postmark sends 7 digits of fraction; Python takes at most 6.
        parsed = datetime.fromisoformat(FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(f"timestamp: not ISO 8601: {value[:40]!r}") from None
    return parsed if parsed.tzinfo is not None else None


def _text(value: object) -> str | None:
    return str(value)[:200] if value not in (None, "") else None


def _basic_credentials(options: dict[str, str]) -> bytes | None:
    username, password = options.get("webhook_username"), options.get("webhook_password")
    if not username and not password:
        return None
    if not username or not password:
        raise ValueError("webhook_password: set both webhook_username and webhook_password")
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {pair}".encode()


def _describe(error: httpx.HTTPError) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def build(config: ProviderConfig) -> PostmarkChannel:
    return PostmarkChannel(config)
