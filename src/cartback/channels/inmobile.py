"""inMobile API v4: `POST https://api.inmobile.com/v4/sms/outgoing`, HTTP Basic with the API
key as the password.

Options: ``api_key`` (required), ``from`` (the sender when a message names none),
``validity_seconds`` (how long the operator keeps trying), ``callback_token`` (a shared secret
added to the ``statusCallbackUrl`` we hand out), ``base_url`` (tests). Each message carries
``messageId`` = our message key, so reports name it directly, and ``statusCallbackUrl`` = this
store's status URL.

Besides the callbacks, inMobile keeps reports and incoming messages for collection:
`pull_reports()` and `pull_inbound()` read `GET /v4/sms/outgoing/reports` and
`GET /v4/sms/incoming/messages`. inMobile hands out each item once, so the caller must store
what it gets before anything else can fail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from cartback.channels.http import (
    HttpSmsChannel,
    ProviderHttp,
    digits_only,
    http_refusal,
    int_field,
    int_option,
    json_body,
    json_list,
    json_object,
    lenient,
    optional_int,
    optional_text,
    optional_time,
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

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.inmobile.com"
PULL_LIMIT = 250  # the most inMobile hands out per call

# deliveryInfo.stateCode: 1 delivered, -1 failed, -2 cancelled before it left; 0 = no final
# word yet.
_STATES = {
    1: DeliveryStatus.DELIVERED,
    0: DeliveryStatus.SENT,
    -1: DeliveryStatus.FAILED,
    -2: DeliveryStatus.FAILED,
}

Item = TypeVar("Item")


class InMobileChannel(HttpSmsChannel):
    name = "inmobile"

    def __init__(self, config: ProviderConfig, transport: httpx.BaseTransport | None = None):
        self.validity = int_option(config, "validity_seconds")
        self.base_url = config.options.get("base_url", DEFAULT_BASE_URL).rstrip("/") + "/v4"
        auth = ("", required_option(config, "api_key"))
        super().__init__(config, ProviderHttp(config, transport=transport, auth=auth))

    def send(self, message: OutboundMessage) -> SendResult:
        sender = self.sender_for(message)
        if isinstance(sender, SendResult):
            return sender
        item: dict[str, Any] = {
            "to": digits_only(message.to),
            "from": sender,
            "text": message.body,
            "messageId": message.key,
            "statusCallbackUrl": with_token(self.config.status_url, self.token),
            "encoding": "ucs2" if detect_encoding(message.body) == "UCS-2" else "gsm7",
            "respectBlacklist": True,
        }
        if self.validity is not None:
            item["validityPeriodInSeconds"] = self.validity
        answer = self._http.call("POST", f"{self.base_url}/sms/outgoing", json={"messages": [item]})
        if isinstance(answer, SendResult):
            return answer
        body = response_json(answer)
        if not answer.is_success:
            error = optional_text(body, "errorMessage") if isinstance(body, dict) else None
            return http_refusal(answer, error=error)
        results = body.get("results") if isinstance(body, dict) else None
        first = results[0] if isinstance(results, list) and results else None
        return SendResult(
            SendStatus.ACCEPTED,
            provider_id=lenient(optional_text, first, "messageId") or message.key,
            segments=lenient(optional_int, first, "smsCount"),
        )

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        return _each(json_body(request), "reports", self._report, strict=True)

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        return _each(json_body(request), "messages", self._incoming, strict=True)

    def pull_reports(self, limit: int = PULL_LIMIT) -> list[DeliveryUpdate]:
        """Collect the reports inMobile holds (each one is handed out only once).

        Raises `httpx.HTTPError` when inMobile cannot be reached or refuses, and `ValueError`
        for an answer that is not a report list. One unreadable report is logged and skipped,
        never allowed to lose the others. The worker polls this hook on a timer."""
        answer = self._http.fetch(f"{self.base_url}/sms/outgoing/reports", params={"limit": limit})
        return _each(answer, "reports", self._report, strict=False)

    def pull_inbound(self, limit: int = PULL_LIMIT) -> list[InboundReply]:
        """Collect the incoming messages inMobile holds (each one handed out only once)."""
        answer = self._http.fetch(f"{self.base_url}/sms/incoming/messages", params={"limit": limit})
        return _each(answer, "messages", self._incoming, strict=False)

    def _report(self, report: dict[str, Any], prefix: str) -> DeliveryUpdate | None:
        info = json_object(report.get("deliveryInfo"), f"{prefix}deliveryInfo")
        state = int_field(info, "stateCode", prefix=f"{prefix}deliveryInfo.")
        status = _STATES.get(state)
        if status is None:
            return None  # a state inMobile has not published: not guessed at
        charge = report.get("chargeInfo")
        failed = status is DeliveryStatus.FAILED
        key = text_field(report, "messageId", prefix=prefix)
        return DeliveryUpdate(
            provider=self.name,
            status=status,
            provider_id=key,
            message_key=key,
            at=optional_time(info, "doneTime") or optional_time(info, "sendTime"),
            error_code=optional_text(info, "errorCode") if failed else None,
            error=optional_text(info, "errorDescription") if failed else None,
            segments=optional_int(charge, "smsCount") if isinstance(charge, dict) else None,
            raw=report,
        )

    def _incoming(self, message: dict[str, Any], prefix: str) -> InboundReply:
        origin = json_object(message.get("from"), f"{prefix}from")
        if origin.get("isValidMsisdn") is True:
            country = text_field(origin, "countryCode", prefix=f"{prefix}from.")
            sender = f"+{country}{text_field(origin, 'phoneNumber', prefix=f'{prefix}from.')}"
        else:
            sender = text_field(origin, "rawSource", prefix=f"{prefix}from.")
        target = message.get("to")
        return self.reply(
            message,
            sender=sender,
            text=message.get("text"),
            text_field_name=f"{prefix}text",
            to=optional_text(target, "msisdn") if isinstance(target, dict) else None,
            provider_id=None,  # inMobile gives incoming messages no id
            at=optional_time(message, "receivedAt"),
        )


def _each(
    document: Any,
    envelope: str,
    read: Callable[[dict[str, Any], str], Item | None],
    *,
    strict: bool,
) -> list[Item]:
    """Read every item of `{envelope: [...]}` (a bare item is a list of one). `strict` raises
    for the first unreadable item (a callback, which inMobile can send again); otherwise it is
    logged and skipped (a pull, whose items inMobile hands out only once)."""
    if isinstance(document, dict) and envelope not in document:
        document = {envelope: [document]}
    items = json_list(json_object(document, "body").get(envelope), envelope)
    read_items: list[Item] = []
    for index, item in enumerate(items):
        where = f"{envelope}[{index}]"
        try:
            value = read(json_object(item, where), f"{where}.")
        except ValueError as error:
            if strict:
                raise
            # The error names the item and field only, never a number or a text.
            log.warning("inmobile: skipped an unreadable pulled item: %s", error)
            continue
        if value is not None:
            read_items.append(value)
    return read_items
