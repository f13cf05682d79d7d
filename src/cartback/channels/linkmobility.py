"""LINK Mobility SMS REST API (the "Common Platform" gateway): `POST {base_url}/sms/send`.

Options: ``username`` and ``password`` (HTTP Basic), ``platform_id`` and
``platform_partner_id`` (from LINK), ``gate_id`` (the delivery-report gate LINK set up to post
to this store's status URL), ``from`` (the sender when a message names none), ``base_url``
(default ``https://n-eu.linkmobility.io``), ``callback_token`` (checked on callbacks; put it in
the gate URLs as ``?cb_token=...``). Each message carries ``refId`` = our message key.
Delivery reports and MO messages are posted to gates that LINK configures, not per message.
"""

from __future__ import annotations

from typing import Any

import httpx

from cartback.channels.http import (
    HttpSmsChannel,
    ProviderHttp,
    http_refusal,
    int_field,
    json_body,
    json_object,
    lenient,
    optional_int,
    optional_text,
    optional_time,
    plus_e164,
    required_option,
    response_json,
    text_field,
)
from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.ports import (
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

DEFAULT_BASE_URL = "https://n-eu.linkmobility.io"

# resultCode, on the send answer and on delivery reports (LINK's published list).
# Still on its way: sent to the operator, queued, billed and sent, delayed for a retry.
IN_FLIGHT = frozenset({1000, 1005, 1008, 1011, 1012, 1013})
DELIVERED = frozenset({1001, 1007})
# Failures tied to the address itself, so no retry can help: unknown subscriber, destination
# permanently barred, number error, a destination type that cannot take SMS, and "service
# rejected by subscriber" (the subscriber refused this sender: an opt-out at the operator).
PERMANENT = frozenset({2100, 2101, 2102, 2104, 2105, 2106, 2205})
OPTED_OUT = frozenset({2205})
# Refusals at send time that may pass later: routing, throttling, timeouts, LINK-internal.
RETRYABLE = frozenset({0, 1, 3, 4, 5, 6, 105, 2107})
# Every other published failure (expired, deleted, mobile full, not delivered, charging,
# encoding and content errors, configuration). A code outside the published list is not
# guessed at: a report with one changes nothing, a send answer with one is unknown.
FAILED = frozenset(
    {0, 1, 2, 3, 4, 5, 6, 104, 105, 1002, 1003, 1004, 1006, 1009, 1010}
    | set(range(2000, 2004))
    | set(range(2100, 2108))
    | set(range(2200, 2208))
    | set(range(3000, 3003))
    | set(range(4000, 4008))
)


class LinkMobilityChannel(HttpSmsChannel):
    name = "linkmobility"

    def __init__(self, config: ProviderConfig, transport: httpx.BaseTransport | None = None):
        self.platform_id = required_option(config, "platform_id")
        self.platform_partner_id = required_option(config, "platform_partner_id")
        self.gate_id = required_option(config, "gate_id")
        self.url = config.options.get("base_url", DEFAULT_BASE_URL).rstrip("/") + "/sms/send"
        auth = (required_option(config, "username"), required_option(config, "password"))
        super().__init__(config, ProviderHttp(config, transport=transport, auth=auth))

    def send(self, message: OutboundMessage) -> SendResult:
        sender = self.sender_for(message)
        if isinstance(sender, SendResult):
            return sender
        payload = {
            "source": sender,
            "sourceTON": _type_of_number(sender),
            "destination": message.to,
            "userData": message.body,
            # TEXT lets LINK pick GSM-7 or UCS-2 from the text itself.
            "dcs": "TEXT",
            "platformId": self.platform_id,
            "platformPartnerId": self.platform_partner_id,
            "refId": message.key,
            "useDeliveryReport": True,
            "deliveryReportGates": [self.gate_id],
        }
        answer = self._http.call("POST", self.url, json=payload)
        if isinstance(answer, SendResult):
            return answer
        body = response_json(answer)
        code = _result_code(body)
        if not answer.is_success:
            return http_refusal(
                answer,
                error_code=None if code is None else str(code),
                error=_description(body),
                opted_out=code in OPTED_OUT,
            )
        if code is None or code in IN_FLIGHT or code in DELIVERED:
            return SendResult(
                SendStatus.ACCEPTED,
                provider_id=lenient(optional_text, body, "messageId"),
                segments=lenient(optional_int, body, "smsCount"),
            )
        if code not in FAILED:
            return SendResult(SendStatus.UNKNOWN, error=f"resultCode {code} is not published")
        return SendResult(
            SendStatus.REJECTED,
            error=_description(body) or f"resultCode {code}",
            retryable=code in RETRYABLE,
            error_code=str(code),
            opted_out=code in OPTED_OUT,
        )

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        report = json_object(json_body(request), "body")
        code = int_field(report, "resultCode")
        if code in DELIVERED:
            status = DeliveryStatus.DELIVERED
        elif code in IN_FLIGHT:
            status = DeliveryStatus.SENT
        elif code in FAILED:
            status = DeliveryStatus.FAILED
        else:
            return []
        failed = status is DeliveryStatus.FAILED
        return [
            DeliveryUpdate(
                provider=self.name,
                status=status,
                provider_id=text_field(report, "id"),
                message_key=optional_text(report, "refId"),
                at=optional_time(report, "timestamp"),
                error_code=str(code) if failed else None,
                error=optional_text(report, "operatorResultCode") if failed else None,
                permanent=code in PERMANENT,
                opted_out=code in OPTED_OUT,
                segments=optional_int(report, "segments"),
                raw=report,
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        message = json_object(json_body(request), "body")
        content = json_object(message.get("content", {}), "content")
        return [
            self.reply(
                message,
                sender=plus_e164(text_field(message, "source")),
                text=content.get("userData", message.get("userData")),
                text_field_name="content.userData",
                to=optional_text(message, "destination"),
                provider_id=optional_text(message, "messageId"),
                at=optional_time(message, "timestamp"),
            )
        ]


def _type_of_number(sender: str) -> str:
    digits = sender.lstrip("+")
    if not digits.isdigit():
        return "ALPHANUMERIC"
    return "MSISDN" if sender.startswith("+") or len(digits) > 8 else "SHORTCODE"


def _result_code(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    try:
        return optional_int(body, "resultCode")
    except ValueError:
        return None


def _description(body: Any) -> str | None:
    return optional_text(body, "description") if isinstance(body, dict) else None
