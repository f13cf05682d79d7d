"""The SMTP channel against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cartback.channels.smtp import SmtpChannel
from cartback.config import ConfigError, load_settings
from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, ProviderConfig, SendStatus
from tests.support.smtp import PASSWORD, USERNAME, SmtpServer, smtp_server

UNSUBSCRIBE = "<https://go.example/u/AbCdEfGhIjKlMnOpQ>"


def _message(key: str = "cb-42", **changes: object) -> OutboundMessage:
    fields: dict[str, object] = {
        "key": key,
        "channel": Channel.EMAIL,
        "to": "kåre@example.com".replace("å", "a"),
        "subject": "Du glemte noe, Kåre – 20 % på ullsokker",
        "body": "Hei Kåre,\nhandlekurven din venter.\n.\nSlutt",
        "html": "<html><body><p>Hei Kåre, handlekurven din venter.</p></body></html>",
        "headers": (
            ("List-Unsubscribe", UNSUBSCRIBE),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
    }
    fields.update(changes)
    return OutboundMessage(**fields)  # type: ignore[arg-type]


def _channel(server: SmtpServer, timeout: float = 5.0, **options: str) -> SmtpChannel:
    settings = {
        "host": server.host,
        "port": str(server.port),
        "starttls": "false",
        "from": "hello@butikk.example",
        "from_name": "Strikkebutikken Ærlig",
        "reply_to": "support@butikk.example",
        **options,
    }
    if server.ca_file:
        settings["ca_file"] = server.ca_file
    config = ProviderConfig(
        provider="smtp",
        kind=Channel.EMAIL,
        store="test",
        options=settings,
        status_url="https://go.example/hooks/channel/smtp/test/status",
        inbound_url="https://go.example/hooks/channel/smtp/test/inbound",
        timeout=timeout,
    )
    return SmtpChannel(config)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path) as server:
        yield server


def test_a_plain_send_arrives_with_both_parts_and_the_one_click_headers(
    plain: SmtpServer,
) -> None:
    channel = _channel(plain)
    try:
        result = channel.send(_message())
    finally:
        channel.close()
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "4F3xQ1"
    [received] = plain.handler.received
    assert received.mail_from == "hello@butikk.example"
    assert received.rcpt_tos == ["kare@example.com"]
    mail = received.message
    assert mail["List-Unsubscribe"] == UNSUBSCRIBE
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["Subject"] == "Du glemte noe, Kåre – 20 % på ullsokker"
    assert mail["From"].addresses[0].display_name == "Strikkebutikken Ærlig"
    assert mail["From"].addresses[0].addr_spec == "hello@butikk.example"
    assert str(mail["Reply-To"]) == "support@butikk.example"
    assert mail["To"] == "kare@example.com"
    assert mail["Date"].datetime is not None
    assert mail["Message-ID"].startswith("<cb-42.")
    assert mail["Message-ID"].endswith("@butikk.example>")
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    assert (
        text.get_content().replace("\r\n", "\n")
        == "Hei Kåre,\nhandlekurven din venter.\n.\nSlutt\n"
    )
    assert "<p>Hei Kåre, handlekurven din venter.</p>" in html.get_content()
    # Encoded on the wire: the raw message is 7-bit clean.
    received.raw.decode("ascii")


def test_the_message_id_is_the_same_for_every_try_of_one_key(plain: SmtpServer) -> None:
    channel = _channel(plain)
    try:
        for key in ("cb-7", "cb-7", "cb-8"):
            assert channel.send(_message(key)).status is SendStatus.ACCEPTED
    finally:
        channel.close()
    ids = [received.message["Message-ID"] for received in plain.handler.received]
    assert ids[0] == ids[1] != ids[2]
    assert ids[2].startswith("<cb-8.")


def test_a_text_only_message_is_a_single_part(plain: SmtpServer) -> None:
    channel = _channel(plain)
    try:
        assert channel.send(_message(html=None)).status is SendStatus.ACCEPTED
    finally:
        channel.close()
    mail = plain.handler.received[0].message
    assert mail.get_content_type() == "text/plain"


def test_headers_from_the_message_cannot_replace_the_sender(plain: SmtpServer) -> None:
    channel = _channel(plain)
    forged = (("From", "ceo@bank.example"), ("X-Campaign", "winter"))
    try:
        channel.send(_message(headers=forged))
    finally:
        channel.close()
    mail = plain.handler.received[0].message
    assert mail.get_all("From") == ["Strikkebutikken Ærlig <hello@butikk.example>"]
    assert mail["X-Campaign"] == "winter"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_with_auth(tmp_path: Path, mechanism: str) -> None:
    with smtp_server(tmp_path, tls="starttls", auth=True, mechanisms=(mechanism,)) as server:
        channel = _channel(server, starttls="true", username=USERNAME, password=PASSWORD)
        try:
            result = channel.send(_message())
        finally:
            channel.close()
        assert result.status is SendStatus.ACCEPTED, result.error
        [received] = server.handler.received
        assert received.authenticated_as == USERNAME
        assert received.message["List-Unsubscribe"] == UNSUBSCRIBE


def test_implicit_tls(tmp_path: Path) -> None:
    with smtp_server(tmp_path, tls="implicit") as server:
        channel = _channel(server, starttls="false", tls="true")
        try:
            assert channel.send(_message()).status is SendStatus.ACCEPTED
        finally:
            channel.close()
        assert len(server.handler.received) == 1


def test_a_server_certificate_not_trusted_is_refused_and_retryable(tmp_path: Path) -> None:
    with smtp_server(tmp_path, tls="starttls") as server:
        # No ca_file: the throwaway CA is not trusted by the system store.
        server.ca_file = None
        channel = _channel(server, starttls="true")
        try:
            result = channel.send(_message())
        finally:
            channel.close()
    assert result.status is SendStatus.REJECTED and result.retryable
    assert server.handler.received == []


def test_wrong_credentials_are_retryable_and_name_no_recipient(tmp_path: Path) -> None:
    with smtp_server(tmp_path, tls="starttls", auth=True) as server:
        channel = _channel(server, starttls="true", username=USERNAME, password="wrong")
        try:
            result = channel.send(_message())
        finally:
            channel.close()
    assert result.status is SendStatus.REJECTED
    # The account is at fault, not the address: it must not be suppressed.
    assert result.retryable
    assert result.error is not None and "auth" in result.error
    assert "example.com" not in result.error


def test_a_4xx_reply_is_retryable(plain: SmtpServer) -> None:
    plain.handler.rcpt_reply = "450 4.2.1 Mailbox busy, try later"
    channel = _channel(plain)
    try:
        result = channel.send(_message())
    finally:
        channel.close()
    assert result.status is SendStatus.REJECTED
    assert result.retryable
    assert result.error_code == "4.2.1"


def test_an_unknown_user_is_permanent_with_the_enhanced_code(plain: SmtpServer) -> None:
    plain.handler.rcpt_reply = "550 5.1.1 <kare@example.com>: Recipient address rejected"
    channel = _channel(plain)
    try:
        result = channel.send(_message())
    finally:
        channel.close()
    assert result.status is SendStatus.REJECTED
    assert not result.retryable
    assert result.error_code == "5.1.1"
    assert result.error is not None and "kare@example.com" not in result.error


def test_a_server_that_stalls_after_data_is_unknown_within_the_timeout(
    plain: SmtpServer,
) -> None:
    plain.handler.stall = 5.0
    channel = _channel(plain, timeout=1.0)
    started = time.monotonic()
    try:
        result = channel.send(_message())
    finally:
        channel.close()
    elapsed = time.monotonic() - started
    assert result.status is SendStatus.UNKNOWN
    assert "data" in (result.error or "")
    assert elapsed < 1.0 + 1.0


def test_nothing_listening_is_retryable(tmp_path: Path) -> None:
    with smtp_server(tmp_path) as server:
        pass  # stopped: the port is closed now
    channel = _channel(server)
    try:
        result = channel.send(_message())
    finally:
        channel.close()
    assert result.status is SendStatus.REJECTED and result.retryable


def test_sends_from_several_threads_each_use_their_own_loop(plain: SmtpServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    channel = _channel(plain)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(channel.send, [_message(f"cb-{n}") for n in range(12)]))
    finally:
        channel.close()
    assert {result.status for result in results} == {SendStatus.ACCEPTED}
    assert len(plain.handler.received) == 12


def test_lookup_cannot_tell_and_callbacks_are_refused(plain: SmtpServer) -> None:
    channel = _channel(plain)
    from cartback.ports import WebhookRequest

    request = WebhookRequest("POST", "https://go.example/hooks", {}, b"{}")
    try:
        assert channel.lookup("cb-42") is LookupStatus.UNKNOWN
        assert channel.verify(request) is False
        assert channel.parse_status(request) == []
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"host": ""}, "host"),
        ({"from": "not-an-address"}, "from"),
        ({"port": "99999"}, "port"),
        ({"tls": "true", "starttls": "true"}, "starttls"),
        ({"starttls": "maybe"}, "starttls"),
        ({"username": "shop"}, "username"),
    ],
)
def test_bad_options_name_the_field(plain: SmtpServer, options: dict[str, str], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        _channel(plain, **options)


def test_the_default_email_channel_can_be_smtp_from_the_environment(plain: SmtpServer) -> None:
    from cartback.channels.registry import build_channels

    settings = load_settings(
        {
            "CARTBACK_EMAIL_CHANNEL": "smtp",
            "CARTBACK_SMTP_HOST": plain.host,
            "CARTBACK_SMTP_PORT": str(plain.port),
            "CARTBACK_SMTP_STARTTLS": "false",
            "CARTBACK_SMTP_FROM": "hello@butikk.example",
            "CARTBACK_SMTP_FROM_NAME": "Strikkebutikken",
            "CARTBACK_SMTP_PASSWORD": "not-in-repr",
        }
    )
    assert "not-in-repr" not in repr(settings)
    channels = build_channels(settings)
    email = channels[Channel.EMAIL]
    try:
        assert isinstance(email, SmtpChannel)
        assert email.send(_message()).status is SendStatus.ACCEPTED
    finally:
        for channel in channels.values():
            channel.close()
    mail = plain.handler.received[0].message
    assert mail["From"] == "Strikkebutikken <hello@butikk.example>"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"CARTBACK_SMTP_FROM": "hello@butikk.example"}, "CARTBACK_SMTP_HOST: required"),
        ({"CARTBACK_SMTP_HOST": "mail.example"}, "CARTBACK_SMTP_FROM: not an email"),
        (
            {"CARTBACK_SMTP_HOST": "m", "CARTBACK_SMTP_FROM": "a@b.c", "CARTBACK_SMTP_PORT": "0"},
            "CARTBACK_SMTP_PORT: must be between",
        ),
        (
            {"CARTBACK_SMTP_HOST": "m", "CARTBACK_SMTP_FROM": "a@b.c", "CARTBACK_SMTP_TLS": "si"},
            "CARTBACK_SMTP_TLS: expected true or false",
        ),
        (
            {
                "CARTBACK_SMTP_HOST": "m",
                "CARTBACK_SMTP_FROM": "a@b.c",
                "CARTBACK_SMTP_STARTTLS": "false",
                "CARTBACK_SMTP_USERNAME": "shop",
            },
            "CARTBACK_SMTP_USERNAME: SMTP AUTH needs",
        ),
    ],
)
def test_smtp_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}"):
        load_settings({"CARTBACK_EMAIL_CHANNEL": "smtp", **environ})


def test_smtp_cannot_carry_sms() -> None:
    with pytest.raises(ConfigError, match=r"^CARTBACK_SMS_CHANNEL: smtp sends email only"):
        load_settings({"CARTBACK_SMS_CHANNEL": "smtp"})


def test_an_international_domain_goes_out_as_punycode(plain: SmtpServer) -> None:
    channel = _channel(plain)
    try:
        result = channel.send(_message(to="kari@bütikk.example"))
    finally:
        channel.close()
    assert result.status is SendStatus.ACCEPTED
    assert plain.handler.received[0].rcpt_tos == ["kari@xn--btikk-kva.example"]


def test_a_non_ascii_mailbox_needs_a_server_that_takes_smtputf8(tmp_path: Path) -> None:
    with smtp_server(tmp_path, smtputf8=True) as server:
        channel = _channel(server)
        try:
            result = channel.send(_message(to="kåre@example.com"))
        finally:
            channel.close()
        assert result.status is SendStatus.ACCEPTED
        [received] = server.handler.received
        assert received.rcpt_tos == ["kåre@example.com"]
        assert received.message["To"] == "kåre@example.com"
    with smtp_server(tmp_path) as server:
        channel = _channel(server)
        try:
            result = channel.send(_message(to="kåre@example.com"))
        finally:
            channel.close()
        assert result.status is SendStatus.REJECTED and not result.retryable
        assert "SMTPUTF8" in (result.error or "")
        assert server.handler.received == []


def test_a_line_break_in_the_subject_is_folded_into_a_space(plain: SmtpServer) -> None:
    channel = _channel(plain)
    try:
        assert channel.send(_message(subject="Hei\r\nBcc: x@y.z")).status is SendStatus.ACCEPTED
    finally:
        channel.close()
    mail = plain.handler.received[0].message
    assert mail["Subject"] == "Hei Bcc: x@y.z"
    assert mail["Bcc"] is None


@pytest.mark.parametrize("to", ["not-an-address", "a@b.c\r\nBcc: x@y.z", "a@b.c, d@e.f"])
def test_an_address_no_server_would_take_is_refused_before_connecting(
    plain: SmtpServer, to: str
) -> None:
    channel = _channel(plain)
    try:
        result = channel.send(_message(to=to))
    finally:
        channel.close()
    assert result.status is SendStatus.REJECTED and not result.retryable
    assert plain.handler.received == []
