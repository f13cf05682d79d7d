"""The Vonage SMS API adapter against recorded exchanges and callbacks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from tests.support.recorded import Replay, callback, provider_config, sent_fields

from cartback.channels.vonage import VonageChannel, signature
from cartback.core.events import DeliveryStatus
from cartback.core.model import Channel
from cartback.ports import OutboundMessage, SendResult, SendStatus

MESSAGE = OutboundMessage(
    key="cb-42", channel=Channel.SMS, to="+4740000001", body="Your cart is waiting"
)


def _send(
    fixture: str, message: OutboundMessage = MESSAGE, **options: str | None
) -> tuple[Replay, SendResult]:
    replay = Replay("vonage", fixture)
    channel = VonageChannel(provider_config("vonage", **options), replay.transport)
    return replay, channel.send(message)


def test_sends_the_recorded_request_with_client_ref_and_callback() -> None:
    replay, result = _send("send_accepted")
    recorded = replay.exchange["request"]

    assert replay.request.method == recorded["method"]
    assert str(replay.request.url) == recorded["url"]
    assert sent_fields(replay.request) == recorded["form"]
    assert result.status is SendStatus.ACCEPTED
    assert result.provider_id == "0C00000012AB34CD"
    assert result.segments == 1 and result.cost == Decimal("0.045")


def test_a_ucs2_text_goes_as_unicode_and_every_part_counts() -> None:
    message = OutboundMessage(key="cb-43", channel=Channel.SMS, to="+4740000001", body="Hei 🛒")
    replay, result = _send("send_two_parts", message)

    assert sent_fields(replay.request)["type"] == "unicode"
    assert result.status is SendStatus.ACCEPTED
    assert result.segments == 2 and result.cost == Decimal("0.09")
    assert result.provider_id == "0C00000012AB34D0"


def test_signs_the_request_instead_of_sending_the_secret() -> None:
    replay, _ = _send("send_accepted", api_secret=None, signature_secret="sig-s3cret")
    fields = sent_fields(replay.request)

    assert "api_secret" not in fields and "timestamp" in fields
    assert fields["sig"] == signature(fields, "sig-s3cret", "md5hash")


@pytest.mark.parametrize(
    ("fixture", "retryable", "opted_out", "code"),
    [
        ("send_throttled", True, False, "1"),
        ("send_barred", False, True, "7"),
        ("send_invalid", False, False, "3"),
    ],
)
def test_a_refused_message_maps_its_status(
    fixture: str, retryable: bool, opted_out: bool, code: str
) -> None:
    _, result = _send(fixture)

    assert result.status is SendStatus.REJECTED
    assert (result.retryable, result.opted_out, result.error_code) == (retryable, opted_out, code)


def test_a_server_error_is_retryable() -> None:
    _, result = _send("send_server_error")
    assert result.status is SendStatus.REJECTED and result.retryable


def _channel(**options: str | None) -> VonageChannel:
    return VonageChannel(provider_config("vonage", **options))


def test_a_delivered_receipt_by_get_names_our_key_and_price() -> None:
    (update,) = _channel().parse_status(callback("vonage", "receipt_delivered"))

    assert update.status is DeliveryStatus.DELIVERED
    assert update.provider_id == "0C00000012AB34CD" and update.message_key == "cb-42"
    assert update.cost == Decimal("0.045") and update.error_code is None
    assert update.at == datetime(2026, 12, 1, 10, 5, 12, tzinfo=UTC)


def test_err_code_9_is_an_opt_out() -> None:
    (update,) = _channel().parse_status(callback("vonage", "receipt_opted_out"))

    assert update.status is DeliveryStatus.FAILED
    assert update.opted_out and update.permanent and update.error_code == "9"
    assert update.message_key == "cb-44"


def test_an_absent_subscriber_is_permanent_but_not_an_opt_out() -> None:
    (update,) = _channel().parse_status(callback("vonage", "receipt_absent_permanently"))
    assert update.status is DeliveryStatus.FAILED
    assert update.permanent and not update.opted_out


def test_an_expired_message_is_failed_and_not_permanent() -> None:
    (update,) = _channel().parse_status(callback("vonage", "receipt_expired"))
    assert update.status is DeliveryStatus.FAILED
    assert not update.permanent and update.error_code == "1"


def test_a_receipt_without_message_id_names_the_field() -> None:
    with pytest.raises(ValueError, match="messageId"):
        _channel().parse_status(callback("vonage", "receipt_no_message_id"))


def test_an_unknown_receipt_status_changes_nothing() -> None:
    request = callback("vonage", "receipt_expired", extra={"status": "unknown"})
    assert _channel().parse_status(request) == []


def test_an_inbound_stop_by_get() -> None:
    (reply,) = _channel().parse_inbound(callback("vonage", "inbound_stop"))

    assert reply.sender == "+4740000001" and reply.text == "STOP"
    assert reply.to == "4759000000" and reply.provider_id == "0A0000001234ABCD"
    assert reply.channel is Channel.SMS


def test_a_concatenated_part_is_taken_whole() -> None:
    (reply,) = _channel().parse_inbound(callback("vonage", "inbound_concat_part"))
    assert reply.text.startswith("Hi, is the blue jacket")
    assert reply.raw["concat-part"] == "1"


def test_an_inbound_without_sender_names_the_field() -> None:
    with pytest.raises(ValueError, match="msisdn"):
        _channel().parse_inbound(callback("vonage", "inbound_no_sender"))


def test_a_json_receipt_that_is_not_json_names_the_body() -> None:
    request = callback("vonage", "receipt_opted_out")
    broken = request.__class__(request.method, request.url, request.headers, b"{not json")
    with pytest.raises(ValueError, match="body"):
        _channel().parse_status(broken)


@pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
def test_a_signed_receipt_passes_and_a_tampered_one_fails(method: str) -> None:
    channel = _channel(signature_secret="sig-s3cret", signature_method=method)
    fields = dict(callback("vonage", "receipt_absent_permanently").form())
    fields["timestamp"] = "1796119620"
    fields["sig"] = signature(fields, "sig-s3cret", method).upper()  # Vonage may send upper
    signed = callback("vonage", "receipt_absent_permanently", extra=fields)
    tampered = callback(
        "vonage", "receipt_absent_permanently", extra={**fields, "status": "delivered"}
    )

    assert channel.verify(signed)
    assert not channel.verify(tampered)
    assert not channel.verify(callback("vonage", "receipt_absent_permanently"))  # no sig


def test_a_signed_get_receipt_is_checked_over_its_query() -> None:
    channel = _channel(signature_secret="sig-s3cret", signature_method="sha256")
    query = dict(callback("vonage", "receipt_delivered").query)
    query["timestamp"] = "1796119620"
    query["sig"] = signature(query, "sig-s3cret", "sha256")

    assert channel.verify(callback("vonage", "receipt_delivered", query=query))
    assert not channel.verify(
        callback("vonage", "receipt_delivered", query={**query, "price": "0"})
    )


def test_signature_replaces_ampersands_and_equals_in_values() -> None:
    # Worked by hand: "&a=x_y&b=1_2" then the secret, MD5.
    import hashlib

    expected = hashlib.md5(b"&a=x_y&b=1_2secret").hexdigest()
    assert signature({"b": "1=2", "a": "x&y", "sig": "ignored"}, "secret", "md5hash") == expected


def test_an_unknown_signature_method_is_refused() -> None:
    with pytest.raises(ValueError, match="signature_method"):
        _channel(signature_secret="s", signature_method="crc32")


def test_an_unreadable_price_does_not_undo_an_accepted_send() -> None:
    replay = Replay("vonage", "send_accepted")
    replay.exchange["response"]["json"]["messages"][0]["message-price"] = "n/a"

    result = VonageChannel(provider_config("vonage"), replay.transport).send(MESSAGE)

    assert result.status is SendStatus.ACCEPTED and result.cost is None


def test_an_unreadable_body_fails_verification_instead_of_raising() -> None:
    request = callback("vonage", "receipt_opted_out")
    broken = request.__class__(request.method, request.url, request.headers, b"{not json")
    assert not _channel(signature_secret="sig-s3cret").verify(broken)
