"""The inMobile v4 adapter: sends, status callbacks and the pull endpoints."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import httpx
import pytest
from tests.support.recorded import Replay, callback, load, provider_config, sent_fields

from cartback.channels.inmobile import InMobileChannel
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, SendResult, SendStatus, WebhookRequest

MESSAGE = OutboundMessage(
    key="cb-42", channel=Channel.SMS, to="+4520000001", body="Your cart is waiting"
)


def _channel(replay: Replay | None = None) -> InMobileChannel:
    return InMobileChannel(provider_config("inmobile"), replay.transport if replay else None)


def _send(fixture: str, message: OutboundMessage = MESSAGE) -> tuple[Replay, SendResult]:
    replay = Replay("inmobile", fixture)
    return replay, _channel(replay).send(message)


def test_sends_the_recorded_request_with_our_message_id() -> None:
    replay, result = _send("send_accepted")
    recorded = replay.exchange["request"]

    assert replay.request.method == recorded["method"]
    assert str(replay.request.url) == recorded["url"]
    assert sent_fields(replay.request) == recorded["json"]
    # Basic auth with an empty user name and the API key as the password.
    expected = base64.b64encode(b":im-key").decode()
    assert replay.request.headers["authorization"] == f"Basic {expected}"
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "cb-42" and result.segments == 1


def test_a_ucs2_text_asks_for_ucs2() -> None:
    message = OutboundMessage(key="cb-43", channel=Channel.SMS, to="+4520000001", body="Hej 🛒")
    replay, _ = _send("send_accepted", message)
    assert sent_fields(replay.request)["messages"][0]["encoding"] == "ucs2"


@pytest.mark.parametrize(
    ("fixture", "retryable", "error"),
    [
        ("send_bad_request", False, "Invalid sender"),
        ("send_server_error", True, "Internal error"),
        ("send_rate_limited", True, "Too many requests"),
    ],
)
def test_a_refusal_maps_its_http_status(fixture: str, retryable: bool, error: str) -> None:
    _, result = _send(fixture)
    assert result.status is SendStatus.REJECTED
    assert result.retryable is retryable and result.error == error and not result.opted_out


def test_a_delivered_callback() -> None:
    (update,) = _channel().parse_status(callback("inmobile", "status_delivered"))

    assert update.status is DeliveryStatus.DELIVERED
    assert update.message_key == "cb-42" and update.provider_id == "cb-42"
    assert update.at == datetime(2026, 12, 1, 10, 5, 7, tzinfo=UTC) and update.segments == 1


def test_a_failed_callback_keeps_the_error_but_suppresses_nothing() -> None:
    # inMobile publishes no per-address error list, so no failure counts as permanent.
    (update,) = _channel().parse_status(callback("inmobile", "status_failed"))

    assert update.status is DeliveryStatus.FAILED
    assert update.error_code == "-1" and update.error == "Undeliverable message"
    assert not update.permanent and not update.opted_out and update.segments == 2


def test_a_report_without_state_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"reports\[0\]\.deliveryInfo\.stateCode"):
        _channel().parse_status(callback("inmobile", "status_no_state"))


def test_pull_reports_reads_every_report() -> None:
    replay = Replay("inmobile", "reports_pull")

    updates = _channel(replay).pull_reports()

    assert str(replay.request.url) == replay.exchange["request"]["url"]
    assert [(u.message_key, u.status) for u in updates] == [
        ("cb-42", DeliveryStatus.DELIVERED),
        ("cb-47", DeliveryStatus.FAILED),
        ("cb-48", DeliveryStatus.SENT),
    ]


def test_pull_inbound_reads_every_message() -> None:
    replay = Replay("inmobile", "incoming_pull")

    replies = _channel(replay).pull_inbound()

    assert str(replay.request.url) == replay.exchange["request"]["url"]
    assert [(r.sender, r.text, r.to) for r in replies] == [
        ("+4520000001", "Afmeld", "4519000000"),
        ("Operator", "Hello", "4519000000"),
    ]
    assert replies[0].at == datetime(2026, 12, 1, 10, 10, tzinfo=UTC)


def test_a_refused_pull_raises_for_the_worker() -> None:
    replay = Replay("inmobile", "pull_unauthorized")
    with pytest.raises(httpx.HTTPStatusError):
        _channel(replay).pull_reports()


def test_an_incoming_callback_is_read_like_a_pulled_message() -> None:
    pulled = load("inmobile", "incoming_pull")["response"]["json"]
    incoming = WebhookRequest("POST", "https://shop.example/in", {}, json.dumps(pulled).encode())

    replies = _channel().parse_inbound(incoming)

    assert [r.text for r in replies] == ["Afmeld", "Hello"]


def test_one_unreadable_pulled_report_does_not_lose_the_others() -> None:
    # Pulled reports are handed out once: dropping the batch for one bad item would lose them.
    replay = Replay("inmobile", "reports_pull")
    replay.exchange["response"]["json"]["reports"].insert(1, {"messageId": "cb-49"})

    updates = _channel(replay).pull_reports()

    assert [u.message_key for u in updates] == ["cb-42", "cb-47", "cb-48"]


def test_one_unreadable_pulled_message_does_not_lose_the_others() -> None:
    replay = Replay("inmobile", "incoming_pull")
    replay.exchange["response"]["json"]["messages"].append({"text": "no sender"})

    assert [r.text for r in _channel(replay).pull_inbound()] == ["Afmeld", "Hello"]


def test_a_state_inmobile_does_not_publish_changes_nothing() -> None:
    document = load("inmobile", "status_delivered")["json"]
    document["reports"][0]["deliveryInfo"]["stateCode"] = 8
    request = WebhookRequest("POST", "https://shop.example/s", {}, json.dumps(document).encode())

    assert _channel().parse_status(request) == []


def test_an_unreadable_validity_is_named() -> None:
    with pytest.raises(ValueError, match="validity_seconds"):
        InMobileChannel(provider_config("inmobile", validity_seconds="soon"))
