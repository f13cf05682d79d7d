"""Sinch SMS REST API (XMS): `POST https://{region}.sms.api.sinch.com/xms/v1/{plan}/batches`
with a Bearer token.

Options: ``service_plan_id`` and ``api_token`` (required), ``region`` (``us`` by default;
``eu``, ``au``, ``br``, ``ca``), ``from`` (the sender when a message names none),
``webhook_secret`` (Sinch signs callbacks with it once its support switches signing on),
``callback_token`` (a shared secret added to the ``callback_url`` we hand out), ``base_url``
(tests). Each message is a batch of one with ``client_reference`` = our message key,
``delivery_report: per_recipient`` and ``callback_url`` = this store's status URL. Replies
(``mo_text``) go to the callback URL set on the service plan: point it at the inbound URL.
"""

from __future__ import annotations

import base64
import hmac

import httpx

from cartback.channels.http import (
    HttpSmsChannel,
    ProviderHttp,
    http_refusal,
    json_body,
    json_object,
    lenient,
    optional_text,
    optional_time,
    plus_e164,
    required_option,
    response_json,
    secrets_equal,
    text_field,
    with_token,
)
from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.sms import count_segments
from cartback.ports import (
    LookupResult,
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

SIGNATURE_HEADER = "x-sinch-webhook-signature"
_ALGORITHMS = {"hmacsha256": "sha256", "hmacsha512": "sha512"}

# Recipient report `status`: Queued and Dispatched are on the way; the rest are final.
_STATUSES = {
    "queued": DeliveryStatus.SENT,
    "dispatched": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "aborted": DeliveryStatus.FAILED,
    "cancelled": DeliveryStatus.FAILED,
    "rejected": DeliveryStatus.FAILED,
    "deleted": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
    "expired": DeliveryStatus.FAILED,
}
# Sinch deletes a message whose destination is an invalid number or an opted-out
# subscriber; it does not say which, so it counts as a permanent failure (not an opt-out).
_PERMANENT = frozenset({"deleted"})


def signature(body: bytes, nonce: str, timestamp: str, secret: str, algorithm: str) -> str:
    """Sinch's callback signature: base64 of an HMAC, keyed with the secret, over the raw body,
    ``.``, the nonce, ``.``, the timestamp."""
    signed = body + f".{nonce}.{timestamp}".encode()
    digest = hmac.new(secret.encode("utf-8"), signed, algorithm).digest()
    return base64.b64encode(digest).decode("ascii")


class SinchChannel(HttpSmsChannel):
    name = "sinch"

    def __init__(self, config: ProviderConfig, transport: httpx.BaseTransport | None = None):
        plan = required_option(config, "service_plan_id")
        region = config.options.get("region", "us")
        base = config.options.get("base_url", f"https://{region}.sms.api.sinch.com")
        self.url = f"{base.rstrip('/')}/xms/v1/{plan}"
        self.secret = config.options.get("webhook_secret") or None
        bearer = {"Authorization": f"Bearer {required_option(config, 'api_token')}"}
        super().__init__(config, ProviderHttp(config, transport=transport, headers=bearer))

    def send(self, message: OutboundMessage) -> SendResult:
        sender = self.sender_for(message)
        if isinstance(sender, SendResult):
            return sender
        batch = {
            "from": sender,
            "to": [message.to],
            "body": message.body,
            "delivery_report": "per_recipient",
            "callback_url": with_token(self.config.status_url, self.token),
            "client_reference": message.key,
        }
        answer = self._http.call("POST", f"{self.url}/batches", json=batch)
        if isinstance(answer, SendResult):
            return answer
        body = response_json(answer)
        if not answer.is_success:
            detail = body if isinstance(body, dict) else {}
            return http_refusal(
                answer,
                error_code=optional_text(detail, "code"),
                error=optional_text(detail, "text"),
            )
        # Sinch's answer does not count parts; the split it makes follows the same GSM-7 and
        # UCS-2 rules as core/sms.py, so the count is ours.
        return SendResult(
            SendStatus.ACCEPTED,
            provider_id=lenient(optional_text, body, "id"),
            segments=count_segments(message.body).segments,
        )

    def lookup(self, key: str) -> LookupStatus | LookupResult:
        """SENT when a finished delivery report names our key; otherwise UNKNOWN (a report
        may not exist yet, so its absence proves nothing)."""
        try:
            answer = self._http.fetch(
                f"{self.url}/delivery_reports", params={"client_reference": key}
            )
        except (httpx.HTTPError, ValueError):
            return LookupStatus.UNKNOWN
        reports = answer.get("delivery_reports") if isinstance(answer, dict) else None
        for report in reports if isinstance(reports, list) else []:
            if isinstance(report, dict) and report.get("client_reference") == key:
                return LookupResult(LookupStatus.SENT, optional_text(report, "batch_id"))
        return LookupStatus.UNKNOWN

    def verify(self, request: WebhookRequest) -> bool:
        if not super().verify(request):
            return False
        if self.secret is None:
            return True
        headers = request.headers
        given = headers.get(SIGNATURE_HEADER, "")
        nonce = headers.get(f"{SIGNATURE_HEADER}-nonce", "")
        timestamp = headers.get(f"{SIGNATURE_HEADER}-timestamp", "")
        algorithm = _ALGORITHMS.get(headers.get(f"{SIGNATURE_HEADER}-algorithm", "").lower())
        if not (given and nonce and timestamp and algorithm):
            return False
        expected = signature(request.body, nonce, timestamp, self.secret, algorithm)
        return secrets_equal(given, expected)

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        report = json_object(json_body(request), "body")
        if text_field(report, "type") != "recipient_delivery_report_sms":
            return []  # batch summaries and MMS reports are not tracked per message
        status_text = text_field(report, "status")
        status = _STATUSES.get(status_text.lower())
        if status is None:
            return []  # "Unknown" tells nothing new
        failed = status is DeliveryStatus.FAILED
        return [
            DeliveryUpdate(
                provider=self.name,
                status=status,
                provider_id=text_field(report, "batch_id"),
                message_key=optional_text(report, "client_reference"),
                at=optional_time(report, "at"),
                error_code=optional_text(report, "code") if failed else None,
                error=status_text if failed else None,
                permanent=status_text.lower() in _PERMANENT,
                raw=report,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        message = json_object(json_body(request), "body")
        if text_field(message, "type") != "mo_text":
            return []  # binary and MMS replies carry no text to act on
        return [
            self.reply(
                message,
                sender=plus_e164(text_field(message, "from")),
                text=message.get("body"),
                text_field_name="body",
                to=optional_text(message, "to"),
                provider_id=optional_text(message, "id"),
                at=optional_time(message, "received_at"),
            )
        ]
