"""The Postmark adapter against recorded answers (tests/fixtures/providers/postmark), written
from Postmark's published field lists and served through httpx's mock transport."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cartback.channels.postmark import PostmarkChannel
from cartback.channels.registry import PROVIDERS, build_provider
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import (
    LookupStatus,
    OutboundMessage,
    ProviderConfig,
    SendStatus,
    WebhookRequest,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "providers" / "postmark"
TOKEN = "server-token-0f1e2d"
HOOK_URL = "https://go.example/hooks/channel/postmark/test/status"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def config(**options: str) -> ProviderConfig:
    settings = {
        "server_token": TOKEN,
        "from": "hello@butikk.example",
        "from_name": "Strikkebutikken",
        "reply_to": "support@butikk.example",
        "message_stream": "cart-recovery",
        "webhook_username": "postmark",
        "webhook_password": "hook-pässword",
        **options,
    }
    return ProviderConfig(
        provider="postmark",
        kind=Channel.EMAIL,
        store="test",
        options=settings,
        status_url=HOOK_URL,
        inbound_url="https://go.example/hooks/channel/postmark/test/inbound",
        timeout=2.0,
    )


def channel_answering(
    handler: Callable[[httpx.Request], httpx.Response], **options: str
) -> PostmarkChannel:
    return PostmarkChannel(config(**options), transport=httpx.MockTransport(handler))


def message(**changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "key": "cb-42",
        "channel": Channel.EMAIL,
        "to": "kari@example.com",
        "subject": "Du glemte noe, Kåre",
        "body": "Hei Kåre",
        "html": "<p>Hei Kåre</p>",
        "headers": (
            ("List-Unsubscribe", "<https://go.example/u/AbCdEfGhIjKlMnOpQ>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
    }
    fields.update(changes)
    return OutboundMessage(**fields)


def recorded(status: int, name: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=fixture(name))

    return answer


def test_a_send_posts_the_message_with_our_key_and_the_one_click_headers() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=fixture("send_ok.json"))

    channel = channel_answering(answer)
    result = channel.send(message())
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "5d1e9a2b-3c47-4f0e-9a61-1b2c3d4e5f60"
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.postmarkapp.com/email"
    assert request.headers["x-postmark-server-token"] == TOKEN
    assert request.headers["accept"] == "application/json"
    body = json.loads(request.content)
    assert body["From"] == "Strikkebutikken <hello@butikk.example>"
    assert body["To"] == "kari@example.com"
    assert body["ReplyTo"] == "support@butikk.example"
    assert body["Subject"] == "Du glemte noe, Kåre"
    assert (body["TextBody"], body["HtmlBody"]) == ("Hei Kåre", "<p>Hei Kåre</p>")
    assert body["MessageStream"] == "cart-recovery"
    assert body["Metadata"] == {"cartback_key": "cb-42"}
    assert (body["TrackOpens"], body["TrackLinks"]) == (False, "None")
    assert body["Headers"] == [
        {"Name": "List-Unsubscribe", "Value": "<https://go.example/u/AbCdEfGhIjKlMnOpQ>"},
        {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
    ]
    channel.close()


def test_an_inactive_recipient_is_an_opt_out_never_retried() -> None:
    result = channel_answering(recorded(422, "send_inactive.json")).send(message())
    assert result.status is SendStatus.REJECTED
    assert result.opted_out and not result.retryable
    assert result.error_code == "406"


def test_an_invalid_address_is_permanent() -> None:
    result = channel_answering(recorded(422, "send_invalid_address.json")).send(message())
    assert result.status is SendStatus.REJECTED
    assert not result.retryable and not result.opted_out
    assert result.error_code == "300"


@pytest.mark.parametrize(
    ("status", "name", "code"),
    [(401, "send_bad_token.json", "10"), (422, "send_sender_signature.json", "400")],
)
def test_a_refusal_of_our_account_is_retryable(status: int, name: str, code: str) -> None:
    result = channel_answering(recorded(status, name)).send(message())
    assert result.status is SendStatus.REJECTED
    assert result.retryable and result.error_code == code


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retryable(status: int) -> None:
    result = channel_answering(lambda request: httpx.Response(status, text="busy")).send(message())
    assert result.status is SendStatus.REJECTED and result.retryable


def test_a_connect_error_is_retryable_and_a_read_timeout_unknown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    refused = channel_answering(refuse).send(message())
    assert refused.status is SendStatus.REJECTED and refused.retryable
    assert channel_answering(hang).send(message()).status is SendStatus.UNKNOWN


def test_lookup_finds_a_message_only_by_our_key_in_its_metadata() -> None:
    asked: list[httpx.Request] = []

    def search(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, content=fixture("search_found.json"))

    found = channel_answering(search).lookup("cb-42")
    assert found.status is LookupStatus.SENT
    assert found.provider_id == "5d1e9a2b-3c47-4f0e-9a61-1b2c3d4e5f60"
    assert asked[0].url.path == "/messages/outbound"
    assert asked[0].url.params["metadata_cartback_key"] == "cb-42"
    # A search that answers with some other message proves nothing about ours.
    other = channel_answering(recorded(200, "search_other_message.json")).lookup("cb-42")
    assert other.status is LookupStatus.UNKNOWN
    failing = channel_answering(lambda request: httpx.Response(500)).lookup("cb-42")
    assert failing.status is LookupStatus.UNKNOWN


def hook(
    name: str, *, auth: str | None = None, query: dict[str, str] | None = None
) -> WebhookRequest:
    headers = {"content-type": "application/json"}
    if auth is not None:
        headers["authorization"] = auth
    return WebhookRequest("POST", HOOK_URL, headers, fixture(name), query or {})


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_webhooks_are_verified_by_basic_auth() -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    good = hook("webhook_delivery.json", auth=basic("postmark", "hook-pässword"))
    assert channel.verify(good)
    assert not channel.verify(hook("webhook_delivery.json", auth=basic("postmark", "nope")))
    assert not channel.verify(hook("webhook_delivery.json"))


def test_webhooks_can_be_verified_by_a_token_in_the_url() -> None:
    channel = channel_answering(
        recorded(200, "send_ok.json"),
        webhook_username="",
        webhook_password="",
        webhook_token="t0k3n-in-url",
    )
    assert channel.verify(hook("webhook_delivery.json", query={"token": "t0k3n-in-url"}))
    assert not channel.verify(hook("webhook_delivery.json", query={"token": "t0k3n-in-ur"}))
    assert not channel.verify(hook("webhook_delivery.json"))


def test_without_webhook_credentials_every_callback_is_refused() -> None:
    channel = channel_answering(
        recorded(200, "send_ok.json"), webhook_username="", webhook_password=""
    )
    assert not channel.verify(hook("webhook_delivery.json", auth=basic("", "")))


def test_a_delivery_webhook_marks_the_message_delivered() -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    [update] = channel.parse_status(hook("webhook_delivery.json"))
    assert update.status is DeliveryStatus.DELIVERED
    assert update.message_key == "cb-42"
    assert update.provider_id == "5d1e9a2b-3c47-4f0e-9a61-1b2c3d4e5f60"
    assert update.at == datetime(2026, 12, 1, 16, 5, 23, tzinfo=UTC)
    assert "Recipient" not in update.raw


def test_a_hard_bounce_is_a_permanent_failure() -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    [update] = channel.parse_status(hook("webhook_bounce_hard.json"))
    assert update.status is DeliveryStatus.FAILED
    assert update.permanent and not update.opted_out
    assert update.error_code == "HardBounce"
    assert update.message_key == "cb-42"
    assert update.at == datetime(2026, 12, 1, 16, 6, 10, 273539, tzinfo=UTC)
    # The address and the bounced copy of the message are not kept.
    assert "Email" not in update.raw and "Content" not in update.raw


def test_a_soft_bounce_fails_the_message_but_spares_the_address() -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    [update] = channel.parse_status(hook("webhook_bounce_soft.json"))
    assert update.status is DeliveryStatus.FAILED
    assert not update.permanent and not update.opted_out


def test_a_delay_notice_changes_nothing() -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    assert channel.parse_status(hook("webhook_bounce_transient.json")) == []


@pytest.mark.parametrize(
    "name", ["webhook_spam_complaint.json", "webhook_subscription_change.json"]
)
def test_a_complaint_or_an_unsubscribe_at_postmark_opts_the_address_out(name: str) -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    [update] = channel.parse_status(hook(name))
    assert update.opted_out
    assert update.message_key == "cb-42"


def test_a_reactivation_at_postmark_never_resubscribes() -> None:
    record = json.loads(fixture("webhook_subscription_change.json"))
    record["SuppressSending"] = False
    channel = channel_answering(recorded(200, "send_ok.json"))
    request = WebhookRequest("POST", HOOK_URL, {}, json.dumps(record).encode())
    assert channel.parse_status(request) == []


@pytest.mark.parametrize("name", ["webhook_open.json", "webhook_click.json"])
def test_opens_and_clicks_are_ignored(name: str) -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    assert channel.parse_status(hook(name)) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"RecordType": "Bounce", "MessageID": "x"}', "Type"),
        (b'{"RecordType": "Delivery"}', "MessageID"),
        (b'{"RecordType": "Delivery", "MessageID": "x", "DeliveredAt": "soon"}', "timestamp"),
    ],
)
def test_a_malformed_webhook_names_the_field(body: bytes, field: str) -> None:
    channel = channel_answering(recorded(200, "send_ok.json"))
    with pytest.raises(ValueError, match=f"^{field}:"):
        channel.parse_status(WebhookRequest("POST", HOOK_URL, {}, body))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"server_token": ""}, "server_token"),
        ({"from": "nobody"}, "from"),
        ({"webhook_password": ""}, "webhook_password"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, str], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        PostmarkChannel(config(**options))


def test_both_email_providers_are_registered() -> None:
    assert {"smtp", "postmark"} <= set(PROVIDERS)
    assert isinstance(build_provider(config()), PostmarkChannel)
    with pytest.raises(ValueError, match="unknown provider"):
        build_provider(ProviderConfig("nope", Channel.EMAIL, "test", {}, "", ""))
