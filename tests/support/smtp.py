"""A real SMTP server (aiosmtpd) on a free loopback port, with faults on demand.

It keeps every message it took, parsed, so a test checks what a mail server really received.
Plain, STARTTLS (a throwaway CA from trustme) and implicit TLS; AUTH PLAIN/LOGIN with one
account; ``rcpt_reply`` answers RCPT TO with a chosen reply ("450 4.2.1 ...", "550 5.1.1 ...");
``stall`` makes the server sit on the message's final reply for that many seconds.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USERNAME, PASSWORD = "shop", "s3cret-pässword"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    authenticated_as: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Handler:
    rcpt_reply: str | None = None
    stall: float = 0.0
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stall:
            await asyncio.sleep(self.stall)
        login = session.auth_data.decode() if session.authenticated else None
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, login)
        )
        return "250 2.0.0 Ok: queued as 4F3xQ1"


@dataclass
class SmtpServer:
    handler: Handler
    host: str
    port: int
    ca_file: str | None


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == USERNAME.encode()
        and data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_server(
    tmp_path: Path,
    *,
    tls: str = "none",
    auth: bool = False,
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
    smtputf8: bool = False,
) -> Iterator[SmtpServer]:
    """``tls``: "none", "starttls" (required before MAIL) or "implicit"."""
    handler = Handler()
    options: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
    ca_file = None
    server_context = None
    if tls != "none":
        authority = trustme.CA()
        certificate = authority.issue_cert("127.0.0.1", "localhost")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(server_context)
        ca_path = tmp_path / "smtp-ca.pem"
        authority.cert_pem.write_to_path(str(ca_path))
        ca_file = str(ca_path)
    if tls == "starttls":
        options.update(tls_context=server_context, require_starttls=True)
    if auth:
        excluded = [name for name in ("PLAIN", "LOGIN") if name not in mechanisms]
        options.update(
            authenticator=_authenticate, auth_required=True, auth_exclude_mechanism=excluded
        )
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ssl_context=server_context if tls == "implicit" else None,
        server_hostname="localhost",
        **options,
    )
    controller.start()
    try:
        yield SmtpServer(handler, "127.0.0.1", port, ca_file)
    finally:
        controller.stop()
