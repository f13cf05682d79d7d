"""Kannel: SMS through a Kannel gateway's `/cgi-bin/sendsms`, delivery reports through the
`dlr-url`, replies through an `sms-service` `post-url` (or `get-url`).

Options (`ProviderConfig.options`):

- ``sendsms_url`` (required): e.g. ``http://127.0.0.1:13013/cgi-bin/sendsms``.
- ``username``, ``password`` (required, the password is a secret): a ``sendsms-user``. Its
  ``max-messages`` must allow the longest message (a 200-character GSM-7 text is 2 parts)
  and ``concatenation = true`` makes Kannel add the UDH that joins the parts on the phone.
- ``callback_token`` (required, a secret of letters, digits, ``-``, ``_``, ``.``, ``~``):
  Kannel signs nothing, so every callback URL carries it as ``token`` and `verify` compares it
  in constant time.
- ``from``: the sender (``global-sender`` is used when absent); ``message.sender`` wins.
- ``smsc``: the ``smsc-id`` to route through.
- ``dlr_mask``: which reports Kannel calls back for (default 31: all five types).
- ``validity``: minutes the SMSC keeps trying.

The ``dlr-url`` carries our outbox key (``key=cb-<id>``) and Kannel's escapes: ``%d`` the
report type, ``%T`` the time, ``%A`` the SMSC's reply text, ``%F`` the SMSC's id, ``%i`` the
smsc-id. Replies reach cartback through the URL `mo_url` returns, which the operator puts in
the ``sms-service`` group (``post-url``, with ``send-sender = true``; or ``get-url``).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx

from cartback.core.events import DeliveryStatus, DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.core.sms import count_segments
from cartback.ports import (
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

# Kannel DLR types (the `%d` escape and the dlr-mask bits).
DLR_DELIVERED = 1
DLR_UNDELIVERED = 2
DLR_BUFFERED = 4
DLR_SMSC_ACK = 8
DLR_SMSC_NACK = 16

_STATUS_OF_TYPE: dict[int, DeliveryStatus] = {
    DLR_DELIVERED: DeliveryStatus.DELIVERED,
    DLR_UNDELIVERED: DeliveryStatus.FAILED,
    DLR_BUFFERED: DeliveryStatus.SENT,
    DLR_SMSC_ACK: DeliveryStatus.SENT,
    DLR_SMSC_NACK: DeliveryStatus.FAILED,
}

# Kannel expands `%x` escapes in callback URLs, so literal values must hold no `%`.
_URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")
_RECEIPT_ERR = re.compile(r"\berr:(\w+)")
_KANNEL_TIME = "%Y-%m-%d %H:%M:%S"


class KannelChannel:
    name = "kannel"

    def __init__(
        self, config: ProviderConfig, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        options = config.options
        missing = [
            key
            for key in ("sendsms_url", "username", "password", "callback_token")
            if not options.get(key)
        ]
        if missing:
            raise ValueError(f"kannel: missing option(s): {', '.join(missing)}")
        if not _URL_SAFE.match(options["callback_token"]):
            raise ValueError("kannel: callback_token may hold only letters, digits and -_.~")
        self.kind = config.kind
        self.config = config
        self._url = options["sendsms_url"]
        self._username = options["username"]
        self._password = options["password"]
        self._token = options["callback_token"]
        self._sender = options.get("from") or None
        self._smsc = options.get("smsc") or None
        dlr_mask = options.get("dlr_mask") or "31"
        if not dlr_mask.isdigit() or not 0 < int(dlr_mask) < 32:
            raise ValueError(f"kannel: option dlr_mask must be 1-31, not {dlr_mask!r}")
        self._dlr_mask = int(dlr_mask)
        self._validity = options.get("validity") or None
        self._client = httpx.Client(timeout=httpx.Timeout(config.timeout), transport=transport)

    # -- sending ---------------------------------------------------------------------------

    def dlr_url(self, key: str) -> str:
        """The report URL for one message: our key and token, then Kannel's escapes."""
        if not _URL_SAFE.match(key):
            raise ValueError("kannel: a message key may hold only letters, digits and -_.~")
        fixed = f"key={key}&token={self._token}"
        escapes = "status=%d&at=%T&reply=%A&fid=%F&smsc=%i"
        return f"{self.config.status_url}{_joiner(self.config.status_url)}{fixed}&{escapes}"

    def mo_url(self) -> str:
        """The URL to set as the `sms-service` `post-url` (or `get-url`) in kannel.conf."""
        fixed = f"token={self._token}"
        escapes = "from=%p&to=%P&at=%T&id=%I"
        return f"{self.config.inbound_url}{_joiner(self.config.inbound_url)}{fixed}&{escapes}"

    def send(self, message: OutboundMessage) -> SendResult:
        info = count_segments(message.body)
        params: dict[str, str | bytes] = {
            "username": self._username,
            "password": self._password,
            "to": message.to,
            "dlr-mask": str(self._dlr_mask),
            "dlr-url": self.dlr_url(message.key),
        }
        if info.encoding == "UCS-2":
            # Kannel sends UCS-2 as given: hand it the UTF-16BE bytes, so nothing is recoded.
            params.update(coding="2", charset="UTF-16BE", text=message.body.encode("utf-16-be"))
        else:
            params.update(coding="0", charset="UTF-8", text=message.body.encode("utf-8"))
        sender = message.sender or self._sender
        if sender:
            params["from"] = sender
        if self._smsc:
            params["smsc"] = self._smsc
        if self._validity:
            params["validity"] = self._validity
        url = f"{self._url}{_joiner(self._url)}{urlencode(params)}"
        try:
            response = self._client.get(url)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # Nothing reached Kannel: trying again cannot send it twice.
            return SendResult(SendStatus.REJECTED, error=_describe(error), retryable=True)
        except httpx.HTTPError as error:
            return SendResult(SendStatus.UNKNOWN, error=_describe(error))
        answer = response.text.strip()[:200]
        if response.status_code in (200, 202) and answer[:2] in ("0:", "3:"):
            # "0: Accepted for delivery" / "3: Queued for later delivery"
            return SendResult(SendStatus.ACCEPTED, segments=info.segments)
        retryable = response.status_code == 429 or response.status_code >= 500
        return SendResult(
            SendStatus.REJECTED,
            error=f"HTTP {response.status_code}: {answer}",
            error_code=str(response.status_code),
            retryable=retryable,
        )

    def lookup(self, key: str) -> LookupStatus:
        # Kannel keeps no record a client can query by our key.
        return LookupStatus.UNKNOWN

    def close(self) -> None:
        self._client.close()

    # -- callbacks -------------------------------------------------------------------------

    def verify(self, request: WebhookRequest) -> bool:
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode("utf-8"), self._token.encode("utf-8"))

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        query = request.query
        raw_type = query.get("status")
        if raw_type is None or raw_type == "":
            raise ValueError("status: missing (the %d escape of the dlr-url)")
        try:
            dlr_type = int(raw_type)
        except ValueError:
            raise ValueError("status: not a Kannel DLR type") from None
        status = _STATUS_OF_TYPE.get(dlr_type)
        if status is None:
            return []
        key = query.get("key")
        if not key:
            raise ValueError("key: missing (the outbox key of the dlr-url)")
        reply = query.get("reply", "")
        failed = status is DeliveryStatus.FAILED
        carrier_err = _RECEIPT_ERR.search(reply)
        return [
            DeliveryUpdate(
                provider=self.name,
                status=status,
                provider_id=query.get("fid") or None,
                message_key=key,
                at=_unix_time(query.get("at")),
                error_code=(carrier_err.group(1) if carrier_err else str(dlr_type))
                if failed
                else None,
                error=_describe_failure(dlr_type) if failed else None,
                raw={k: v for k, v in query.items() if k != "token"},
            )
        ]

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        query = request.query
        headers = request.headers
        sender = query.get("from") or headers.get("x-kannel-from")
        if not sender:
            raise ValueError("from: missing (the %p escape, or send-sender = true)")
        if "text" in query:  # get-url with text=%a
            text = query["text"]
        else:
            text = request.body.decode(_charset(headers), "replace")
        at = _unix_time(query.get("at")) or _kannel_time(headers.get("x-kannel-time"))
        return [
            InboundReply(
                provider=self.name,
                channel=Channel.SMS,
                sender=_international(sender),
                text=text,
                to=query.get("to") or headers.get("x-kannel-to") or None,
                provider_id=query.get("id") or None,
                at=at,
                raw={k: v for k, v in query.items() if k not in ("token", "text")},
            )
        ]


def _joiner(url: str) -> str:
    if "?" not in url:
        return "?"
    return "" if url.endswith(("?", "&")) else "&"


def _unix_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _kannel_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, _KANNEL_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def _charset(headers: Mapping[str, str]) -> str:
    """The body's charset from Content-Type; Kannel posts UCS-2 replies as UTF-16BE."""
    content_type = headers.get("content-type") or ""
    found = re.search(r'charset="?([A-Za-z0-9_.:-]+)"?', content_type)
    if found:
        name = found.group(1)
        try:
            "".encode(name)
        except LookupError:
            return "utf-8"
        return name
    if headers.get("x-kannel-coding") == "2":
        return "utf-16-be"
    return "utf-8"


def _international(sender: str) -> str:
    sender = sender.strip()
    if sender.startswith("00") and sender[2:].isdigit():
        return "+" + sender[2:]
    return sender


def _describe_failure(dlr_type: int) -> str:
    if dlr_type == DLR_SMSC_NACK:
        return "the SMSC refused the message"
    return "not delivered to the phone"


def _describe(error: httpx.HTTPError) -> str:
    # The exception names the URL, which carries the password: keep the class and cause only.
    return type(error).__name__
