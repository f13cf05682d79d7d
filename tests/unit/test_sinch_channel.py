"""The Sinch XMS adapter: batches, recipient delivery reports, MO replies and signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from tests.support.recorded import Replay, callback, provider_config, sent_fields

from cartback.channels.sinch import SinchChannel, signature
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import LookupResult, LookupStatus, OutboundMessage, SendResult, SendStatus

MESSAGE = OutboundMessage(
    key="cb-42", channel=Channel.SMS, to="+4740000001", body="Your cart is waiting"
)
SECRET = "sinch-hook-secret"


def _channel(replay: Replay | None = None, **options: str | None) -> SinchChannel:
    return SinchChannel(provider_config("sinch", **options), replay.transport if replay else None)


def _send(fixture: str) -> tuple[Replay, SendResult]:
    replay = Replay("sinch", fixture)
    return replay, _channel(replay).send(MESSAGE)


def test_sends_the_recorded_batch_with_client_reference() -> None:
    replay, result = _send("send_accepted")
    recorded = replay.exchange["request"]

    assert replay.request.method == recorded["method"]
    assert str(replay.request.url) == recorded["url"]
    assert replay.request.headers["authorization"] == "Bearer sinch-token"
    assert sent_fields(replay.request) == recorded["json"]
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "01JDQ4XK9V2C7M3P5R8T0W6YZA" and result.segments == 1


def test_a_long_message_counts_its_parts() -> None:
    replay = Replay("sinch", "send_accepted")
    long = OutboundMessage(key="cb-50", channel=Channel.SMS, to="+4740000001", body="x" * 200)

    result = _channel(replay).send(long)

    assert result.segments == 2  # 153 + 47


@pytest.mark.parametrize(
    ("fixture", "retryable", "code"),
    [
        ("send_bad_request", False, "syntax_invalid_parameter_format"),
        ("send_rate_limited", True, "too_many_requests"),
        ("send_unauthorized", False, "unauthorized"),
    ],
)
def test_a_refusal_maps_its_http_status(fixture: str, retryable: bool, code: str) -> None:
    _, result = _send(fixture)
    assert result.status is SendStatus.REJECTED
    assert result.retryable is retryable and result.error_code == code


def test_a_delivered_report_names_our_key() -> None:
    (update,) = _channel().parse_status(callback("sinch", "report_delivered"))

    assert update.status is DeliveryStatus.DELIVERED
    assert update.provider_id == "01JDQ4XK9V2C7M3P5R8T0W6YZA" and update.message_key == "cb-42"
    assert update.at == datetime(2026, 12, 1, 10, 5, 8, 500000, tzinfo=UTC)
    assert update.error_code is None


def test_dispatched_is_on_its_way() -> None:
    (update,) = _channel().parse_status(callback("sinch", "report_dispatched"))
    assert update.status is DeliveryStatus.SENT


def test_failed_is_not_permanent() -> None:
    (update,) = _channel().parse_status(callback("sinch", "report_failed"))
    assert update.status is DeliveryStatus.FAILED
    assert update.error_code == "404" and not update.permanent and not update.opted_out


def test_deleted_is_permanent_but_not_called_an_opt_out() -> None:
    # Sinch deletes for an invalid number or an opted-out subscriber without saying which.
    (update,) = _channel().parse_status(callback("sinch", "report_deleted"))
    assert update.status is DeliveryStatus.FAILED
    assert update.permanent and not update.opted_out


def test_a_batch_summary_is_not_tracked() -> None:
    assert _channel().parse_status(callback("sinch", "report_summary")) == []


def test_a_report_without_batch_id_names_the_field() -> None:
    with pytest.raises(ValueError, match="batch_id"):
        _channel().parse_status(callback("sinch", "report_no_batch_id"))


def test_an_mo_text() -> None:
    (reply,) = _channel().parse_inbound(callback("sinch", "mo_stop"))

    assert reply.sender == "+4740000001" and reply.text == "Stop"
    assert reply.to == "4759000000" and reply.provider_id == "01JDQ5A0B1C2D3E4F5G6H7J8K9"


def test_a_binary_mo_carries_no_text() -> None:
    assert _channel().parse_inbound(callback("sinch", "mo_binary")) == []


def _signed_headers(body: bytes, nonce: str = "01FJA8B4A7BM43YGWSG9GBV067") -> dict[str, str]:
    timestamp = "1796119620"
    # Computed here independently of the adapter: HMAC-SHA256 over body.nonce.timestamp.
    digest = hmac.new(SECRET.encode(), body + f".{nonce}.{timestamp}".encode(), hashlib.sha256)
    return {
        "x-sinch-webhook-signature": base64.b64encode(digest.digest()).decode(),
        "x-sinch-webhook-signature-nonce": nonce,
        "x-sinch-webhook-signature-timestamp": timestamp,
        "x-sinch-webhook-signature-algorithm": "HmacSHA256",
    }


def test_a_signed_callback_passes_and_a_tampered_one_fails() -> None:
    channel = _channel(webhook_secret=SECRET)
    request = callback("sinch", "report_delivered")
    signed = callback("sinch", "report_delivered", headers=_signed_headers(request.body))
    tampered = callback(
        "sinch",
        "report_delivered",
        headers=_signed_headers(request.body),
        extra={"status": "Failed"},
    )

    assert channel.verify(signed)
    assert not channel.verify(tampered)
    assert not channel.verify(request)  # unsigned


def test_the_adapter_signature_matches_sinch_sha512_too() -> None:
    body = b'{"type":"mo_text"}'
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), body + b".n.1", hashlib.sha512).digest()
    ).decode()
    assert signature(body, "n", "1", SECRET, "sha512") == expected


def test_an_unknown_algorithm_fails_verification() -> None:
    request = callback("sinch", "report_delivered")
    headers = {**_signed_headers(request.body), "x-sinch-webhook-signature-algorithm": "MD5"}
    assert not _channel(webhook_secret=SECRET).verify(
        callback("sinch", "report_delivered", headers=headers)
    )


def test_lookup_finds_a_report_with_our_key() -> None:
    replay = Replay("sinch", "delivery_reports_lookup")

    found = _channel(replay).lookup("cb-42")

    assert found == LookupResult(LookupStatus.SENT, "01JDQ4XK9V2C7M3P5R8T0W6YZA")
    assert replay.request.url.params["client_reference"] == "cb-42"


def test_lookup_without_a_report_proves_nothing() -> None:
    replay = Replay("sinch", "delivery_reports_none")
    assert _channel(replay).lookup("cb-42") is LookupStatus.UNKNOWN
