"""The Twilio channel: request shape against Twilio's OpenAPI spec, answers, signatures, and
callbacks parsed into delivery reports and replies."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qsl

import httpx
import pytest
from tests.support.twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    SENDER,
    FakeTwilio,
    callback,
    fixture,
    sign,
)

from cartback.channels.twilio import TwilioChannel, signature
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, ProviderConfig, SendStatus, WebhookRequest

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STATUS_URL = "https://cartback.example/hooks/channel/twilio/shop/status"
INBOUND_URL = "https://cartback.example/hooks/channel/twilio/shop/inbound"


def _config(**options: str) -> ProviderConfig:
    return ProviderConfig(
        provider="twilio",
        kind=Channel.SMS,
        store="shop",
        options={"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "from": SENDER, **options},
        status_url=STATUS_URL,
        inbound_url=INBOUND_URL,
        timeout=2.0,
    )


def _channel(
    fake: FakeTwilio | None = None, transport: httpx.BaseTransport | None = None
) -> TwilioChannel:
    return TwilioChannel(
        _config(), transport=transport or (fake or FakeTwilio()).transport(), clock=lambda: NOW
    )


def _message(**changes: object) -> OutboundMessage:
    values: dict[str, object] = {
        "key": "cb-42",
        "channel": Channel.SMS,
        "to": "+15550002222",
        "body": "TestShop: your cart is waiting",
    }
    values.update(changes)
    return OutboundMessage(**values)  # type: ignore[arg-type]


def test_a_message_is_created_with_a_request_the_spec_accepts() -> None:
    fake = FakeTwilio()
    result = _channel(fake).send(_message())
    assert result.status is SendStatus.ACCEPTED, result
    assert result.provider_id == "SM" + "1".zfill(32)
    assert (result.segments, result.cost) == (2, Decimal("0.01580"))
    [form] = fake.requests
    assert form["To"] == "+15550002222" and form["From"] == SENDER
    assert form["StatusCallback"] == f"{STATUS_URL}?key=cb-42"
    assert form["ValidityPeriod"] == "14400"
    user, _, password = base64.b64decode(fake.auth[0].split()[1]).decode().partition(":")
    assert (user, password) == (ACCOUNT_SID, AUTH_TOKEN)


def test_the_fake_refuses_a_request_outside_the_spec() -> None:
    # The contract check itself can fail: a misspelt field or a wrong type is refused.
    fake = FakeTwilio()
    request = httpx.Request(
        "POST",
        f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": "+1555", "From": SENDER, "Body": "x", "ValidityPeriod": "soon"},
    )
    assert fake.handle(request).status_code == 400
    misspelt = httpx.Request(
        "POST",
        f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": "+1555", "From": SENDER, "Body": "x", "Statuscallback": "http://x"},
    )
    assert fake.handle(misspelt).status_code == 400


def test_validity_follows_the_message_deadline() -> None:
    fake = FakeTwilio()
    channel = _channel(fake)
    channel.send(_message(send_before=NOW + timedelta(minutes=30)))
    channel.send(_message(send_before=NOW + timedelta(days=3)))
    channel.send(_message(send_before=NOW - timedelta(minutes=1)))
    assert [form["ValidityPeriod"] for form in fake.requests] == ["1800", "36000", "1"]


def test_error_21610_is_an_opt_out_never_retried() -> None:
    fake = FakeTwilio(answers=[("error_21610.json", 400)])
    result = _channel(fake).send(_message())
    assert result.status is SendStatus.REJECTED
    assert (result.opted_out, result.retryable, result.error_code) == (True, False, "21610")
    assert "+1555" not in str(result.error)


def test_other_refusals_are_permanent_and_throttling_is_retried() -> None:
    invalid = _channel(FakeTwilio(answers=[("error_21211.json", 400)])).send(_message())
    assert (invalid.retryable, invalid.opted_out, invalid.error_code) == (False, False, "21211")
    throttled = _channel(FakeTwilio(answers=[("error_20429.json", 429)])).send(_message())
    assert throttled.retryable and throttled.status is SendStatus.REJECTED


def test_a_connect_error_is_retryable_and_a_read_timeout_is_unknown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    refused = _channel(transport=httpx.MockTransport(refuse)).send(_message())
    assert (refused.status, refused.retryable) == (SendStatus.REJECTED, True)
    hung = _channel(transport=httpx.MockTransport(hang)).send(_message())
    assert hung.status is SendStatus.UNKNOWN
    assert _channel().lookup("cb-42").status.value == "unknown"


def test_signature_matches_twilios_published_example() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature("12345", url, list(params.items())) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert sign("12345", url, list(params.items())) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def _hook(url: str, form_text: str, token: str = AUTH_TOKEN, **header: str) -> WebhookRequest:
    form = dict(parse_qsl(form_text, keep_blank_values=True))
    body, headers = callback(url, form, token)
    headers.update(header)
    query = dict(parse_qsl(url.partition("?")[2]))
    return WebhookRequest("POST", url, headers, body.encode(), query)


def test_verify_accepts_twilios_signature_and_nothing_else() -> None:
    channel = _channel()
    url = f"{STATUS_URL}?key=cb-42"
    assert channel.verify(_hook(url, fixture("status_delivered.form")))
    assert not channel.verify(_hook(url, fixture("status_delivered.form"), token="wrong"))
    # Signed for another URL (a proxy's internal address) than the public one: refused.
    internal = _hook(
        "http://10.0.0.5:8000/hooks/channel/twilio/shop/status?key=cb-42",
        fixture("status_delivered.form"),
    )
    assert not channel.verify(WebhookRequest("POST", url, internal.headers, internal.body))
    unsigned = WebhookRequest("POST", url, {}, fixture("status_delivered.form").encode())
    assert not channel.verify(unsigned)
    tampered = _hook(url, fixture("status_delivered.form"))
    forged = WebhookRequest(
        "POST", url, tampered.headers, tampered.body.replace(b"delivered", b"failed")
    )
    assert not channel.verify(forged)


def test_status_callbacks_become_forward_only_reports() -> None:
    channel = _channel()
    url = f"{STATUS_URL}?key=cb-42"
    [delivered] = channel.parse_status(_hook(url, fixture("status_delivered.form")))
    assert delivered.status is DeliveryStatus.DELIVERED
    assert (delivered.message_key, delivered.provider_id) == ("cb-42", "SM" + "1".zfill(32))
    assert "From" not in delivered.raw and "To" not in delivered.raw
    [landline] = channel.parse_status(_hook(url, fixture("status_undelivered_30006.form")))
    assert (landline.status, landline.permanent, landline.error_code) == (
        DeliveryStatus.FAILED,
        True,
        "30006",
    )
    [unreachable] = channel.parse_status(_hook(url, fixture("status_undelivered_30003.form")))
    assert unreachable.status is DeliveryStatus.FAILED and not unreachable.permanent
    queued = _hook(url, "MessageSid=SM1&MessageStatus=queued")
    assert channel.parse_status(queued) == []


def test_a_callback_without_its_id_names_the_field() -> None:
    with pytest.raises(ValueError, match="MessageSid"):
        _channel().parse_status(_hook(STATUS_URL, "MessageStatus=delivered"))
    with pytest.raises(ValueError, match="From"):
        _channel().parse_inbound(_hook(INBOUND_URL, "MessageSid=SM1&Body=hi"))


def test_an_inbound_message_becomes_a_reply() -> None:
    [reply] = _channel().parse_inbound(_hook(INBOUND_URL, fixture("inbound_stop.form")))
    assert (reply.sender, reply.text, reply.to) == ("+4791234567", "STOP", SENDER)
    assert reply.provider_id == "SM10000000000000000000000000000001"
    body, media_type = TwilioChannel.inbound_answer()
    assert "<Response/>" in body and media_type == "text/xml"


def test_settings_without_credentials_are_refused() -> None:
    with pytest.raises(ValueError, match="auth_token"):
        TwilioChannel(
            ProviderConfig(
                "twilio", Channel.SMS, "shop", {"account_sid": ACCOUNT_SID}, STATUS_URL, INBOUND_URL
            )
        )
