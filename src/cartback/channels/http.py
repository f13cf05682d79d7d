"""What every HTTP provider adapter shares: one client bound to the provider timeout, the
mapping from transport failures and HTTP statuses to a `SendResult`, constant-time secret
checks, and readers for callback payloads that raise `ValueError` naming the bad field.

The rules (docs/providers.md): a connect error never reached the provider, so it is REJECTED
and retryable; any other failure after the request may have gone out is UNKNOWN (the
dispatcher reconciles it from a receipt, never by sending blindly again); 429 and 5xx are
retryable refusals, any other 4xx a permanent one.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from cartback.core.events import InboundReply
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

# Query parameter that carries the optional `callback_token` on callback URLs we hand out.
TOKEN_PARAM = "cb_token"

Value = TypeVar("Value")


class ProviderHttp:
    """An httpx client with the provider timeout on every phase of a call, so no call
    outlives the dispatcher's lease on the message."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(config.timeout),
            transport=transport,
            auth=auth,
            headers=dict(headers or {}),
        )

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response | SendResult:
        """The provider's answer, or the `SendResult` a transport failure stands for."""
        try:
            return self._client.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # Nothing reached the provider: trying again cannot send it twice.
            return SendResult(SendStatus.REJECTED, error=describe(error), retryable=True)
        except httpx.HTTPError as error:
            # The request may have gone out: whether it was taken is not known.
            return SendResult(SendStatus.UNKNOWN, error=describe(error))

    def fetch(self, url: str, **kwargs: Any) -> Any:
        """GET a JSON document for a pull endpoint; raises `httpx.HTTPError` on failure."""
        response = self._client.get(url, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else {}

    def close(self) -> None:
        self._client.close()


class HttpSmsChannel:
    """What the SaaS SMS adapters share: the ``from`` and ``callback_token`` options, the
    client, a token check as the default `verify`, and no lookup unless the provider has one.
    Subclasses set `name` and build their `ProviderHttp` (with their own auth)."""

    name: str

    def __init__(self, config: ProviderConfig, http: ProviderHttp) -> None:
        self.kind = Channel.SMS
        self.config = config
        self.sender = config.options.get("from") or None
        self.token = config.options.get("callback_token") or None
        self._http = http

    def sender_for(self, message: OutboundMessage) -> str | SendResult:
        """The message's own sender or the configured one; a refusal when there is neither."""
        sender = message.sender or self.sender
        if sender is None:
            return SendResult(SendStatus.REJECTED, error=f"{self.name}: no sender ('from') set")
        return sender

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        # No query by our key: the receipt, which echoes the key, settles an unknown send.
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        self._http.close()

    def verify(self, request: WebhookRequest) -> bool:
        return token_matches(request, self.token)

    def reply(
        self,
        raw: Mapping[str, Any],
        *,
        sender: str,
        text: Any,
        text_field_name: str,
        to: str | None,
        provider_id: str | None,
        at: datetime | None,
    ) -> InboundReply:
        """An SMS reply; `ValueError` naming `text_field_name` when the text is not text."""
        if not isinstance(text, str):
            raise ValueError(f"{text_field_name}: missing or not text")
        return InboundReply(
            provider=self.name,
            channel=Channel.SMS,
            sender=sender,
            text=text,
            to=to,
            provider_id=provider_id,
            at=at,
            raw=raw,
        )


def describe(error: httpx.HTTPError) -> str:
    # The exception text names only the URL and the failure, never the message's content.
    return f"{type(error).__name__}: {error}"[:500]


def http_refusal(
    response: httpx.Response,
    *,
    error_code: str | None = None,
    error: str | None = None,
    opted_out: bool = False,
) -> SendResult:
    """A non-2xx answer: 429 and 5xx may pass on a retry, other 4xx never will."""
    status = response.status_code
    retryable = not opted_out and (status == 429 or status >= 500)
    return SendResult(
        SendStatus.REJECTED,
        error=(error or f"HTTP {status}")[:500],
        retryable=retryable,
        error_code=error_code,
        opted_out=opted_out,
    )


def response_json(response: httpx.Response) -> Any:
    """The answer's JSON body, or None when it has none or it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def lenient(read: Callable[[Mapping[str, Any], str], Value], data: Any, field: str) -> Value | None:
    """A detail of a provider's answer to a send (a count, a price), or None when it cannot be
    read: whether the message went out must not hinge on it."""
    if not isinstance(data, Mapping):
        return None
    try:
        return read(data, field)
    except ValueError:
        return None


def int_option(config: ProviderConfig, name: str) -> int | None:
    raw = config.options.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{config.provider}: option {name!r} must be a whole number") from None


def required_option(config: ProviderConfig, name: str) -> str:
    value = config.options.get(name, "").strip()
    if not value:
        raise ValueError(f"{config.provider}: option {name!r} is required")
    return value


def with_token(url: str, token: str | None) -> str:
    """`url` with the callback token in its query, so `token_matches` can check it."""
    if not token:
        return url
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({TOKEN_PARAM: token})))


def token_matches(request: WebhookRequest, token: str | None) -> bool:
    """True when no token is configured, or the callback carries it (constant time)."""
    if not token:
        return True
    return secrets_equal(request.query.get(TOKEN_PARAM, ""), token)


def secrets_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def json_body(request: WebhookRequest) -> Any:
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("body: not a JSON document") from None


def json_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{field}: expected an object")
    return value


def json_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{field}: expected a list")
    return value


def text_field(data: Mapping[str, Any], field: str, *, prefix: str = "") -> str:
    """A required scalar field as text; `ValueError` naming it when missing or not scalar."""
    value = data.get(field)
    if value is None or value == "" or isinstance(value, dict | list | bool):
        raise ValueError(f"{prefix}{field}: missing or not a value")
    return str(value)


def optional_text(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    return str(value)


def int_field(data: Mapping[str, Any], field: str, *, prefix: str = "") -> int:
    raw = text_field(data, field, prefix=prefix)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{prefix}{field}: not an integer") from None


def optional_int(data: Mapping[str, Any], field: str) -> int | None:
    raw = optional_text(data, field)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{field}: not an integer") from None


def optional_decimal(data: Mapping[str, Any], field: str) -> Decimal | None:
    raw = optional_text(data, field)
    if raw is None:
        return None
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{field}: not a number") from None


def optional_time(data: Mapping[str, Any], field: str, fmt: str | None = None) -> datetime | None:
    """An ISO 8601 time (or one in `fmt`), read as UTC when it names no zone."""
    raw = optional_text(data, field)
    if raw is None:
        return None
    try:
        if fmt is not None:
            parsed = datetime.strptime(raw, fmt)
        else:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: not a time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def digits_only(address: str) -> str:
    """E.164 without the plus, as Vonage and inMobile take numbers."""
    return address[1:] if address.startswith("+") else address


def plus_e164(address: str) -> str:
    """A provider's international number, with or without its plus, as E.164
    (alphanumeric senders stay as they are)."""
    digits = digits_only(address)
    return f"+{digits}" if digits.isdigit() else address
