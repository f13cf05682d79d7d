"""The webhook channel: what each receiver answer means for the dispatcher."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.support.provider import running_provider

from cartback.channels.registry import build_channel
from cartback.channels.webhook import WebhookChannel
from cartback.config import ConfigError, load_settings
from cartback.core.model import Channel
from cartback.ports import LookupStatus, OutboundMessage, SendStatus

URL = "http://relay.test/messages"
MESSAGE = OutboundMessage(
    key="cb-42",
    channel=Channel.EMAIL,
    to="kari@example.com",
    body="Your cart",
    subject="Hi",
    html="<p>Your cart</p>",
    headers=(("List-Unsubscribe", "<https://x/u/t>"),),
)


def _channel(handler: httpx.MockTransport) -> WebhookChannel:
    return WebhookChannel(Channel.EMAIL, URL, timeout=2, transport=handler)


def test_posts_the_message_with_its_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "p-1"})

    result = _channel(httpx.MockTransport(handle)).send(MESSAGE)

    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "p-1"
    (request,) = seen
    assert request.method == "POST" and str(request.url) == URL
    assert request.headers["Idempotency-Key"] == "cb-42"
    assert json.loads(request.content) == {
        "key": "cb-42",
        "channel": "email",
        "to": "kari@example.com",
        "body": "Your cart",
        "subject": "Hi",
        "html": "<p>Your cart</p>",
        "headers": {"List-Unsubscribe": "<https://x/u/t>"},
    }


def test_accepted_without_a_json_id_has_no_provider_id() -> None:
    result = _channel(httpx.MockTransport(lambda _: httpx.Response(200, text="ok"))).send(MESSAGE)
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id is None


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (404, False), (422, False), (429, True), (503, True)]
)
def test_refusals_say_whether_a_retry_may_help(status: int, retryable: bool) -> None:
    result = _channel(httpx.MockTransport(lambda _: httpx.Response(status))).send(MESSAGE)
    assert result.status is SendStatus.REJECTED
    assert result.retryable is retryable
    assert result.error == f"HTTP {status}"


def test_a_connection_never_made_is_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = _channel(httpx.MockTransport(refuse)).send(MESSAGE)
    assert result.status is SendStatus.REJECTED and result.retryable


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
def test_a_request_that_may_have_gone_out_is_unknown(error: type[httpx.HTTPError]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("lost", request=request)  # type: ignore[call-arg]

    result = _channel(httpx.MockTransport(fail)).send(MESSAGE)
    assert result.status is SendStatus.UNKNOWN
    assert "kari@example.com" not in (result.error or "")


@pytest.mark.parametrize(
    ("status", "found"),
    [(200, LookupStatus.SENT), (404, LookupStatus.NOT_SENT), (500, LookupStatus.UNKNOWN)],
)
def test_lookup_asks_for_the_key(status: int, found: LookupStatus) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        return httpx.Response(status)

    assert _channel(httpx.MockTransport(handle)).lookup("cb-42") is found
    assert seen == [f"GET {URL}/cb-42"]


def test_against_a_real_receiver_a_hang_is_unknown_and_lookup_finds_it() -> None:
    with running_provider() as provider:
        channel = WebhookChannel(Channel.SMS, provider.url, timeout=0.5)
        try:
            assert channel.lookup("cb-42") is LookupStatus.NOT_SENT
            assert channel.send(MESSAGE).status is SendStatus.ACCEPTED
            assert channel.lookup("cb-42") is LookupStatus.SENT

            provider.switch("hang", delay=1.5)
            hung = OutboundMessage(key="cb-43", channel=Channel.SMS, to="+4791234567", body="x")
            assert channel.send(hung).status is SendStatus.UNKNOWN
            provider.switch("normal")
            assert channel.lookup("cb-43") is LookupStatus.SENT

            provider.switch("fail_in_turn")
            results = [
                channel.send(OutboundMessage(key=f"cb-{n}", channel=Channel.SMS, to="x", body="y"))
                for n in (50, 51)
            ]
            assert [r.status for r in results] == [SendStatus.REJECTED, SendStatus.ACCEPTED]
            assert results[0].retryable
        finally:
            channel.close()
    assert [item.key for item in provider.taken()] == ["cb-42", "cb-43", "cb-51"]


def test_a_receiver_that_is_not_listening_is_retried() -> None:
    with running_provider() as provider:
        url = provider.url
    channel = WebhookChannel(Channel.SMS, url, timeout=0.5)
    try:
        result = channel.send(MESSAGE)
    finally:
        channel.close()
    assert result.status is SendStatus.REJECTED and result.retryable


def test_settings_need_a_url_for_the_webhook_channel() -> None:
    with pytest.raises(ConfigError, match="CARTBACK_EMAIL_WEBHOOK_URL"):
        load_settings({"CARTBACK_EMAIL_CHANNEL": "webhook"})
    with pytest.raises(ConfigError, match="CARTBACK_SMS_WEBHOOK_URL: must be an http"):
        load_settings({"CARTBACK_SMS_WEBHOOK_URL": "ftp://relay"})
    settings = load_settings(
        {
            "CARTBACK_EMAIL_CHANNEL": "webhook",
            "CARTBACK_EMAIL_WEBHOOK_URL": URL,
            "CARTBACK_SEND_TIMEOUT_SECONDS": "3",
        }
    )
    channel = build_channel("webhook", Channel.EMAIL, settings)
    assert isinstance(channel, WebhookChannel) and channel.url == URL
    assert channel._client.timeout.read == 3
    channel.close()
