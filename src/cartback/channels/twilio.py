"""Twilio Programmable Messaging (SMS): the Messages API, status callbacks and inbound replies.

Options (`cartback channels set STORE sms twilio ...`):
- `account_sid` (required): the account, `AC...`; also the Basic-auth user.
- `auth_token` (required, give it as a secret: `--secret auth_token=env:TWILIO_AUTH_TOKEN`):
  the Basic-auth password and the key Twilio signs its callbacks with.
- `from` or `messaging_service_sid` (one is required): the sender number or service.
- `validity_seconds` (optional, default 14400): how long Twilio may queue a message that has
  no deadline of its own; a message with `send_before` gets the time left until it (1..36000).
- `api_base` (optional, default https://api.twilio.com): for a local fake in tests.

Each message is created with `StatusCallback = <status_url>?key=cb-<outbox id>`, so a report
finds its row by our key even before the sid is recorded. Twilio signs each callback with
`X-Twilio-Signature`: base64(HMAC-SHA1(auth_token, URL + each POST field, sorted by name, as
name + value)), over the URL it called, which is our public URL (CARTBACK_BASE_URL), query
included. Error 21610 (the recipient replied STOP to Twilio) is an opt-out: never retried.

Twilio has no idempotency key and no lookup by our key: after a crash mid-send, `lookup`
answers UNKNOWN and the message is marked `unknown`, never sent twice. A status callback that
arrives later still reconciles it (the key is in its URL).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

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

API_BASE = "https://api.twilio.com"
DEFAULT_VALIDITY_SECONDS = 4 * 3600
MAX_VALIDITY_SECONDS = 36000
SIGNATURE_HEADER = "x-twilio-signature"
# The empty TwiML answer to an inbound message: no auto-reply from Twilio's side.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

OPTED_OUT = "21610"
# Codes after which no retry and no later message can reach the address: the number does not
# exist, is a landline, or blocks us. The address is suppressed for marketing.
PERMANENT_CODES = {
    "21211": "invalid 'To' number",
    "21614": "not a mobile number",
    "30004": "message blocked by the recipient or carrier",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    OPTED_OUT: "the recipient opted out with Twilio",
}
# Codes worth knowing by name, which a later message may still get past.
TEMPORARY_CODES = {
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset",
    "30007": "filtered by the carrier",
    "30008": "unknown error",
    "30009": "missing segment",
    "30010": "message price exceeds max price",
    "30032": "toll-free number not verified",
    "30034": "message from an unregistered number",
}
# Twilio's message statuses, as delivery reports. Statuses before the carrier (queued,
# sending, accepted, scheduled) and inbound ones (receiving, received) report nothing.
_STATUSES = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "partially_delivered": DeliveryStatus.DELIVERED,
    "failed": DeliveryStatus.FAILED,
    "undelivered": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's request signature: the URL, then each POST field sorted by name."""
    payload = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def describe(code: str | None) -> str | None:
    if code is None:
        return None
    known = PERMANENT_CODES.get(code) or TEMPORARY_CODES.get(code)
    return f"Twilio {code}" + (f": {known}" if known else "")


class TwilioChannel:
    name = "twilio"

    def __init__(
        self,
        config: ProviderConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        options = config.options
        for required in ("account_sid", "auth_token"):
            if not options.get(required):
                raise ValueError(f"option {required} is required")
        if not options.get("from") and not options.get("messaging_service_sid"):
            raise ValueError("option from or messaging_service_sid is required")
        self.kind = Channel.SMS
        self.config = config
        self.account_sid = options["account_sid"]
        self._token = options["auth_token"]
        self.sender = options.get("from")
        self.service_sid = options.get("messaging_service_sid")
        try:
            self.validity = int(options.get("validity_seconds", DEFAULT_VALIDITY_SECONDS))
        except ValueError:
            raise ValueError("option validity_seconds must be a whole number") from None
        base = options.get("api_base", API_BASE).rstrip("/")
        self.messages_url = f"{base}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        self._clock = clock or (lambda: datetime.now(UTC))
        self._client = httpx.Client(
            timeout=httpx.Timeout(config.timeout),
            transport=transport,
            auth=(self.account_sid, self._token),
        )

    # -- sending ---------------------------------------------------------------------------

    def request_form(self, message: OutboundMessage) -> dict[str, str]:
        """The CreateMessage form for one message."""
        form = {"To": message.to, "Body": message.body}
        if message.sender or self.sender:
            form["From"] = message.sender or self.sender or ""
        else:
            form["MessagingServiceSid"] = self.service_sid or ""
        form["StatusCallback"] = f"{self.config.status_url}?{urlencode({'key': message.key})}"
        form["ValidityPeriod"] = str(self._validity(message))
        return form

    def _validity(self, message: OutboundMessage) -> int:
        seconds = self.validity
        if message.send_before is not None:
            seconds = int((message.send_before - self._clock()).total_seconds())
        return max(1, min(MAX_VALIDITY_SECONDS, seconds))

    def send(self, message: OutboundMessage) -> SendResult:
        try:
            response = self._client.post(self.messages_url, data=self.request_form(message))
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            return SendResult(SendStatus.REJECTED, error=_describe_error(error), retryable=True)
        except httpx.HTTPError as error:
            # The request may have reached Twilio; without an idempotency key it is not resent.
            return SendResult(SendStatus.UNKNOWN, error=_describe_error(error))
        answer = _json(response)
        status = response.status_code
        if 200 <= status < 300:
            sid = answer.get("sid")
            if not isinstance(sid, str) or not sid:
                return SendResult(SendStatus.UNKNOWN, error="Twilio answered without a sid")
            return SendResult(
                SendStatus.ACCEPTED,
                provider_id=sid[:128],
                segments=_int(answer.get("num_segments")),
                cost=_cost(answer.get("price")),
            )
        code = str(answer["code"]) if answer.get("code") is not None else None
        if code == OPTED_OUT:
            return SendResult(
                SendStatus.REJECTED,
                error=describe(code),
                error_code=code,
                retryable=False,
                opted_out=True,
            )
        retryable = status == 429 or status >= 500
        # Twilio's own message text can quote the number: only the code and our wording.
        return SendResult(
            SendStatus.REJECTED,
            error=describe(code) or f"HTTP {status}",
            error_code=code,
            retryable=retryable,
        )

    def lookup(self, key: str) -> LookupResult:
        # Twilio keeps no client reference: a message cannot be found by our key.
        return LookupResult(LookupStatus.UNKNOWN)

    def close(self) -> None:
        self._client.close()

    # -- callbacks -------------------------------------------------------------------------

    def verify(self, request: WebhookRequest) -> bool:
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not given:
            return False
        params: list[tuple[str, str]] = []
        if request.method.upper() == "POST":
            params = parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        expected = signature(self._token, request.url, params)
        return hmac.compare_digest(expected.encode(), given.encode())

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        form = _payload(request)
        sid = form.get("MessageSid") or form.get("SmsSid")
        if not sid:
            raise ValueError("MessageSid: required")
        state = form.get("MessageStatus") or form.get("SmsStatus")
        if not state:
            raise ValueError("MessageStatus: required")
        status = _STATUSES.get(state.lower())
        if status is None:
            return []
        code = form.get("ErrorCode") or None
        if code == "0":
            code = None
        failed = status is DeliveryStatus.FAILED
        return [
            DeliveryUpdate(
                provider=self.name,
                status=status,
                provider_id=sid[:128],
                message_key=request.query.get("key") or None,
                error_code=code,
                error=describe(code) if failed else None,
                permanent=failed and code in PERMANENT_CODES,
                opted_out=failed and code == OPTED_OUT,
                segments=_int(form.get("NumSegments")),
                raw=_raw(form),
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        form = _payload(request)
        for required in ("MessageSid", "From"):
            if not (form.get(required) or (required == "MessageSid" and form.get("SmsSid"))):
                raise ValueError(f"{required}: required")
        return [
            InboundReply(
                provider=self.name,
                channel=Channel.SMS,
                sender=form["From"],
                text=form.get("Body", ""),
                to=form.get("To") or None,
                provider_id=(form.get("MessageSid") or form["SmsSid"])[:128],
                raw=_raw(form),
            )
        ]

    @staticmethod
    def inbound_answer() -> tuple[str, str]:
        """What Twilio expects back from an inbound webhook: empty TwiML."""
        return EMPTY_TWIML, "text/xml"


def _payload(request: WebhookRequest) -> dict[str, str]:
    return request.form() if request.method.upper() == "POST" else dict(request.query)


def _raw(form: Mapping[str, str]) -> dict[str, Any]:
    # Only the fields that carry no personal data are kept with the report.
    keep = ("MessageSid", "MessageStatus", "SmsStatus", "ErrorCode", "AccountSid", "NumSegments")
    return {name: form[name] for name in keep if name in form}


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None and str(value) != "" else None
    except ValueError:
        return None


def _cost(value: object) -> Decimal | None:
    # Twilio reports a price as a negative amount (a debit), often null until it is known.
    if value is None or value == "":
        return None
    try:
        return abs(Decimal(str(value)))
    except InvalidOperation:
        return None


def _describe_error(error: httpx.HTTPError) -> str:
    return f"{type(error).__name__}: {error}"[:500]
