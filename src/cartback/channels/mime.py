"""Build the MIME message for an email: text and HTML as multipart/alternative, the headers
compose computed (RFC 8058 one-click unsubscribe), a Message-ID tied to the outbox key."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime

from cartback.ports import OutboundMessage

# Headers the channel writes itself; a message's own headers may not replace them.
RESERVED = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)


def parse_address(text: str, *, name: str | None = None, field: str) -> Address:
    """An address from configuration, or ValueError naming the option."""
    local, at, domain = text.strip().rpartition("@")
    if not at or not local or not domain or any(c in text for c in "<>\r\n ,;"):
        raise ValueError(f"{field}: not an email address: {text!r}")
    return Address(display_name=name or "", username=local, domain=domain)


def message_id(key: str, salt: str, domain: str) -> str:
    """`<cb-123.<hash>@domain>`: the same for every try of one message, so a resend after an
    unknown outcome carries the same id and receivers can see it as one message. The hash
    keeps ids from two installations (or stores) with the same outbox id apart."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).hexdigest()[:16]
    return f"<{key}.{digest}@{domain}>"


def build_message(
    message: OutboundMessage,
    *,
    sender: Address,
    reply_to: Address | None,
    message_id: str,
    now: datetime | None = None,
    utf8: bool = False,
) -> EmailMessage:
    """The message; `utf8` for a recipient whose address needs SMTPUTF8 (RFC 6532 headers)."""
    mail = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    mail["From"] = sender
    mail["To"] = message.to
    if reply_to is not None:
        mail["Reply-To"] = reply_to
    # Non-ASCII subjects and names become RFC 2047 encoded words when serialised.
    mail["Subject"] = " ".join((message.subject or "").split())
    mail["Date"] = format_datetime(now or datetime.now(UTC))
    mail["Message-ID"] = message_id
    for name, value in message.headers:
        if name.lower() in RESERVED or "\n" in value or "\r" in value:
            continue
        mail[name] = value
    # Quoted-printable is safe over any relay, with or without 8BITMIME.
    mail.set_content(message.body, charset="utf-8", cte="quoted-printable")
    if message.html:
        mail.add_alternative(message.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return mail
