"""The SMTP channel: each email to an SMTP server (your relay, a mail provider's submission port)
with aiosmtplib, one connection per message.

Options (``ProviderConfig.options``):

- ``host`` (required), ``port`` (default 465 with ``tls``, 587 with ``starttls``, else 25);
- ``starttls`` (``true``/``false``, default ``true``): upgrade the connection with STARTTLS,
  and refuse to send if the server does not offer it; ``tls`` (default ``false``): implicit
  TLS from the first byte (port 465). At most one of the two;
- ``username`` and ``password`` (a secret): AUTH PLAIN or LOGIN, only over TLS;
- ``from`` (required) and ``from_name``: the sender; ``reply_to``;
- ``ca_file``: a PEM bundle to trust instead of the system's (a private relay's CA);
- ``helo``: the name given in EHLO (default the sender's domain);
- ``message_id_domain``: the domain of Message-IDs (default the sender's domain).

Outcomes: 250 after DATA is ACCEPTED (the server's queue id, if it names one, as the provider
id). A 4xx reply is REJECTED retryable; a 5xx reply to RCPT or to the message is REJECTED for
good with the enhanced status code (``5.1.1``, unknown user) as ``error_code``, which
suppresses the address. A refusal of our own session (EHLO, STARTTLS, AUTH, MAIL FROM) is
retryable whatever its code: it says nothing about the recipient, and an operator can fix it.
A timeout or a dropped connection before DATA is REJECTED retryable (nothing went out);
after DATA started it is UNKNOWN, and the same Message-ID is used if it is ever sent again.
SMTP has no way to look a message up, and sends no callbacks: ``lookup`` answers UNKNOWN,
``verify`` refuses every callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading
from dataclasses import dataclass, replace

import aiosmtplib

from cartback.channels.mime import build_message, message_id, parse_address
from cartback.core.events import DeliveryUpdate, InboundReply
from cartback.core.model import Channel
from cartback.ports import (
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendResult,
    SendStatus,
    WebhookRequest,
)

ENHANCED_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
QUEUE_ID = re.compile(r"\b(?:queued as|id[=:])\s*<?([A-Za-z0-9._@-]{4,100})", re.IGNORECASE)
NO_SMTPUTF8 = "the server does not take SMTPUTF8, which this address needs"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def flag(options: dict[str, str], name: str, default: bool) -> bool:
    raw = options.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in TRUE:
        return True
    if raw.strip().lower() in FALSE:
        return False
    raise ValueError(f"{name}: expected true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    starttls: bool
    tls: bool
    username: str | None
    password: str | None
    ca_file: str | None
    helo: str


def _settings(options: dict[str, str], sender_domain: str) -> SmtpSettings:
    host = options.get("host", "").strip()
    if not host:
        raise ValueError("host: required")
    tls = flag(options, "tls", False)
    starttls = flag(options, "starttls", not tls)
    if tls and starttls:
        raise ValueError("starttls: cannot be combined with tls (implicit TLS)")
    raw_port = options.get("port") or ("465" if tls else "587" if starttls else "25")
    if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
        raise ValueError(f"port: expected 1 to 65535, got {raw_port!r}")
    username = options.get("username") or None
    if username and not (tls or starttls):
        raise ValueError(
            "username: SMTP AUTH needs starttls or tls; the password would go out in clear"
        )
    return SmtpSettings(
        host=host,
        port=int(raw_port),
        starttls=starttls,
        tls=tls,
        username=username,
        password=options.get("password") or None,
        ca_file=options.get("ca_file") or None,
        helo=options.get("helo") or sender_domain,
    )


def check_options(options: dict[str, str]) -> None:
    """Raise ValueError naming the option ("from: ...") if these options cannot work."""
    sender = parse_address(options.get("from", ""), name=options.get("from_name"), field="from")
    if options.get("reply_to"):
        parse_address(options["reply_to"], field="reply_to")
    _settings(options, sender.domain)


class SmtpChannel:
    name = "smtp"

    def __init__(self, config: ProviderConfig) -> None:
        options = dict(config.options)
        self.kind = Channel.EMAIL
        self.timeout = config.timeout
        self.sender = parse_address(
            options.get("from", ""), name=options.get("from_name"), field="from"
        )
        reply_to = options.get("reply_to")
        self.reply_to = parse_address(reply_to, field="reply_to") if reply_to else None
        self.settings = _settings(options, self.sender.domain)
        self.id_domain = options.get("message_id_domain") or self.sender.domain
        self.id_salt = f"{config.store}:{self.sender.addr_spec}"
        self._tls = self._tls_context()
        # The dispatcher calls `send` from its thread pool: each thread runs the client on an
        # event loop of its own, kept for the next message and closed with the channel.
        self._local = threading.local()
        self._runners: list[asyncio.Runner] = []
        self._lock = threading.Lock()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not (self.settings.tls or self.settings.starttls):
            return None
        return ssl.create_default_context(cafile=self.settings.ca_file)

    def _runner(self) -> asyncio.Runner:
        runner: asyncio.Runner | None = getattr(self._local, "runner", None)
        if runner is None:
            runner = asyncio.Runner()
            self._local.runner = runner
            with self._lock:
                self._runners.append(runner)
        return runner

    def message_id(self, key: str) -> str:
        return message_id(key, self.id_salt, self.id_domain)

    def send(self, message: OutboundMessage) -> SendResult:
        try:
            to, international = recipient(message.to)
            content = build_message(
                replace(message, to=to),
                sender=self.sender,
                reply_to=self.reply_to,
                message_id=self.message_id(message.key),
                utf8=international,
            ).as_bytes()
        except ValueError as error:
            # No server would take it, now or later: a line break in a header, a bad address.
            return SendResult(SendStatus.REJECTED, error=f"cannot be sent: {_first(error)}")
        attempt = _Attempt()
        try:
            return self._runner().run(self._deliver(to, content, international, attempt))
        except (TimeoutError, aiosmtplib.SMTPTimeoutError) as error:
            return _lost(attempt, f"timed out after {self.timeout:g} s", error)
        except aiosmtplib.SMTPResponseException as error:
            return _refused(attempt, error)
        except (aiosmtplib.SMTPException, OSError) as error:
            return _lost(attempt, "connection failed", error)

    async def _deliver(
        self, to: str, content: bytes, international: bool, attempt: _Attempt
    ) -> SendResult:
        settings = self.settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            local_hostname=settings.helo,
            timeout=self.timeout,
            use_tls=settings.tls,
            start_tls=settings.starttls,
            tls_context=self._tls,
        )
        try:
            # One deadline for the whole conversation, not one per command: the dispatcher's
            # lease assumes no call outlives the provider timeout.
            async with asyncio.timeout(self.timeout):
                await client.connect()
                if settings.username:
                    attempt.phase = "auth"
                    await client.login(settings.username, settings.password or "")
                attempt.phase = "mail"
                if international:
                    if client.is_ehlo_or_helo_needed:
                        await client.ehlo()
                    if not client.supports_extension("smtputf8"):
                        return SendResult(SendStatus.REJECTED, error=NO_SMTPUTF8)
                    await client.mail(self.sender.addr_spec, options=["SMTPUTF8"])
                else:
                    await client.mail(self.sender.addr_spec)
                attempt.phase = "rcpt"
                await client.rcpt(to, encoding="utf-8" if international else "ascii")
                attempt.phase = "data"
                reply = await client.data(content)
                attempt.phase, attempt.reply = "done", reply.message
                # The message was taken; a rude goodbye changes nothing.
                with contextlib.suppress(aiosmtplib.SMTPException):
                    await client.quit()
        finally:
            client.close()
        return _accepted(attempt)

    def lookup(self, key: str) -> LookupStatus:
        return LookupStatus.UNKNOWN

    def verify(self, request: WebhookRequest) -> bool:
        return False

    def parse_status(self, request: WebhookRequest) -> list[DeliveryUpdate]:
        return []

    def parse_inbound(self, request: WebhookRequest) -> list[InboundReply]:
        return []

    def close(self) -> None:
        with self._lock:
            runners, self._runners = self._runners, []
        for runner in runners:
            runner.close()


def recipient(address: str) -> tuple[str, bool]:
    """The address as it goes on the wire, and whether it needs SMTPUTF8 (a non-ASCII local
    part). A non-ASCII domain becomes its IDNA (punycode) form, which every server takes."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain or any(c in address for c in "<>\r\n ,;"):
        raise ValueError("to: not an email address")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("to: the domain is not a valid internationalised name") from None
    return f"{local}@{domain}", not local.isascii()


def _first(error: ValueError) -> str:
    return str(error).splitlines()[0][:200]


class _Attempt:
    """How far one conversation got: what a failure means depends on it."""

    phase = "connect"
    reply = ""


def _accepted(attempt: _Attempt) -> SendResult:
    return SendResult(SendStatus.ACCEPTED, provider_id=_queue_id(attempt.reply))


def _lost(attempt: _Attempt, what: str, error: BaseException) -> SendResult:
    if attempt.phase == "done":
        return _accepted(attempt)  # only the QUIT after the server's 250 went wrong
    text = f"{what} during {attempt.phase}: {type(error).__name__}"
    if attempt.phase == "data":
        # The server may have the message: sending it again could deliver it twice.
        return SendResult(SendStatus.UNKNOWN, error=text)
    return SendResult(SendStatus.REJECTED, error=text, retryable=True)


def _refused(attempt: _Attempt, error: aiosmtplib.SMTPResponseException) -> SendResult:
    found = ENHANCED_CODE.search(error.message or "")
    code = found.group(1) if found else str(error.code)
    # The server's own words can quote the address: keep only the codes.
    text = f"SMTP {error.code} {code if found else ''} during {attempt.phase}".replace("  ", " ")
    about_recipient = attempt.phase in ("rcpt", "data")
    permanent = 500 <= error.code < 600 and about_recipient
    return SendResult(SendStatus.REJECTED, error=text, retryable=not permanent, error_code=code)


def _queue_id(reply: str) -> str | None:
    found = QUEUE_ID.search(reply or "")
    return found.group(1) if found else None


def build(config: ProviderConfig) -> SmtpChannel:
    return SmtpChannel(config)
