"""Vonage (Nexmo) SMS API: `POST https://rest.nexmo.com/sms/json`.

Options: ``api_key`` (required); ``api_secret``, or ``signature_secret`` to sign requests
and check the ``sig`` on callbacks (with ``signature_method``: ``md5hash`` (Vonage's default),
``md5``, ``sha1``, ``sha256`` or ``sha512`` for the HMAC variants); ``from`` (the sender when
a message names none); ``callback_token`` (a shared secret carried in the callback URL);
``base_url`` (tests). Each message carries ``client-ref`` = our message key and
``callback`` = this store's status URL. Receipts arrive as GET or POST (form or JSON); replies
at the inbound URL set on the Vonage number.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx

from cartback.channels.http import (
    TOKEN_PARAM,
    HttpSmsChannel,
    ProviderHttp,
    digits_only,
    http_refusal,
    json_body,
    json_object,
    lenient,
    optional_decimal,
    optional_text,
    optional_time,
    plus_e164,
    required_option,
    response_json,
    text_field,
    with_token,
)
from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.sms import detect_encoding
from cartback.ports import (
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

DEFAULT_BASE_URL = "https://rest.nexmo.com"
SIGNATURE_METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")

# The answer's `messages[].status`: 0 took it; these may pass on a retry (throttled, internal
# error, account out of credit); 7 is a number on the account's barred list, where Vonage puts
# recipients who opted out.
_RETRYABLE_SEND = frozenset({"1", "5", "9"})
_OPTED_OUT_SEND = frozenset({"7"})

# Receipt `status` → our state. `unknown` says nothing new, so it changes nothing.
_RECEIPT_STATUS = {
    "delivered": DeliveryStatus.DELIVERED,
    "accepted": DeliveryStatus.SENT,
    "buffered": DeliveryStatus.SENT,
    "expired": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
    "rejected": DeliveryStatus.FAILED,
}
# Receipt `err-code`: 9 = the recipient opted out (Vonage opt-out assist); 3 = absent
# subscriber, permanent; 4 = barred by the user. No retry reaches these addresses.
_OPTED_OUT_RECEIPT = "9"
_PERMANENT_RECEIPT = frozenset({"3", "4", _OPTED_OUT_RECEIPT})


def signature(params: Mapping[str, str], secret: str, method: str) -> str:
    """Vonage's request signature: `&key=value` for each parameter sorted by name (``&`` and
    ``=`` in values replaced by ``_``, ``sig`` left out), then MD5 over that text followed by
    the secret, or an HMAC of it keyed with the secret. Lower-case hex."""
    text = "".join(
        f"&{key}={value.replace('&', '_').replace('=', '_')}"
        for key, value in sorted(params.items())
        if key != "sig"
    )
    if method == "md5hash":
        return hashlib.md5((text + secret).encode("utf-8")).hexdigest()
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), method).hexdigest()


class VonageChannel(HttpSmsChannel):
    name = "vonage"

    def __init__(self, config: ProviderConfig, transport: httpx.BaseTransport | None = None):
        self.api_key = required_option(config, "api_key")
        self.signature_secret = config.options.get("signature_secret") or None
        self.signature_method = config.options.get("signature_method", "md5hash")
        if self.signature_method not in SIGNATURE_METHODS:
            raise ValueError(
                f"vonage: option 'signature_method' must be one of {SIGNATURE_METHODS}"
            )
        self.api_secret = None if self.signature_secret else required_option(config, "api_secret")
        self.url = config.options.get("base_url", DEFAULT_BASE_URL).rstrip("/") + "/sms/json"
        super().__init__(config, ProviderHttp(config, transport=transport))

    def send(self, message: OutboundMessage) -> SendResult:
        sender = self.sender_for(message)
        if isinstance(sender, SendResult):
            return sender
        params = {
            "api_key": self.api_key,
            "from": digits_only(sender),
            "to": digits_only(message.to),
            "text": message.body,
            "type": "unicode" if detect_encoding(message.body) == "UCS-2" else "text",
            "client-ref": message.key,
            "callback": with_token(self.config.status_url, self.token),
            "status-report-req": "1",
        }
        if self.signature_secret is not None:
            params["timestamp"] = str(int(time.time()))
            params["sig"] = signature(params, self.signature_secret, self.signature_method)
        else:
            params["api_secret"] = self.api_secret or ""
        answer = self._http.call("POST", self.url, data=params)
        if isinstance(answer, SendResult):
            return answer
        if not answer.is_success:
            return http_refusal(answer)
        return _read_answer(response_json(answer))

    def verify(self, request: WebhookRequest) -> bool:
        if not super().verify(request):
            return False
        if self.signature_secret is None:
            return True
        try:
            params = _callback_params(request)
        except ValueError:
            return False  # nothing to check a signature over
        given = params.get("sig", "").lower()
        expected = signature(params, self.signature_secret, self.signature_method)
        return bool(given) and hmac.compare_digest(given.encode(), expected.encode())

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        params = _callback_params(request)
        provider_id = text_field(params, "messageId")
        state = _RECEIPT_STATUS.get(text_field(params, "status").lower())
        if state is None:
            return []
        error_code = optional_text(params, "err-code")
        failed = state is DeliveryStatus.FAILED
        return [
            DeliveryUpdate(
                provider=self.name,
                status=state,
                provider_id=provider_id,
                message_key=optional_text(params, "client-ref"),
                at=optional_time(params, "message-timestamp", "%Y-%m-%d %H:%M:%S"),
                error_code=error_code if failed else None,
                permanent=failed and error_code in _PERMANENT_RECEIPT,
                opted_out=failed and error_code == _OPTED_OUT_RECEIPT,
                cost=optional_decimal(params, "price"),
                raw=params,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        params = _callback_params(request)
        sender = text_field(params, "msisdn")
        if params.get("type") == "binary":
            return []  # no text to act on
        # Each part of a concatenated reply arrives on its own and is taken whole: joining
        # them would need state shared by every web worker, and an opt-out word fits in one.
        return [
            self.reply(
                params,
                sender=plus_e164(sender),
                text=params.get("text"),
                text_field_name="text",
                to=optional_text(params, "to"),
                provider_id=optional_text(params, "messageId"),
                at=optional_time(params, "message-timestamp", "%Y-%m-%d %H:%M:%S"),
            )
        ]


def _read_answer(answer: Any) -> SendResult:
    """Vonage answers 200 with one entry per part sent; any part taken means it went out."""
    if not isinstance(answer, dict) or not isinstance(answer.get("messages"), list):
        return SendResult(SendStatus.UNKNOWN, error="vonage: unreadable answer")
    parts = [part for part in answer["messages"] if isinstance(part, dict)]
    taken = [part for part in parts if str(part.get("status")) == "0"]
    if taken:
        read = (lenient(optional_decimal, part, "message-price") for part in taken)
        prices = [price for price in read if price is not None]
        return SendResult(
            SendStatus.ACCEPTED,
            provider_id=optional_text(taken[0], "message-id"),
            segments=len(taken),
            cost=sum(prices, Decimal(0)) if prices else None,
        )
    first = parts[0] if parts else {}
    code = str(first.get("status", ""))
    opted_out = code in _OPTED_OUT_SEND
    return SendResult(
        SendStatus.REJECTED,
        error=str(first.get("error-text") or f"status {code}")[:500],
        retryable=code in _RETRYABLE_SEND,
        error_code=code or None,
        opted_out=opted_out,
    )


def _callback_params(request: WebhookRequest) -> dict[str, str]:
    """A receipt or reply's parameters, whether sent as a GET query, a form or JSON."""
    if request.method.upper() == "GET":
        params = dict(request.query)
    elif "json" in request.headers.get("content-type", ""):
        params = {
            key: str(value)
            for key, value in json_object(json_body(request), "body").items()
            if value is not None
        }
    else:
        params = request.form()
    params.pop(TOKEN_PARAM, None)  # ours, not Vonage's: not part of what Vonage signs
    return params
